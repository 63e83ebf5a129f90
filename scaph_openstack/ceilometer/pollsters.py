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
# Zone kinds that add up to an instance's total (scaph_openstack.ledger's
# ADDITIVE_KINDS; not imported: readers depend on the snapshot only).
ADDITIVE_KINDS = ('package', 'dram')
# Idle power estimates, least converged first: a summary over several
# zones is only as good as its worst zone.
IDLE_ESTIMATE_STATES = ('calibrating', 'learned', 'configured')

# power.instance: an instance whose reading was not updated in this many
# polls (stopped, moved away, deleted) is forgotten. Back later, its
# first poll gives no power sample, as on the first poll ever.
FORGET_AFTER_POLLS = 3

# One snapshot, its running instances by UUID, the extra metadata of
# instance samples, and discovery.failed_reads() when it was read, for
# one polling cycle.
CycleData = collections.namedtuple(
    'CycleData', 'snapshot instances instance_metadata failed_reads')

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
            cache[CACHE_KEY] = None if snap is None else _cycle_data(snap)
        return cache[CACHE_KEY]


def _cycle_data(snap):
    return CycleData(
        snap, {i['uuid']: i for i in snap.running_instances},
        dict(snapshot_metadata(snap), **host_idle_estimate(snap.zones)),
        discovery.failed_reads())


def snapshot_metadata(snap):
    """Where the numbers come from: added to every sample.

    ``epoch`` only when the snapshot has one (agents before issue 9 wrote
    none): a sample never claims what its snapshot does not say.
    """
    doc = snap.document
    metadata = {'source': doc['source'],
                'model': doc.get('model'),
                'idle_policy': doc.get('idle_policy')}
    if isinstance(doc.get('epoch'), int):
        metadata['epoch'] = doc['epoch']
    return metadata


def zone_idle_estimate(zone):
    """(state, watts) of a zone's idle power estimate, or None when the
    snapshot has none for it (an older agent) or it is malformed. A state
    of null (the agent has no estimate for the zone yet, e.g. before its
    first split) is 'calibrating'."""
    estimate = zone.get('idle_estimate')
    if not isinstance(estimate, dict) or 'state' not in estimate:
        return None
    state, watts = estimate.get('state'), estimate.get('watts')
    if state is None:
        state = 'calibrating'
    if not isinstance(state, str) or isinstance(watts, bool) or \
            not isinstance(watts, (int, float)):
        return None
    return state, float(watts)


def _convergence(state):
    # A state this reader does not know ranks below 'calibrating': the
    # summary then names it rather than claiming a better one.
    try:
        return IDLE_ESTIMATE_STATES.index(state)
    except ValueError:
        return -1


def host_idle_estimate(zones):
    """{'idle_estimate': state, 'idle_estimate_w': watts} over the package
    and DRAM zones: the least converged state and the summed idle power
    (what an instance's idle share is a part of). Empty when any of them
    lacks an estimate: a partial sum would understate the idle power."""
    estimates = [zone_idle_estimate(z) for z in zones
                 if z.get('kind') in ADDITIVE_KINDS]
    if not estimates or None in estimates:
        return {}
    return {'idle_estimate': min((state for state, _ in estimates),
                                 key=_convergence),
            'idle_estimate_w': round(sum(w for _, w in estimates), 6)}


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
        extra = data.instance_metadata
        for resource in resources:
            doc = data.instances.get(getattr(resource, 'id', None))
            if doc is None:
                # Not running, or started after the agent's last tick.
                LOG.debug('No energy for instance %s in this snapshot',
                          getattr(resource, 'id', resource))
                continue
            value = self.value(data, doc)
            if value is None:
                continue
            volume, metadata = value
            yield util.make_sample_from_instance(
                self.conf, resource, name=self.meter_name,
                type=self.meter_type, unit=self.meter_unit,
                volume=volume, additional_metadata=dict(extra, **metadata))

    def value(self, data, doc):
        """(volume, metadata of this sample only), or None for no
        sample."""
        volume = self.volume(doc)
        return None if volume is None else (volume, {})

    @staticmethod
    def volume(doc):
        """The sample's value, or None for no sample."""
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


def _optional_joules(doc, key):
    """doc[key] µJ in J; None when an older agent did not write it."""
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value / UJ_PER_J


class InstanceDynamicEnergyPollster(_InstancePollster):
    """The dynamic part of energy.instance: the instance's share of the
    energy above the zones' idle power (by CPU time with the cputime
    model), whatever the idle policy: what Kepler gives VMs. No sample
    from a snapshot without ``dynamic_uj``."""

    meter_name = 'energy.instance.dynamic'
    meter_type = sample.TYPE_CUMULATIVE
    meter_unit = 'J'

    @staticmethod
    def volume(doc):
        return _optional_joules(doc, 'dynamic_uj')


class InstanceIdleEnergyPollster(_InstancePollster):
    """The instance's share of the zones' idle energy under ``[attribution]
    idle_policy`` (0 with ``none``); energy.instance = dynamic + idle. No
    sample from a snapshot without ``idle_uj``."""

    meter_name = 'energy.instance.idle'
    meter_type = sample.TYPE_CUMULATIVE
    meter_unit = 'J'

    @staticmethod
    def volume(doc):
        return _optional_joules(doc, 'idle_uj')


UG_PER_G = 1e6
# Where the agent's carbon intensity came from (doc/carbon.md).
CARBON_INTENSITY_SOURCES = ('static', 'file', 'unknown')


def carbon_metadata(snap):
    """pue, carbon_intensity (gCO2e/kWh, None when unknown) and
    carbon_intensity_source of a snapshot; None when it has no pue (an
    agent before carbon accounting) or they are malformed."""
    doc = snap.document
    pue, intensity = doc.get('pue'), doc.get('carbon_intensity_g_per_kwh')
    source = doc.get('carbon_intensity_source')
    if isinstance(pue, bool) or not isinstance(pue, (int, float)) or \
            isinstance(intensity, bool) or \
            not isinstance(intensity, (int, float, type(None))) or \
            source not in CARBON_INTENSITY_SOURCES:
        return None
    return {'pue': pue, 'carbon_intensity': intensity,
            'carbon_intensity_source': source}


class InstanceCarbonPollster(_InstancePollster):
    """Carbon (g CO2e) of the instance's energy since it was first seen:
    per tick, its package and DRAM energy x [accounting] pue x the carbon
    intensity in force at that tick (doc/carbon.md). Includes the PUE,
    unlike the energy meters: the sample's ``pue`` metadata says which,
    ``carbon_intensity`` and ``carbon_intensity_source`` the intensity in
    force at the snapshot's time (None and ``unknown`` while no carbon is
    counted). No sample from a snapshot without ``carbon_ug`` (an older
    agent, or carbon not configured): never a made-up 0."""

    meter_name = 'carbon.instance'
    meter_type = sample.TYPE_CUMULATIVE
    meter_unit = 'g'

    def value(self, data, doc):
        carbon = doc.get('carbon_ug')
        if isinstance(carbon, bool) or not isinstance(carbon, int) or \
                carbon < 0:
            return None
        metadata = carbon_metadata(data.snapshot)
        if metadata is None:
            return None
        return carbon / UG_PER_G, metadata


# -- power.instance: the average over the polling period -----------------

# A cumulative counter at one snapshot: ``counter`` says which counter
# (anything comparable: two readings make a rate only when equal),
# ``energy_uj`` its value, ``time`` the snapshot's time (s).
Reading = collections.namedtuple('Reading', 'counter energy_uj time')


def average_power(previous, current):
    """(watts, period_s): the average power between two readings of a
    cumulative µJ counter, or None when they do not make a rate: no
    previous reading, another counter (another epoch or source, a new
    ledger record), a counter that went down, or no time between them
    (the same snapshot read twice, or a clock stepped back)."""
    if previous is None or previous.counter != current.counter:
        return None
    period_s = current.time - previous.time
    delta_uj = current.energy_uj - previous.energy_uj
    if period_s <= 0 or delta_uj < 0:
        return None
    return delta_uj / UJ_PER_J / period_s, period_s


class PeriodAverages:
    """Per key, the reading of the previous poll: what average_power
    needs. Bounded: a key not updated in ``forget_after`` polls is
    forgotten. Thread-safe: two polling sources may poll one pollster."""

    def __init__(self, forget_after=FORGET_AFTER_POLLS):
        self.forget_after = forget_after
        self._lock = threading.Lock()
        self._readings = {}     # key -> (Reading, poll number)
        self._poll = 0

    def new_poll(self):
        """Start a poll: forget keys not updated in the last
        ``forget_after`` polls."""
        with self._lock:
            self._poll += 1
            oldest = self._poll - self.forget_after
            for key in [k for k, (_, poll) in self._readings.items()
                        if poll < oldest]:
                del self._readings[key]

    def update(self, key, reading):
        """(watts, period_s) since ``key``'s previous reading, or None;
        ``reading`` is then the previous one, whatever the result: after
        a reset or a new epoch, the next poll has a rate again."""
        with self._lock:
            previous = self._readings.get(key)
            self._readings[key] = (reading, self._poll)
        return average_power(previous and previous[0], reading)

    def __len__(self):
        return len(self._readings)


def counter_identity(data, doc):
    """What must not change for two readings of an instance's counter to
    make a rate: the epoch (and its start: a new ledger starts epoch 1
    again), the source (agents before epochs had none), the ledger
    record (first_seen: a record dropped after [agent] retention starts
    again from 0) and the reader's failed reads (a gap where no fresh
    snapshot was read: the agent may have been stopped, and what
    instances used then was charged to nobody)."""
    snap = data.snapshot.document
    return (snap.get('epoch'), snap.get('epoch_started'), snap['source'],
            doc.get('first_seen'), data.failed_reads)


class InstancePowerPollster(_InstancePollster):
    """Average power of the instance over the polling period: its
    energy.instance counter's increase since this pollster's previous
    poll, over the time between the two snapshots.

    No sample on the first poll of an instance (nothing to compare with),
    nor when the counter cannot give a rate (average_power,
    counter_identity); the sample's ``period_s`` metadata is the period
    in seconds.
    """

    meter_name = 'power.instance'
    meter_type = sample.TYPE_GAUGE
    meter_unit = 'W'

    def __init__(self, conf):
        super().__init__(conf)
        # Ceilometer loads a pollster once per process and polls that
        # object every cycle: the previous poll's readings live here.
        self.averages = PeriodAverages()

    def _samples(self, data, resources):
        self.averages.new_poll()
        return super()._samples(data, resources)

    def value(self, data, doc):
        reading = Reading(counter_identity(data, doc), doc['total_uj'],
                          data.snapshot.document['time'])
        power = self.averages.update(doc['uuid'], reading)
        if power is None:
            return None
        watts, period_s = power
        return watts, {'period_s': round(period_s, 6)}


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
        common = snapshot_metadata(snap)
        for zone in snap.zones:
            metadata = dict(common,
                            node=snap.host, name=zone['name'],
                            zone=zone['name'], kind=zone['kind'],
                            socket=zone['socket'])
            if isinstance(zone.get('source'), str):
                # The zone's own source, where the agent says it.
                metadata['source'] = zone['source']
            estimate = zone_idle_estimate(zone)
            if estimate is not None:
                metadata['idle_estimate'], metadata['idle_estimate_w'] = \
                    estimate
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
