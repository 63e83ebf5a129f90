"""Energy deltas that cannot invent energy, per-socket splits through the
tick, source epochs and the learned idle power across restarts."""

import logging

import pytest

from scaph_openstack.agent import tick
from scaph_openstack.attribution import cputime
from scaph_openstack.attribution import idle
from scaph_openstack.energy import rapl
from scaph_openstack.inventory import hoststat
from scaph_openstack import ledger as ledger_mod
from tests.unit import fakes
from tests.unit import powercap

TICK_NS = hoststat.NS_PER_TICK
ZONES = {'intel-rapl:0': 'package-0', 'intel-rapl:1': 'package-1'}


class TwoSocketHost:
    """Two packages wrapping at ``max_range``, two CPUs (one a socket),
    per-CPU /proc/stat, a clock; the default attribution configuration."""

    def __init__(self, tmp_path, max_range=powercap.INTEL_RANGE,
                 topology=None):
        self.tmp_path = tmp_path
        self.powercap = tmp_path / 'powercap'
        self.max_range = max_range
        self.counters = {}
        for dirname, name in ZONES.items():
            powercap.write_zone(self.powercap, dirname, name, 0, max_range)
            self.counters[dirname] = 0
        self.stat = tmp_path / 'stat'
        self.busy = [0, 0]
        self.write_stat()
        self.inventory = fakes.StaticInventory()
        self.clock = fakes.Clock()
        self.ledger_path = str(tmp_path / 'ledger.json')
        self.topology = {0: 0, 1: 1} if topology is None else topology
        self.ticker = self.new_ticker()

    def new_ticker(self):
        return tick.Ticker(
            energy=rapl.RaplSource(str(self.powercap)),
            inventory=self.inventory,
            attribution=cputime.CpuTimeAttribution(),
            ledger=ledger_mod.Ledger.load(self.ledger_path),
            # A publisher every tick: the ledger is saved as often.
            publishers=[fakes.RecordingPublisher()],
            ledger_path=self.ledger_path, host='h',
            configured_interval_s=2.0, stale_after_s=6.0, retention_s=600,
            proc_stat_path=str(self.stat), clock=self.clock,
            wallclock=self.clock, topology=self.topology)

    def write_stat(self):
        busy = [b // TICK_NS for b in self.busy]
        self.stat.write_text('cpu %d 0 0 0 0 0 0 0\ncpu0 %d 0 0 0\n'
                             'cpu1 %d 0 0 0\n' % (sum(busy), *busy))

    def run(self, seconds, joules=(0, 0), busy=(0, 0)):
        """Let time pass: energy per package, busy ns per CPU."""
        self.clock.now += seconds
        for (dirname, _), added in zip(ZONES.items(), joules, strict=True):
            total = self.counters[dirname] + int(added * 1e6)
            self.counters[dirname] = total % self.max_range
            powercap.set_energy(self.powercap, dirname,
                                self.counters[dirname])
        self.busy = [b + int(n) for b, n in zip(self.busy, busy,
                                                   strict=True)]
        self.write_stat()

    def measured(self, zone='package-0'):
        return self.ticker.ledger.zones[zone].measured_uj


def test_a_burst_before_a_long_pause_does_not_invent_wraps(tmp_path):
    """150 W for minutes, a 400 W burst, then 40 minutes unread (the
    agent stopped) that used 360 kJ: 1 wrap + 98 kJ of a 262 kJ range.
    The last interval's power (400 W) would guess 3 more wraps (884 kJ);
    the long-run average finds the one."""
    host = TwoSocketHost(tmp_path)
    host.ticker.tick()
    for _ in range(60):
        host.run(2, (300, 300))
        host.ticker.tick()
    host.run(2, (800, 300))
    host.ticker.tick()
    before = host.measured()
    host.run(2400, (360_000, 360_000))
    host.ticker.tick()
    assert host.measured() - before == 360_000 * 10 ** 6


def test_a_counter_reset_is_rebaselined_not_counted_as_a_wrap(
        tmp_path, caplog):
    host = TwoSocketHost(tmp_path)
    host.ticker.tick()
    host.run(2, (100_000, 100))      # counters at 100 kJ
    host.ticker.tick()
    before = host.measured()
    # Resume from suspend: the package counter starts again near zero.
    host.clock.now += 2
    host.counters['intel-rapl:0'] = 5_000_000
    powercap.set_energy(host.powercap, 'intel-rapl:0', 5_000_000)
    with caplog.at_level(logging.WARNING):
        host.ticker.tick()
    assert host.measured() == before            # nothing invented
    assert 're-baselined' in caplog.text
    host.run(2, (100, 100))
    host.ticker.tick()
    assert host.measured() == before + 100 * 10 ** 6


def test_energy_read_between_ticks_keeps_wraps_exact_while_inventory_hangs(
        tmp_path):
    host = TwoSocketHost(tmp_path, max_range=10 ** 9)   # 1 kJ range
    host.ticker.tick()
    host.inventory.available = False    # libvirt past its deadline
    true = 0
    # 7 ticks without instances, 2 to 3 wraps between two of them: the
    # tick and the sampler thread read energy every 2 s (under one range).
    for watts in (300, 450, 120, 480, 330, 50, 470):
        host.run(2, (watts * 2, 0))
        true += watts * 2
        assert host.ticker.tick().inventory_ok is False
        host.run(2, (watts * 1.5, 0))
        true += watts * 1.5
        host.ticker.sample_if_due(1.0)  # the sampler thread's call
    host.inventory.available = True
    host.run(2, (400, 0))
    true += 400
    host.ticker.tick()
    assert host.ticker.ledger.zones['package-0'].measured_uj == true * 10 ** 6


def test_pinned_instances_are_charged_by_their_own_socket(tmp_path):
    host = TwoSocketHost(tmp_path)
    host.inventory.set('zero', 0, cpus={0})
    host.inventory.set('one', 0, cpus={1})
    host.ticker.tick()
    host.run(2, (100, 60), busy=(2e9, 1e9))
    host.inventory.set('zero', 2 * 10 ** 9)
    host.inventory.set('one', 5 * 10 ** 8)
    host.ticker.tick()
    zero = host.ticker.ledger.instances['zero']
    one = host.ticker.ledger.instances['one']
    assert set(zero.energy_uj) == {'package-0'}
    assert set(one.energy_uj) == {'package-1'}
    # Calibrating: idle 0 W, all of package-1 is dynamic; 'one' used half
    # of socket 1's busy time.
    assert one.energy_uj['package-1'] == 30 * 10 ** 6
    assert zero.placement == one.placement == 'socket'


def test_without_topology_the_split_is_host_wide_and_says_so(tmp_path):
    host = TwoSocketHost(tmp_path, topology={})
    host.inventory.set('zero', 0, cpus={0})
    host.ticker.tick()
    host.run(2, (100, 60), busy=(2e9, 2e9))
    host.inventory.set('zero', 2 * 10 ** 9)
    host.ticker.tick()
    record = host.ticker.ledger.instances['zero']
    assert record.placement == 'host-wide'
    assert record.energy_uj == {'package-0': 50 * 10 ** 6,
                                'package-1': 30 * 10 ** 6}


def feed_varying_load(host, ticks, idle_w=(17.3, 11.7), per_core=(23.1,
                                                                  31.4)):
    loads = [0.35, 0.8, 0.55, 0.95, 0.2, 0.7, 0.45, 0.9, 0.6, 0.3]
    for n in range(ticks):
        u = (loads[n % len(loads)], loads[(n * 3 + 1) % len(loads)])
        joules = [2 * (idle_w[s] + per_core[s] * u[s]) for s in (0, 1)]
        host.run(2, joules, busy=(u[0] * 2e9, u[1] * 2e9))
        host.ticker.tick()


def test_learned_idle_power_is_published_and_survives_a_restart(tmp_path):
    host = TwoSocketHost(tmp_path)
    host.ticker.tick()
    feed_varying_load(host, 5)
    zone = host.ticker.ledger.zones['package-0']
    assert zone.idle_estimate_state == idle.STATE_CALIBRATING
    feed_varying_load(host, 40)
    zones = host.ticker.ledger.zones
    assert zones['package-0'].idle_estimate_state == idle.STATE_LEARNED
    assert zones['package-0'].idle_estimate_w == pytest.approx(17.3,
                                                               rel=0.02)
    assert zones['package-1'].idle_estimate_w == pytest.approx(11.7,
                                                               rel=0.02)
    host.ticker = host.new_ticker()      # restart: the ledger is reloaded
    host.ticker.tick()                   # baseline
    feed_varying_load(host, 1)
    zone = host.ticker.ledger.zones['package-1']
    assert zone.idle_estimate_state == idle.STATE_LEARNED
    assert zone.idle_estimate_w == pytest.approx(11.7, rel=0.02)


def test_a_change_of_source_starts_a_new_epoch(tmp_path):
    host = TwoSocketHost(tmp_path)
    host.inventory.set('a', 0, cpus={0})
    host.ticker.tick()
    host.run(2, (100, 100), busy=(1e9, 0))
    host.inventory.set('a', 10 ** 9)
    host.ticker.tick()
    assert host.ticker.ledger.epoch == 1
    # The ledger was counted with the simulated model before.
    led = ledger_mod.Ledger.load(host.ledger_path)
    led.source = 'simulated'
    led.save(host.ledger_path)
    host.ticker = host.new_ticker()
    host.ticker.tick()
    led = host.ticker.ledger
    assert (led.epoch, led.source) == (2, 'rapl')
    assert led.instances['a'].energy_uj == {}
    assert led.zones['package-0'].measured_uj == 0
    assert led.previous_epochs[0]['source'] == 'simulated'
    assert led.previous_epochs[0]['measured_uj']['package-0'] == 10 ** 8


def test_a_guest_spanning_both_sockets_pays_each_for_its_vcpus(tmp_path):
    from scaph_openstack.inventory import topology
    host = TwoSocketHost(tmp_path)
    pins = topology.CpuPins((frozenset({0}), frozenset({1})),
                            frozenset({0}))
    host.inventory.set('span', 0, vcpus=2, pins=pins,
                       vcpu_times={0: 0, 1: 0})
    host.ticker.tick()
    host.run(2, (100, 60), busy=(2e9, 2e9))
    # vCPU 0 ran 1.0 s on CPU 0, vCPU 1 0.5 s on CPU 1, the emulator
    # 0.5 s on CPU 0.
    host.inventory.set('span', 2 * 10 ** 9, pins=pins,
                       vcpu_times={0: 10 ** 9, 1: 5 * 10 ** 8})
    host.ticker.tick()
    record = host.ticker.ledger.instances['span']
    assert record.placement == 'socket'
    assert record.energy_uj == {'package-0': 75 * 10 ** 6,
                                'package-1': 15 * 10 ** 6}
