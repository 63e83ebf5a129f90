"""The snapshot: the only host-side interface between agent and readers.

A versioned JSON document written atomically after every tick (publisher
``snapshot``), read by the Ceilometer pollsters and ``scaph-openstack
status``. Readers import this module only, never the agent. Schema
version 1 is documented in doc/snapshot.md; additions keep the version,
removals or changes of meaning bump it.
"""

import dataclasses
import json
import time

from scaph_openstack import fileutil
from scaph_openstack import ledger as ledger_mod

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


def _instance_doc(record):
    doc = record.identity.as_dict()
    totals = record.kind_totals()
    total = ledger_mod.additive_total(totals)
    idle = ledger_mod.additive_total(record.idle_kind_totals())
    doc.update(
        running=record.running,
        energy_uj=dict(sorted(record.energy_uj.items())),
        dynamic_energy_uj={zone: uj - record.idle_uj.get(zone, 0)
                           for zone, uj in sorted(record.energy_uj.items())},
        idle_energy_uj={zone: record.idle_uj.get(zone, 0)
                        for zone in sorted(record.energy_uj)},
        package_uj=totals.get('package', 0),
        dram_uj=totals.get('dram', 0),
        total_uj=total,
        dynamic_uj=total - idle,
        idle_uj=idle,
        placement=record.placement or None,
        power_w=round(record.power_w, 6),
        first_seen=record.first_seen,
        last_seen=record.last_seen)
    return doc


def _zone_doc(zone, source):
    doc = dataclasses.asdict(zone)
    state = doc.pop('idle_estimate_state')
    watts = doc.pop('idle_estimate_w')
    doc.update(power_w=round(zone.power_w, 6),
               avg_power_w=round(zone.avg_power_w, 6),
               idle_estimate={'state': state or None,
                              'watts': round(watts, 6)},
               scope=zone.scope or None, source=source)
    return doc


def _host_totals(zones):
    additive = [z for z in zones if z.kind in ledger_mod.ADDITIVE_KINDS]
    measured = sum(z.measured_uj for z in additive)
    residual = sum(z.residual_uj for z in additive)
    idle = sum(z.unallocated_idle_uj for z in additive)
    return {'energy_uj': measured,
            'attributed_uj': measured - residual - idle,
            'residual_uj': residual,
            'unallocated_idle_uj': idle,
            'power_w': round(sum(z.power_w for z in additive), 6)}


def build(report):
    """The snapshot document for one TickReport."""
    led = report.ledger
    zones = list(led.zones.values())
    return {
        'format': FORMAT,
        'version': VERSION,
        'host': report.host,
        'time': report.time,
        'interval_s': report.interval_s,
        'configured_interval_s': report.configured_interval_s,
        'stale_after_s': report.stale_after_s,
        'source': report.source,
        'model': report.model,
        'idle_policy': report.idle_policy,
        'epoch': getattr(led, 'epoch', 1),
        'epoch_started': getattr(led, 'epoch_started', None),
        'zones': [_zone_doc(z, report.source) for z in zones],
        'host_totals': _host_totals(zones),
        'instances': [_instance_doc(r) for r in led.instances.values()],
    }


def write(path, document):
    data = json.dumps(document, separators=(',', ':')).encode()
    # Readable by the ceilometer user; not exported to any guest.
    fileutil.replace_file(path, data, mode=0o644, fsync=False)


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
