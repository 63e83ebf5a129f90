"""One tick of the agent, free of any service framework.

In order and exactly once each: list instances (one bulk call), read every
energy zone and the host's CPU time right after it, compute deltas since
the previous tick, split each zone's delta, add the split to the ledger.
When a publisher is due (its ``min_interval`` passed, or instances came,
changed state or went): persist the ledger, build one frozen Report from
it, hand that to the publishers that are due. Nothing reads back what a
publisher wrote, and nothing is published that the disk does not hold.
"""

import dataclasses
import gc
import threading
import time

from oslo_log import log as logging

from scaph_openstack.accounting import carbon as carbon_mod
from scaph_openstack.attribution import base as attribution_base
from scaph_openstack.energy import base as energy_base
from scaph_openstack.inventory import base as inventory_base
from scaph_openstack.inventory import hoststat
from scaph_openstack.inventory import topology
from scaph_openstack import report as report_mod
from scaph_openstack import statelog

LOG = logging.getLogger(__name__)
# With no publisher due for this long, the ledger is saved anyway: a crash
# loses at most this much of the counters (and the learned idle power).
MAX_UNSAVED_S = 300.0
_gc_frozen = False      # freeze_long_lived_objects() ran in this process


def freeze_long_lived_objects():
    """Take every object alive now out of the cyclic collector's scans,
    once per process (after the first publication, when the agent's
    long-lived objects exist: modules, configuration, plugins, ledger,
    identity cache). At 1000 instances they are about 80 000 tracked
    objects, which every full collection walked (35-40 ms, about every
    15 ticks): 13 % of the agent's CPU at the default min_interval,
    0.5 ms per tick instead once frozen (doc/performance.md). Garbage is
    collected first; what ticks allocate afterwards is collected as
    before."""
    global _gc_frozen
    if _gc_frozen:
        return
    _gc_frozen = True
    gc.collect()
    gc.freeze()


@dataclasses.dataclass
class Baseline:
    """The previous tick's cumulative readings."""
    monotonic: float
    host_cpu: object   # hoststat.HostCpuTime
    cpu_ns: dict       # instance uuid -> cumulative CPU ns
    vcpu_ns: dict = dataclasses.field(default_factory=dict)
    # ^ uuid -> {vCPU: cumulative ns}, for vCPUs pinned across sockets


@dataclasses.dataclass
class ZoneCounter:
    """One zone's last raw reading and the energy since the last tick."""
    reading: object    # energy_base.ZoneReading
    time: float        # monotonic time of that reading
    pending_uj: int = 0
    # When the pending energy started: the reading a tick last took.
    # None until a tick saw this zone (it is then its baseline).
    window_start: float | None = None


def instance_cpu_delta(previous_ns, current_ns):
    """CPU time since the last tick; a restarted domain starts from 0."""
    if previous_ns is None:
        return 0  # first sight: its past CPU time is not this interval's
    if current_ns < previous_ns:
        return current_ns
    return current_ns - previous_ns


def socket_busy(previous, current, topology):
    """{socket: busy ns} between two HostCpuTimes, {} without topology."""
    if not topology:
        return {}
    busy = {}
    for cpu, socket in topology.items():
        before = previous.cpu_busy_ns.get(cpu)
        after = current.cpu_busy_ns.get(cpu)
        if before is not None and after is not None:
            busy[socket] = busy.get(socket, 0) + max(0, after - before)
    return busy


def socket_cpus(topology):
    cpus = {}
    for socket in topology.values():
        cpus[socket] = cpus.get(socket, 0) + 1
    return cpus


class Ticker:
    """One tick: list instances, read energy and host CPU time right
    after (so the instances' CPU time and the energy cover the same
    window), split, add to the ledger, persist, publish.

    Energy is also read between ticks (``sample_energy``, called by the
    service's sampler thread): a tick stalled by a hung libvirt never
    leaves a counter unread long enough to wrap twice.
    """

    def __init__(self, energy, inventory, attribution, ledger, publishers,
                 ledger_path, host, configured_interval_s, stale_after_s,
                 retention_s, proc_stat_path='/proc/stat',
                 clock=time.monotonic, wallclock=time.time, topology=None,
                 max_zone_power_w=energy_base.DEFAULT_MAX_ZONE_POWER_W,
                 handoff_desk=None, accounting=None):
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
        self.topology = dict(topology or {})
        self.socket_cpus = socket_cpus(self.topology)
        self.max_zone_power_w = max_zone_power_w
        # Counters carried between hosts (agent/handoffs.py); None: none.
        self.handoff_desk = handoff_desk
        # Carbon and PUE (accounting/carbon.py); None: not counted.
        self.accounting = accounting
        self.baseline = None
        self.source = None
        self.states = statelog.StateLog(LOG)
        self.counters = {}          # zone name -> ZoneCounter
        self.last_sample = None     # monotonic time of the last reading
        self.last_splits = ()       # the last tick's ZoneSplits
        self.last_report = None
        self._energy_lock = threading.Lock()
        self._builder = report_mod.ReportBuilder()
        self._published_at = {}     # publisher index -> monotonic time
        self._presence = None       # uuid -> state, at the last tick
        self._expired = []          # dropped since the last report
        self._dirty = False         # the ledger has what the disk lacks
        self._saved_at = None       # monotonic time of the last save try
        attribution.load_state(ledger.attribution_state)

    # -- energy, on its own schedule ----------------------------------------
    def sample_energy(self):
        """Read every zone now and add what each used since its last
        reading to its pending energy. Returns (EnergyReading, monotonic
        time); raises EnergySourceError."""
        with self._energy_lock:
            reading = self.energy.read()
            now = self.clock()
            self.last_sample = now
            for zone in reading.zones:
                self._account(zone, now)
            self._log_zone_errors(reading)
            return reading, now

    def _account(self, zone, now):
        counter = self.counters.get(zone.name)
        if counter is None:
            self.counters[zone.name] = ZoneCounter(zone, now)
            return
        elapsed = now - counter.time
        expected = None
        record = self.ledger.zones.get(zone.name)
        if record is not None and record.avg_power_w and \
                elapsed > 2 * self.configured_interval_s:
            # A long pause can hide more than one wrap: the zone's
            # long-run average power tells how many (one burst before the
            # pause must not).
            expected = record.avg_power_w * elapsed * 1e6
        previous = counter.reading
        delta = energy_base.plausible_delta(
            previous.energy_uj, zone.energy_uj, zone.max_energy_range_uj,
            elapsed, self.max_zone_power_w, expected)
        if delta is None:
            LOG.warning('Zone %s: counter went from %d to %d in %.1fs, '
                        'which no wrap at up to %.0f W explains (a reset '
                        'after resume or a driver reload): re-baselined, '
                        'that interval is not counted', zone.name,
                        previous.energy_uj, zone.energy_uj, elapsed,
                        self.max_zone_power_w)
            delta = 0
        counter.reading, counter.time = zone, now
        counter.pending_uj += delta

    def _log_zone_errors(self, reading):
        for zone in reading.zones:
            self.states.recovered('zone-' + zone.name,
                                  'Zone %s readable again', zone.name)
        for zone, error in reading.errors.items():
            self.states.failed('zone-' + zone, 'Zone %s unreadable, '
                               'skipped until it reads again: %s',
                               zone, error)

    def sample_if_due(self, period_s):
        """The sampler thread's call: read energy unless a tick or sample
        did so within ``period_s``. Never raises."""
        last = self.last_sample
        if last is not None and self.clock() - last < period_s:
            return
        try:
            self.sample_energy()
        except energy_base.EnergySourceError:
            pass  # the tick reports it
        except Exception as exc:  # the sampler thread must not die
            self.states.failed('sampler', 'Reading energy between ticks '
                               'failed: %s', exc)
        else:
            self.states.recovered('sampler', 'Reading energy between '
                                  'ticks works again')

    def _take_zone_deltas(self, reading):
        """This tick's ZoneDeltas: every zone read now, with the energy
        it used since the last tick; pending energy is reset."""
        deltas = []
        with self._energy_lock:
            for zone in reading.zones:
                counter = self.counters[zone.name]
                if counter.window_start is not None:
                    deltas.append(attribution_base.ZoneDelta(
                        zone.name, zone.kind, zone.socket,
                        counter.pending_uj,
                        counter.time - counter.window_start))
                counter.pending_uj, counter.window_start = 0, counter.time
        return tuple(deltas)

    def _clear_pending(self):
        """The baseline tick: energy counts from the readings just taken."""
        with self._energy_lock:
            for counter in self.counters.values():
                counter.pending_uj, counter.window_start = 0, counter.time

    # -- reading -------------------------------------------------------------
    def _list_instances(self):
        """Every defined instance, or None when the inventory cannot say
        now (libvirtd away or stalled past its deadline)."""
        try:
            instances = self.inventory.list_instances()
        except inventory_base.InventoryUnavailable as exc:
            self.states.failed('inventory', 'Inventory unavailable: host '
                               'zones are still metered, this window\'s '
                               'energy stays unattributed until it is '
                               'back: %s', exc)
            return None
        self.states.recovered('inventory', 'Inventory available again, '
                              'metering instances again')
        return instances

    def _read_inputs(self):
        """(instances or None, EnergyReading, monotonic and wall time of
        that reading, HostCpuTime), or None if energy or host CPU time
        cannot be read."""
        instances = self._list_instances()
        try:
            reading, now = self.sample_energy()
            wall = self.wallclock()
            self.states.recovered('energy', 'Energy source readable again')
            host_cpu = hoststat.read_host_cpu(self.proc_stat_path)
            self.states.recovered('hoststat', 'Host CPU readable again')
        except energy_base.EnergySourceError as exc:
            self.states.failed('energy', 'Cannot read energy: %s', exc)
            return None
        except hoststat.HostStatError as exc:
            self.states.failed('hoststat', 'Cannot read host CPU: %s', exc)
            return None
        return instances, reading, now, wall, host_cpu

    # -- deltas --------------------------------------------------------------
    def _host_usage(self, host_cpu):
        previous = self.baseline.host_cpu
        return attribution_base.HostUsage(
            busy_ns=max(0, host_cpu.busy_ns - previous.busy_ns),
            cpus=host_cpu.cpus,
            socket_busy_ns=socket_busy(previous, host_cpu, self.topology),
            socket_cpus=self.socket_cpus if self.topology else {})

    def _usage_delta(self, instance):
        uuid = instance.uuid
        cpu = instance_cpu_delta(self.baseline.cpu_ns.get(uuid),
                                 instance.cpu_time_ns)
        vcpu_deltas = None
        if instance.vcpu_time_ns:
            previous = self.baseline.vcpu_ns.get(uuid)
            if previous:
                vcpu_deltas = {n: instance_cpu_delta(previous.get(n), ns)
                               for n, ns in instance.vcpu_time_ns.items()}
        return attribution_base.UsageDelta(
            uuid, cpu, instance.vcpus,
            socket_cpu_ns=topology.socket_cpu_ns(
                cpu, instance.pins, vcpu_deltas, self.topology))

    @staticmethod
    def _placement(delta, one_socket):
        if one_socket:
            return attribution_base.PLACEMENT_SOCKET
        known = delta.known_sockets()
        if known and sum(known.values()) >= delta.cpu_ns:
            return attribution_base.PLACEMENT_SOCKET
        return attribution_base.PLACEMENT_HOST_WIDE

    def _usage(self, instances):
        """(UsageDeltas, {uuid: placement}) of the instances that have a
        QEMU (running or paused)."""
        if self.baseline is None or instances is None:
            return (), {}
        deltas = tuple(self._usage_delta(i) for i in instances
                       if i.state != inventory_base.STATE_SHUTOFF)
        # One socket: host-wide and per-socket are the same split.
        one_socket = len(self.socket_cpus) == 1
        return deltas, {d.uuid: self._placement(d, one_socket)
                        for d in deltas}

    def _next_baseline(self, now, host_cpu, instances):
        if instances is None:
            # Instances' CPU time since the last good inventory spans
            # windows whose energy is already counted as unattributed:
            # each starts again from its next reading.
            return Baseline(now, host_cpu, {}, {})
        return Baseline(
            now, host_cpu, {i.uuid: i.cpu_time_ns for i in instances},
            {i.uuid: i.vcpu_time_ns for i in instances if i.vcpu_time_ns})

    def _check_epoch(self, source, wall):
        """A ledger counted with another energy source is closed: its
        counters and learned idle power mean nothing for this one."""
        if self.ledger.source == source:
            return
        if self.ledger.source is None:
            self.ledger.source, self.ledger.epoch_started = source, wall
            return
        LOG.warning('Energy source changed from %s to %s: epoch %d ends, '
                    'epoch %d starts with every counter at zero (the two '
                    'never add up)', self.ledger.source, source,
                    self.ledger.epoch, self.ledger.epoch + 1)
        self.ledger.new_epoch(source, wall)
        self.attribution.load_state({})
        self.baseline = None

    # -- the tick ------------------------------------------------------------
    def tick(self):
        """Run one tick; the Report published, or None when nothing was
        published (no publisher due, or the tick failed)."""
        inputs = self._read_inputs()
        if inputs is None:
            return None
        instances, reading, now, wall, host_cpu = inputs
        self.source = reading.source
        self._check_epoch(reading.source, wall)
        usage, placements = self._usage(instances)
        if self.baseline is None:
            interval, splits = 0.0, ()
            self._clear_pending()
        else:
            interval = now - self.baseline.monotonic
            splits = self.attribution.split(
                self._take_zone_deltas(reading), interval,
                self._host_usage(host_cpu), usage, now)
        present = None if instances is None else {
            i.uuid: (i.identity, i.state) for i in instances}
        handoffs = []
        carbon, intensity, factor = self._carbon(wall)
        self.ledger.add_tick(splits, reading.zones, present, interval, wall,
                             placements, after_presence=lambda ledger:
                             handoffs.append(self._handoffs()),
                             carbon=carbon, carbon_factor=factor)
        expired = self.ledger.expire(interval, self.retention_s)
        self._expired.extend(expired)
        if self.handoff_desk is not None:
            self.handoff_desk.forget(expired)
        handed, answers = handoffs[0] if handoffs else (False, [])
        self.baseline = self._next_baseline(now, host_cpu, instances)
        self.ledger.attribution_state = self.attribution.state()
        self.last_splits = splits
        self._dirty = True
        changed = (self._presence_changed(present) or bool(expired) or
                   handed)
        due = self._due_publishers(now, force=changed)
        if not due:
            if self._saved_at is None or now - self._saved_at >= \
                    MAX_UNSAVED_S:
                self.persist(now)
            return None
        if not self.persist(now):
            return None
        # Nova carries what a hold froze to another host: only once the
        # disk has it, or a restart here could publish more.
        if self.handoff_desk is not None:
            self.handoff_desk.answer(answers)
        report = self._builder.build(
            self.ledger, host=self.host, time=wall, interval_s=interval,
            configured_interval_s=self.configured_interval_s,
            stale_after_s=self.stale_after_s, source=reading.source,
            model=self.attribution.name,
            idle_policy=getattr(self.attribution, 'idle_policy', ''),
            expired=tuple(self._expired), inventory_ok=present is not None,
            carbon=carbon, carbon_intensity=intensity,
            pue=self.accounting.pue if self.accounting is not None else 1.0)
        self._expired = []
        self.last_report = report
        self._publish(report, due, now)
        freeze_long_lived_objects()
        return report

    def _carbon(self, wall):
        """(counted, Intensity in force at ``wall``, carbon units per
        µJ or None): the intensity at the end of the tick's window is
        that of the whole window."""
        accounting = self.accounting
        if accounting is None or not accounting.enabled:
            return False, None, None
        try:
            intensity = accounting.intensity(wall)
        except Exception as exc:   # never stop the energy counting
            self.states.failed('carbon', 'Carbon intensity unavailable, '
                               'no carbon counted: %s', exc)
            intensity = carbon_mod.UNKNOWN
        else:
            self.states.recovered('carbon', 'Carbon intensity available '
                                  'again')
        return True, intensity, accounting.factor(intensity)

    def _handoffs(self):
        """(changed, answers) of the handoff directory; (False, [])
        without one. A failure there must not stop the counting."""
        if self.handoff_desk is None:
            return False, []
        try:
            return self.handoff_desk.process(self.ledger)
        except Exception as exc:
            self.states.failed('handoff', 'Handoff directory: %s', exc)
            return False, []

    def _presence_changed(self, present):
        """Did an instance come, go or change state since the last tick?
        Then every publisher shows it now, not at its next interval."""
        if present is None:
            return False
        states = {uuid: state for uuid, (_identity, state)
                  in present.items()}
        changed = states != self._presence
        self._presence = states
        return changed

    def _due_publishers(self, now, force=False):
        """Indexes of the publishers to run now."""
        due = []
        for index, publisher in enumerate(self.publishers):
            last = self._published_at.get(index)
            interval = getattr(publisher, 'min_interval', 0.0) or 0.0
            if force or last is None or now - last >= interval:
                due.append(index)
        return due

    def persist(self, now=None):
        """Save the ledger if it changed since the last save; False if it
        cannot be saved (then nothing is published)."""
        if not self._dirty:
            return True
        self._saved_at = self.clock() if now is None else now
        # Publishing a value the disk does not hold could let a guest see
        # a counter go backwards after a restart: no save, no publish.
        try:
            self.ledger.save(self.ledger_path)
        except OSError as exc:
            self.states.failed('persist', 'Cannot save the ledger to %s, '
                               'publishing paused, counting goes on in '
                               'memory: %s', self.ledger_path, exc)
            return False
        self._dirty = False
        self.states.recovered('persist', 'Ledger saved again to %s',
                              self.ledger_path)
        return True

    def _publish(self, report, due, now):
        for index in due:
            publisher = self.publishers[index]
            try:
                publisher.publish(report)
                self._published_at[index] = now
                self.states.recovered('publish-' + publisher.name,
                                      'Publisher %s works again',
                                      publisher.name)
            except Exception as exc:  # one broken sink must not stop others
                self.states.failed('publish-' + publisher.name,
                                   'Publisher %s failed: %s',
                                   publisher.name, exc)
