"""The snapshot's reader: the only host-side interface between agent and
readers.

A versioned JSON document the ``snapshot`` publisher
(scaph_openstack/publishers/snapshot.py) writes atomically, read by the
Ceilometer pollsters and ``scaph-openstack status``. Readers import this
module only, never the agent: it imports nothing of the agent either.
Schema version 1 is documented in doc/snapshot.md; additions keep the
version, removals or changes of meaning bump it.
"""

import dataclasses
import json
import time

FORMAT = 'scaph-openstack.snapshot'
VERSION = 1


class SnapshotError(Exception):
    pass


class SnapshotMissing(SnapshotError):
    pass


class SnapshotInvalid(SnapshotError):
    pass


class SnapshotStale(SnapshotError):
    def __init__(self, message, age_s):
        super().__init__(message)
        self.age_s = age_s


@dataclasses.dataclass(frozen=True)
class Snapshot:
    document: dict

    def __getattr__(self, key):
        try:
            return self.document[key]
        except KeyError:
            raise AttributeError(key)

    @property
    def running_instances(self):
        return [i for i in self.document['instances'] if i['running']]

    def age(self, now=None):
        return (time.time() if now is None else now) - self.document['time']


def _validate(doc, path):
    if not isinstance(doc, dict) or doc.get('format') != FORMAT:
        raise SnapshotInvalid('%s is not a scaph-openstack snapshot' % path)
    if doc.get('version') != VERSION:
        raise SnapshotInvalid('%s has schema version %r, this reader knows '
                              '%d' % (path, doc.get('version'), VERSION))
    for key in ('time', 'stale_after_s', 'instances', 'zones', 'source'):
        if key not in doc:
            raise SnapshotInvalid('%s lacks %r' % (path, key))
    for key in ('time', 'stale_after_s'):
        if isinstance(doc[key], bool) or \
                not isinstance(doc[key], (int, float)):
            raise SnapshotInvalid('%s: %r is %r, not a number'
                                  % (path, key, doc[key]))


def read(path, now=None, check_stale=True):
    """The current Snapshot. Raises SnapshotMissing, SnapshotInvalid, or
    SnapshotStale when the agent has not written it for ``stale_after_s``
    (a stopped agent's last values must never look current)."""
    try:
        with open(path, 'rb') as f:
            doc = json.loads(f.read())
    except FileNotFoundError:
        raise SnapshotMissing('no snapshot at %s: is scaph-openstack-agent '
                              'running?' % path)
    except (OSError, ValueError) as exc:
        raise SnapshotInvalid('cannot read snapshot %s: %s' % (path, exc))
    _validate(doc, path)
    snap = Snapshot(doc)
    age = snap.age(now)
    if check_stale and age > doc['stale_after_s']:
        raise SnapshotStale('snapshot %s is %.1fs old (stale after %.1fs): '
                            'the agent is not updating it'
                            % (path, age, doc['stale_after_s']), age)
    return snap
