"""Instances on this compute node, as the agent's snapshot lists them.

Registered as ``scaph_instances`` under ``ceilometer.discover.compute``.
The agent already asked libvirt and parsed Nova's metadata: a second
libvirt scan or a Nova API call here would only add load and disagree
with the numbers being reported. No Keystone either
(KEYSTONE_REQUIRED_FOR_SERVICE = None), so polling works on a compute
node that cannot reach the identity service.
"""

import hashlib
import threading

from ceilometer.compute import discovery as compute_discovery
from ceilometer.polling import plugin_base
from oslo_log import log as logging

from scaph_openstack.conf import ceilometer as scaph_conf
from scaph_openstack import snapshot

LOG = logging.getLogger(__name__)

STATE_OK = 'fresh'


class _SnapshotHealth:
    """Logs when reading the snapshot starts or stops working.

    Every pollster and the discovery read through here, every cycle: a
    stopped agent must give one WARNING when it is noticed, not one per
    pollster per cycle, and one INFO when samples resume.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._states = {}

    def reset(self):
        with self._lock:
            self._states.clear()

    def report(self, path, state, reason=None):
        with self._lock:
            previous = self._states.get(path)
            self._states[path] = state
        if state == previous:
            return
        if state != STATE_OK:
            LOG.warning('No scaph-openstack energy samples until the '
                        'snapshot is fresh again: %s', reason)
        elif previous is None:
            LOG.info('Reading scaph-openstack energy from %s', path)
        else:
            LOG.info('scaph-openstack snapshot %s is fresh again: energy '
                     'samples resume', path)


HEALTH = _SnapshotHealth()


def read_snapshot(conf):
    """This cycle's Snapshot, or None when it is missing, invalid or stale.

    None rather than the last good values: a stopped agent's counters
    must never be reported as current.
    """
    path = conf.scaphandre.snapshot_path
    error = None
    try:
        snap = snapshot.read(path)
    except snapshot.SnapshotError as exc:
        error = exc
    # Logged outside the except block: oslo.log would append the exception
    # a second time to a line that already says everything.
    if error is not None:
        # The exception class is the state: stale -> missing is news.
        HEALTH.report(path, type(error).__name__, error)
        return None
    HEALTH.report(path, STATE_OK)
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

    def __init__(self, doc, snap):
        host = snap.host
        # No 'id': the snapshot has no flavor id. Never sometimes: the
        # Prometheus exporter needs the same labels on every sample of a
        # meter, and adds flavor_id only when there is one.
        flavor = {'name': doc['flavor'],
                  'vcpus': doc.get('vcpus') or 0,
                  'ram': doc.get('memory_mb') or 0,
                  # Not in the snapshot: 0, as Ceilometer's discovery does
                  # when Nova's metadata lacks them.
                  'disk': 0, 'ephemeral': 0, 'swap': 0}
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
        resources = []
        for doc in snap.running_instances:
            if is_nova_instance(doc):
                resources.append(SnapshotInstance(doc, snap))
            else:
                LOG.debug('Instance %s has no Nova owner metadata: no '
                          'Ceilometer samples for it', doc.get('uuid'))
        return resources

    @property
    def group_id(self):
        # Instances are local to this node: partition only among agents
        # of the same host, like Ceilometer's local_instances.
        return self.conf.host
