"""Instances on this compute node, as the agent's snapshot lists them.

Registered as ``scaph_instances`` under ``ceilometer.discover.compute``.
The agent already asked libvirt and parsed Nova's metadata: a second
libvirt scan or a Nova API call here would only add load and disagree
with the numbers being reported. No Keystone either
(KEYSTONE_REQUIRED_FOR_SERVICE = None), so polling works on a compute
node that cannot reach the identity service.
"""

import hashlib
import logging
import numbers
import threading

from ceilometer.compute import discovery as compute_discovery
from ceilometer.polling import plugin_base
from oslo_log import log

from scaph_openstack.conf import ceilometer as scaph_conf
from scaph_openstack import snapshot
from scaph_openstack import statelog

LOG = log.getLogger(__name__)

# Every pollster and the discovery read through read_snapshot, every
# cycle: a stopped agent must give one WARNING when it is noticed (and
# another only when the reason changes, e.g. stale then missing), not one
# per pollster per cycle, and one INFO when samples resume.
HEALTH = statelog.StateLog(LOG)

_FAILED_READS_LOCK = threading.Lock()
_failed_reads = 0


def failed_reads():
    """How many snapshot reads of this process found no fresh snapshot.

    Two readings taken with different counts have a gap between them
    where the agent may not have been counting: power.instance derives no
    rate across it (pollsters.counter_identity).
    """
    return _failed_reads


def _count_failed_read():
    global _failed_reads
    with _FAILED_READS_LOCK:
        _failed_reads += 1


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def stale_after(declared_s, floor_s):
    """Seconds after which a snapshot is stale: what it declares
    (``stale_after_s``, a few agent intervals), but never less than
    ``floor_s`` ([scaphandre] stale_after_min), so that one slow tick, or
    an older agent's 6 s, does not drop a whole polling cycle."""
    return max(declared_s, floor_s)


def check_fresh(snap, path, floor_s, now=None):
    """Raise SnapshotStale when ``snap`` is older than
    stale_after(its stale_after_s, floor_s); SnapshotInvalid when its
    time or stale_after_s is not a number."""
    doc = snap.document
    if not (_is_number(doc['time']) and _is_number(doc['stale_after_s'])):
        raise snapshot.SnapshotInvalid(
            '%s: time and stale_after_s must be numbers' % path)
    limit = stale_after(doc['stale_after_s'], floor_s)
    age = snap.age(now)
    if age > limit:
        raise snapshot.SnapshotStale(
            'snapshot %s is %.1fs old (stale after %.1fs): the agent is '
            'not updating it' % (path, age, limit), age)


def read_snapshot(conf):
    """This cycle's Snapshot, or None when it is missing, invalid or stale.

    None rather than the last good values: a stopped agent's counters
    must never be reported as current. Stale means older than both the
    snapshot's own stale_after_s and [scaphandre] stale_after_min.
    """
    path = conf.scaphandre.snapshot_path
    error = None
    try:
        # Staleness is ours to judge (with the floor), not the reader's.
        snap = snapshot.read(path, check_stale=False)
        check_fresh(snap, path, conf.scaphandre.stale_after_min)
    except snapshot.SnapshotError as exc:
        error = exc
    # Logged outside the except block: oslo.log would append the exception
    # a second time to a line that already says everything.
    if error is not None:
        _count_failed_read()
        # The exception class is the state: stale -> missing is news.
        HEALTH.failed(path, 'No scaph-openstack energy samples until the '
                      'snapshot is fresh again: %s', error,
                      level=logging.WARNING, state=type(error).__name__)
        return None
    if not HEALTH.recovered(path, 'scaph-openstack snapshot %s is fresh '
                            'again: energy samples resume', path):
        # Said once per process, when the first fresh snapshot is read.
        HEALTH.failed(('reading', path), 'Reading scaph-openstack energy '
                      'from %s', path, level=logging.INFO)
    return snap


def host_id(project_id, host):
    """Nova's hostId, as Ceilometer's own libvirt discovery computes it."""
    return hashlib.sha224((project_id + host).encode('utf-8')).hexdigest()


class SnapshotInstance(compute_discovery.NovaLikeServer):
    """One instance from the snapshot, shaped like Ceilometer's resources.

    Same attributes as the NovaLikeServer that Ceilometer's libvirt
    discovery builds, so ceilometer.compute.pollsters.util makes the same
    resource metadata for it. ``scaph_snapshot`` is the snapshot it comes
    from: the pollsters reuse it instead of reading the file again.
    """

    def __init__(self, doc, snap, with_flavor_id=False):
        host = snap.host
        # 'id' (in Nova's libvirt metadata from recent releases) only when
        # every instance of the snapshot has one (``with_flavor_id``): the
        # Prometheus exporter needs the same labels on every sample of a
        # meter, and adds flavor_id only when there is one. Gnocchi needs
        # it to create an instance resource (Ceilometer's type requires
        # flavor_id): doc/ceilometer.md, "Gnocchi".
        flavor = {'name': doc['flavor'],
                  'vcpus': doc.get('vcpus') or 0,
                  'ram': doc.get('memory_mb') or 0,
                  # Not in the snapshot: 0, as Ceilometer's discovery does
                  # when Nova's metadata lacks them.
                  'disk': 0, 'ephemeral': 0, 'swap': 0}
        if with_flavor_id:
            flavor['id'] = doc['flavor_id']
        super().__init__(**{
            'id': doc['uuid'],
            'name': doc.get('display_name') or doc['name'],
            'flavor': flavor,
            'image': None,
            'metadata': {},
            'tenant_id': doc['project_id'],
            'user_id': doc['user_id'],
            'hostId': host_id(doc['project_id'], host),
            'status': 'active',
            'OS-EXT-SRV-ATTR:instance_name': doc['name'],
            'OS-EXT-SRV-ATTR:host': host,
            'OS-EXT-STS:vm_state': 'active',
            'scaph_snapshot': snap,
        })

    def __eq__(self, other):
        # Ceilometer dedups resources with ``in``: equal by UUID, whatever
        # the snapshot they were read from.
        return getattr(other, 'id', None) == self.id

    def __hash__(self):
        return hash(self.id)

    def __repr__(self):
        return '<SnapshotInstance: %s>' % self.id


def is_nova_instance(doc):
    """Ceilometer's discovery skips domains without Nova's owner or
    flavor data; so do we: every sample then has a project, a user and
    the same metadata keys (hence the same exporter labels)."""
    return bool(doc.get('nova') and doc.get('project_id')
                and doc.get('user_id') and doc.get('flavor'))


class SnapshotInstanceDiscovery(plugin_base.DiscoveryBase):
    """Running Nova instances listed in the snapshot."""

    KEYSTONE_REQUIRED_FOR_SERVICE = None

    def __init__(self, conf):
        scaph_conf.register_opts(conf)
        super().__init__(conf)

    def discover(self, manager, param=None):
        snap = read_snapshot(self.conf)
        if snap is None:
            return []
        docs = []
        for doc in snap.running_instances:
            if is_nova_instance(doc):
                docs.append(doc)
            else:
                LOG.debug('Instance %s has no Nova owner metadata: no '
                          'Ceilometer samples for it', doc.get('uuid'))
        with_flavor_id = all(doc.get('flavor_id') for doc in docs)
        return [SnapshotInstance(doc, snap, with_flavor_id) for doc in docs]

    @property
    def group_id(self):
        # Instances are local to this node: partition only among agents
        # of the same host, like Ceilometer's local_instances.
        return self.conf.host
