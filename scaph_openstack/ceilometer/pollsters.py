"""Energy and power meters from the agent's snapshot.

Every pollster is a few lines over one per-cycle read of the snapshot,
kept in the ``cache`` dict Ceilometer hands to all pollsters of a polling
cycle (the model of ceilometer/compute/pollsters, where the inspector
does the heavy lifting once). Meter names are the entry point names in
setup.cfg: Ceilometer's polling.yaml selects by entry point name and its
Prometheus exporter purges stale series by it, so they must not differ.
"""

import collections
import threading

from ceilometer.compute.pollsters import util
from ceilometer.polling import plugin_base
from ceilometer import sample
from oslo_log import log as logging

from scaph_openstack.ceilometer import discovery
from scaph_openstack.conf import ceilometer as scaph_conf

LOG = logging.getLogger(__name__)

CACHE_KEY = 'scaph_openstack.snapshot'
UJ_PER_J = 1e6

# One snapshot and its running instances by UUID, for one polling cycle.
CycleData = collections.namedtuple('CycleData', 'snapshot instances')

# Ceilometer may run pollsters of one cycle in parallel threads
# ([polling] threads_to_process_pollsters): fill the cache only once.
_CACHE_LOCK = threading.Lock()


def _discovered_snapshot(resources):
    """The snapshot our discovery read this cycle, if it made resources."""
    for resource in resources or ():
        snap = getattr(resource, 'scaph_snapshot', None)
        if snap is not None:
            return snap
    return None


def cycle_data(conf, cache, resources=None):
    """This cycle's CycleData, or None when there is no fresh snapshot.

    The first pollster of a cycle takes the snapshot the discovery just
    read, or reads it; the others find it in ``cache``. A None result is
    cached too, so that a missing file is not read again in this cycle.
    """
    with _CACHE_LOCK:
        if CACHE_KEY not in cache:
            snap = _discovered_snapshot(resources)
            if snap is None:
                snap = discovery.read_snapshot(conf)
            cache[CACHE_KEY] = None if snap is None else CycleData(
                snap, {i['uuid']: i for i in snap.running_instances})
        return cache[CACHE_KEY]


def snapshot_metadata(snap):
    """Where the numbers come from: added to every sample."""
    doc = snap.document
    return {'source': doc['source'],
            'model': doc.get('model'),
            'idle_policy': doc.get('idle_policy')}


class _SnapshotPollster(plugin_base.PollsterBase):
    meter_name = None
    meter_type = None
    meter_unit = None

    def __init__(self, conf):
        scaph_conf.register_opts(conf)
        super().__init__(conf)

    def get_samples(self, manager, cache, resources):
        data = cycle_data(self.conf, cache, resources)
        if data is None:
            return []
        return list(self._samples(data, resources))

    def _samples(self, data, resources):
        raise NotImplementedError()


class _InstancePollster(_SnapshotPollster):
    """One sample per instance resource the snapshot knows as running.

    Resources come from our ``scaph_instances`` discovery or Ceilometer's
    ``local_instances`` (Nova server objects): both are matched by
    ``.id``, the instance UUID, and get Ceilometer's own compute resource
    metadata.
    """

    @property
    def default_discovery(self):
        return 'scaph_instances'

    def _samples(self, data, resources):
        extra = snapshot_metadata(data.snapshot)
        for resource in resources:
            doc = data.instances.get(getattr(resource, 'id', None))
            if doc is None:
                # Not running, or started after the agent's last tick.
                LOG.debug('No energy for instance %s in this snapshot',
                          getattr(resource, 'id', resource))
                continue
            yield util.make_sample_from_instance(
                self.conf, resource, name=self.meter_name,
                type=self.meter_type, unit=self.meter_unit,
                volume=self.volume(doc), additional_metadata=extra)

    @staticmethod
    def volume(doc):
        raise NotImplementedError()


class InstanceEnergyPollster(_InstancePollster):
    """Energy attributed to the instance since it was first seen (package
    and DRAM zones; counters survive agent restarts and reboots)."""

    meter_name = 'energy.instance'
    meter_type = sample.TYPE_CUMULATIVE
    meter_unit = 'J'

    @staticmethod
    def volume(doc):
        return doc['total_uj'] / UJ_PER_J


class InstancePowerPollster(_InstancePollster):
    """Average power of the instance over the agent's last interval."""

    meter_name = 'power.instance'
    meter_type = sample.TYPE_GAUGE
    meter_unit = 'W'

    @staticmethod
    def volume(doc):
        return doc['power_w']


class _HostZonePollster(_SnapshotPollster):
    """One sample per energy zone of this compute node.

    ``local_node`` is Ceilometer's discovery for node-level meters (IPMI
    uses it): it always yields this host, so the meters are polled even
    when no instance runs, which is when idle energy matters most. The
    resource it gives is ignored; the zones come from the snapshot.
    """

    @property
    def default_discovery(self):
        return 'local_node'

    def _samples(self, data, resources):
        snap = data.snapshot
        for zone in snap.zones:
            metadata = dict(snapshot_metadata(snap),
                            node=snap.host, name=zone['name'],
                            zone=zone['name'], kind=zone['kind'],
                            socket=zone['socket'])
            yield sample.Sample(
                name=self.meter_name, type=self.meter_type,
                unit=self.meter_unit, volume=self.volume(zone) / UJ_PER_J,
                user_id=None, project_id=None,
                resource_id=zone_resource_id(snap.host, zone['name']),
                resource_metadata=metadata)

    @staticmethod
    def volume(zone):
        raise NotImplementedError()


def zone_resource_id(host, zone_name):
    """'<host>-<zone>', like Ceilometer's IPMI sensors '<host>-<sensor>':
    stable across agent restarts and unique in a cloud."""
    return '%s-%s' % (host, zone_name)


class HostZoneEnergyPollster(_HostZonePollster):
    """Energy measured (or simulated) in the zone since the agent's ledger
    was created."""

    meter_name = 'energy.host.zone'
    meter_type = sample.TYPE_CUMULATIVE
    meter_unit = 'J'

    @staticmethod
    def volume(zone):
        return zone['measured_uj']


class HostUnattributedEnergyPollster(_HostZonePollster):
    """The zone's energy no instance was charged for: the host's own work
    (residual) plus the idle energy the idle policy left unallocated."""

    meter_name = 'energy.host.unattributed'
    meter_type = sample.TYPE_CUMULATIVE
    meter_unit = 'J'

    @staticmethod
    def volume(zone):
        return zone['residual_uj'] + zone['unallocated_idle_uj']
