"""One tick of the agent, free of any service framework.

In order and exactly once each: read every energy zone, read host CPU
time, list instances (one bulk call), compute deltas since the previous
tick, split each zone's delta, add the split to the ledger, persist the
ledger, hand the report to every publisher. Nothing reads back what a
publisher wrote.
"""

import dataclasses
import time

from oslo_log import log as logging

from scaph_openstack.attribution import base as attribution_base
from scaph_openstack.energy import base as energy_base
from scaph_openstack.inventory import base as inventory_base
from scaph_openstack.inventory import hoststat

LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TickReport:
    """What publishers get: the ledger after a tick and how it was made."""
    host: str
    time: float
    interval_s: float
    configured_interval_s: float
    stale_after_s: float
    source: str
    model: str
    idle_policy: str
    ledger: object
    splits: tuple = ()
    expired: tuple = ()


@dataclasses.dataclass
class Baseline:
    """The previous tick's cumulative readings."""
    monotonic: float
    zones: dict        # zone name -> ZoneReading
    host_busy_ns: int
    cpu_ns: dict       # instance uuid -> cumulative CPU ns
    zone_times: dict   # zone name -> monotonic time of its last reading


def instance_cpu_delta(previous_ns, current_ns):
    """CPU time since the last tick; a restarted domain starts from 0."""
    if previous_ns is None:
        return 0  # first sight: its past CPU time is not this interval's
    if current_ns < previous_ns:
        return current_ns
    return current_ns - previous_ns


class StateChangeLogger:
    """Logs a condition when it starts and when it ends, not every tick."""

    def __init__(self):
        self._active = {}

    def failed(self, key, message, *args):
        if key not in self._active:
            LOG.error(message, *args)
        self._active[key] = True

    def recovered(self, key, message, *args):
        if self._active.pop(key, None):
            LOG.info(message, *args)


class Ticker:

    def __init__(self, energy, inventory, attribution, ledger, publishers,
                 ledger_path, host, configured_interval_s, stale_after_s,
                 retention_s, proc_stat_path='/proc/stat',
                 clock=time.monotonic, wallclock=time.time):
        self.energy = energy
        self.inventory = inventory
        self.attribution = attribution
        self.ledger = ledger
        self.publishers = publishers
        self.ledger_path = ledger_path
        self.host = host
        self.configured_interval_s = configured_interval_s
        self.stale_after_s = stale_after_s
        self.retention_s = retention_s
        self.proc_stat_path = proc_stat_path
        self.clock = clock
        self.wallclock = wallclock
        self.baseline = None
        self.source = None
        self.states = StateChangeLogger()

    # -- reading -----------------------------------------------------------
    def _read_inputs(self):
        """(EnergyReading, monotonic and wall time of that reading,
        HostCpuTime, instances) or None if unusable."""
        try:
            reading = self.energy.read()
            # The interval is the energy's: a slow inventory call (libvirtd
            # hanging) must not stretch it, or power and wrap estimates
            # would be computed over time the energy does not cover.
            now, wall = self.clock(), self.wallclock()
            self.states.recovered('energy', 'Energy source readable again')
            for zone in reading.zones:
                self.states.recovered('zone-' + zone.name,
                                      'Zone %s readable again', zone.name)
            for zone, error in reading.errors.items():
                self.states.failed('zone-' + zone, 'Zone %s unreadable, '
                                   'skipped until it reads again: %s',
                                   zone, error)
            host_cpu = hoststat.read_host_cpu(self.proc_stat_path)
            instances = self.inventory.list_instances()
            self.states.recovered('inventory', 'Inventory available again')
        except energy_base.EnergySourceError as exc:
            self.states.failed('energy', 'Cannot read energy: %s', exc)
            return None
        except hoststat.HostStatError as exc:
            self.states.failed('hoststat', 'Cannot read host CPU: %s', exc)
            return None
        except inventory_base.InventoryUnavailable as exc:
            self.states.failed('inventory', 'Inventory unavailable, '
                               'attribution paused (no energy is lost: the '
                               'next good tick covers the gap): %s', exc)
            return None
        return reading, now, wall, host_cpu, instances

    # -- deltas ------------------------------------------------------------
    def _zone_deltas(self, reading, now):
        deltas = []
        for zone in reading.zones:
            previous = self.baseline.zones.get(zone.name)
            if previous is None:
                continue
            # Since this zone's own last reading: it may have been
            # unreadable for several ticks.
            elapsed = now - self.baseline.zone_times[zone.name]
            expected = None
            record = self.ledger.zones.get(zone.name)
            if record is not None and elapsed > 2 * \
                    self.configured_interval_s:
                # A long pause can hide more than one wrap; recent power
                # tells how many (energy_base.counter_delta).
                expected = record.power_w * elapsed * 1e6
            deltas.append(attribution_base.ZoneDelta(
                zone.name, zone.kind, zone.socket,
                energy_base.counter_delta(previous.energy_uj, zone.energy_uj,
                                          zone.max_energy_range_uj,
                                          expected)))
        return tuple(deltas)

    def _usage_deltas(self, instances):
        return tuple(
            attribution_base.UsageDelta(
                i.uuid,
                instance_cpu_delta(self.baseline.cpu_ns.get(i.uuid),
                                   i.cpu_time_ns),
                i.vcpus)
            for i in instances)

    # -- the tick ----------------------------------------------------------
    def tick(self):
        """Run one tick; the TickReport published, or None."""
        inputs = self._read_inputs()
        if inputs is None:
            return None
        reading, now, wall, host_cpu, instances = inputs
        self.source = reading.source
        if self.baseline is None:
            interval, splits, zones = 0.0, (), ()
        else:
            interval = now - self.baseline.monotonic
            zones = self._zone_deltas(reading, now)
            splits = self.attribution.split(
                zones, interval,
                max(0, host_cpu.busy_ns - self.baseline.host_busy_ns),
                host_cpu.cpus, self._usage_deltas(instances), now)
        self.ledger.add_tick(splits, reading.zones,
                             {i.uuid: i.identity for i in instances},
                             interval, wall)
        expired = tuple(self.ledger.expire(wall, self.retention_s))
        self.baseline = self._new_baseline(now, reading, host_cpu,
                                           instances)
        if not self._persist():
            return None
        report = TickReport(
            host=self.host, time=wall, interval_s=interval,
            configured_interval_s=self.configured_interval_s,
            stale_after_s=self.stale_after_s, source=reading.source,
            model=self.attribution.name,
            idle_policy=getattr(self.attribution, 'idle_policy', ''),
            ledger=self.ledger, splits=splits, expired=expired)
        self._publish(report)
        return report

    def _new_baseline(self, now, reading, host_cpu, instances):
        # Unreadable zones keep their last reading and its time.
        zones = dict(self.baseline.zones) if self.baseline else {}
        times = dict(self.baseline.zone_times) if self.baseline else {}
        zones.update(reading.by_name())
        times.update((zone.name, now) for zone in reading.zones)
        return Baseline(now, zones, host_cpu.busy_ns,
                        {i.uuid: i.cpu_time_ns for i in instances}, times)

    def _persist(self):
        # Publishing a value the disk does not hold could let a guest see
        # a counter go backwards after a restart: no save, no publish.
        try:
            self.ledger.save(self.ledger_path)
        except OSError as exc:
            self.states.failed('persist', 'Cannot save the ledger to %s, '
                               'publishing paused, counting goes on in '
                               'memory: %s', self.ledger_path, exc)
            return False
        self.states.recovered('persist', 'Ledger saved again to %s',
                              self.ledger_path)
        return True

    def _publish(self, report):
        for publisher in self.publishers:
            try:
                publisher.publish(report)
                self.states.recovered('publish-' + publisher.name,
                                      'Publisher %s works again',
                                      publisher.name)
            except Exception as exc:  # one broken sink must not stop others
                self.states.failed('publish-' + publisher.name,
                                   'Publisher %s failed: %s',
                                   publisher.name, exc)
