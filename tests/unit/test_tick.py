import pytest

from scaph_openstack.agent import tick
from scaph_openstack.attribution import cputime
from scaph_openstack.energy import rapl
from scaph_openstack.inventory import hoststat
from scaph_openstack import ledger as ledger_mod
from scaph_openstack.publishers import snapshot as snapshot_publisher
from scaph_openstack import snapshot
from tests.unit import fakes
from tests.unit import powercap

TICK_NS = hoststat.NS_PER_TICK


class Host:
    """A fixture host: powercap tree, /proc/stat, instances, clock."""

    def __init__(self, tmp_path, idle_policy='none'):
        self.root = tmp_path
        self.powercap = tmp_path / 'powercap'
        powercap.write_zone(self.powercap, 'intel-rapl:0', 'package-0', 0,
                            max_range=10 ** 9)
        powercap.write_zone(self.powercap, 'intel-rapl:0:0', 'dram', 0,
                            max_range=10 ** 9)
        self.counters = {'intel-rapl:0': 0, 'intel-rapl:0:0': 0}
        self.stat = tmp_path / 'stat'
        self.busy = 0
        self.write_stat()
        self.inventory = fakes.StaticInventory()
        self.clock = fakes.Clock()
        self.idle_policy = idle_policy
        self.publisher = fakes.RecordingPublisher()
        self.ledger_path = str(tmp_path / 'state' / 'ledger.json')
        self.snapshot_path = str(tmp_path / 'snapshot.json')
        self.ticker = self.new_ticker()

    def write_stat(self):
        self.stat.write_text('cpu %d 0 0 100 0 0 0 0\ncpu0 0 0 0 0\n'
                             'cpu1 0 0 0 0\n' % (self.busy // TICK_NS))

    def new_ticker(self):
        return tick.Ticker(
            energy=rapl.RaplSource(str(self.powercap)),
            inventory=self.inventory,
            # The default configuration: idle power learned (still
            # calibrating in these short runs, so conservatively 0 W).
            attribution=cputime.CpuTimeAttribution(self.idle_policy),
            ledger=ledger_mod.Ledger.load(self.ledger_path),
            publishers=[self.publisher, snapshot_publisher.SnapshotPublisher(
                self.snapshot_path)],
            ledger_path=self.ledger_path, host='compute-1',
            configured_interval_s=2.0, stale_after_s=6.0, retention_s=60,
            proc_stat_path=str(self.stat), clock=self.clock,
            wallclock=self.clock)

    def advance(self, seconds, package_uj, dram_uj=0, busy_ns=0, cpu=None):
        self.clock.now += seconds
        for zone, added in (('intel-rapl:0', package_uj),
                            ('intel-rapl:0:0', dram_uj)):
            self.counters[zone] = (self.counters[zone] + added) % 10 ** 9
            powercap.set_energy(self.powercap, zone, self.counters[zone])
        self.busy += busy_ns
        self.write_stat()
        for uuid, ns in (cpu or {}).items():
            self.inventory.set(uuid, self.inventory.cpu.get(uuid, 0) + ns)
        return self.ticker.tick()


@pytest.fixture
def host(tmp_path):
    return Host(tmp_path)


def test_first_tick_is_a_baseline_then_energy_is_split(host):
    host.inventory.set('a', 10 ** 12)  # past CPU time is not this tick's
    first = host.advance(0, 0)
    assert first.interval_s == 0 and host.ticker.last_splits == ()
    host.advance(2, 400_000_000, 100_000_000, busy_ns=4 * TICK_NS,
                          cpu={'a': 3 * TICK_NS})
    by_zone = {s.zone: s for s in host.ticker.last_splits}
    assert by_zone['package-0'].instances == {'a': 300_000_000}
    assert by_zone['dram-0'].instances == {'a': 75_000_000}
    assert host.ticker.ledger.instances['a'].total_uj == 375_000_000
    assert host.ticker.ledger.instances['a'].power_w == pytest.approx(187.5)
    doc = snapshot.read(host.snapshot_path, now=host.clock.now).document
    assert doc['source'] == 'rapl'
    (instance,) = doc['instances']
    assert instance['total_uj'] == 375_000_000
    assert instance['project_id'] == 'p1'


def test_wraparound_is_exact(host):
    host.inventory.set('a', 0)
    host.advance(0, 0)
    host.advance(2, 900_000_000, busy_ns=TICK_NS, cpu={'a': TICK_NS})
    host.advance(2, 300_000_000, busy_ns=TICK_NS,
                          cpu={'a': TICK_NS})     # package wrapped at 1e9
    assert host.counters['intel-rapl:0'] == 200_000_000
    assert host.ticker.ledger.zones['package-0'].measured_uj == 1_200_000_000
    assert host.ticker.ledger.instances['a'].energy_uj['package-0'] == \
        1_200_000_000


def test_counters_never_decrease_across_restart_and_reboot(host):
    host.inventory.set('a', 0)
    host.advance(0, 0)
    host.advance(2, 100, busy_ns=TICK_NS, cpu={'a': TICK_NS})
    before = host.publisher.totals[-1]['a']
    host.ticker = host.new_ticker()          # agent restarted
    host.inventory.set('a', 5)               # and the VM rebooted
    host.advance(2, 100, busy_ns=TICK_NS)    # baseline tick after restart
    assert host.publisher.totals[-1]['a'] == before
    host.advance(2, 100, busy_ns=TICK_NS, cpu={'a': TICK_NS})
    totals = [t['a'] for t in host.publisher.totals]
    assert totals == sorted(totals) and totals[-1] > before


def test_inventory_outage_keeps_metering_the_host_and_loses_nothing(host):
    """While the inventory cannot answer, zones are metered and published
    (the snapshot stays fresh), the energy of that window is unattributed
    and kept; when it is back, instances start again from a new
    baseline: their CPU time over the outage is not matched with one
    tick's energy."""
    host.inventory.set('a', 0)
    host.advance(0, 0)
    host.advance(2, 100, busy_ns=TICK_NS, cpu={'a': TICK_NS})
    host.inventory.available = False
    during = host.advance(2, 300, busy_ns=TICK_NS, cpu={'a': TICK_NS})
    assert during is not None and during.inventory_ok is False
    assert during.instances['a'].total_uj == 100   # kept, not reset
    assert during.instances['a'].state == 'running'
    doc = snapshot.read(host.snapshot_path, now=host.clock.now).document
    assert doc['time'] == host.clock.now and doc['inventory_ok'] is False
    host.inventory.available = True
    back = host.advance(2, 500, busy_ns=TICK_NS, cpu={'a': 5 * TICK_NS})
    assert back.instances['a'].total_uj == 100      # a new baseline
    after = host.advance(2, 700, busy_ns=TICK_NS, cpu={'a': TICK_NS})
    assert after.instances['a'].total_uj == 800
    zone = after.zones[0]
    assert zone.measured_uj == 1600
    assert zone.measured_uj == 800 + zone.residual_uj + \
        zone.unallocated_idle_uj


def test_full_disk_pauses_publishing_and_loses_nothing(host, monkeypatch):
    disk = fakes.FullDisk(monkeypatch, ledger_mod.Ledger)
    host.inventory.set('a', 0)
    host.advance(0, 0)
    published = len(host.publisher.reports)
    disk.full = True
    assert host.advance(2, 100, busy_ns=TICK_NS, cpu={'a': TICK_NS}) is None
    assert len(host.publisher.reports) == published
    disk.full = False
    host.advance(2, 100, busy_ns=TICK_NS, cpu={'a': TICK_NS})
    assert host.ticker.ledger.instances['a'].energy_uj['package-0'] == 200
    assert ledger_mod.Ledger.load(host.ledger_path).instances['a'] \
        .energy_uj['package-0'] == 200


def test_unreadable_zone_is_skipped_then_caught_up(host):
    host.inventory.set('a', 0)
    host.advance(0, 0)
    host.clock.now += 2
    host.counters['intel-rapl:0:0'] += 50
    powercap.set_energy(host.powercap, 'intel-rapl:0', 100)
    (host.powercap / 'intel-rapl:0:0' / 'energy_uj').write_text('garbage')
    report = host.ticker.tick()
    assert report is not None
    assert [s.zone for s in host.ticker.last_splits] == ['package-0']
    host.counters['intel-rapl:0'] = 100
    report = host.advance(2, 100, 50, busy_ns=TICK_NS, cpu={'a': TICK_NS})
    assert host.ticker.ledger.zones['dram-0'].measured_uj == 100


def test_a_failing_publisher_does_not_stop_the_others(host):
    class Broken:
        name = 'broken'

        def publish(self, report):
            raise RuntimeError('sink down')

    host.ticker.publishers.insert(0, Broken())
    host.advance(0, 0)
    assert len(host.publisher.reports) == 1


def test_instances_that_go_away_are_kept_then_expired(host):
    host.inventory.set('a', 0)
    host.advance(0, 0)
    host.inventory.remove('a')
    report = host.advance(2, 100)
    assert report.instances['a'].state == ledger_mod.STATE_UNDEFINED
    report = host.advance(61, 100)
    assert report.expired == ('a',)
    assert 'a' not in host.ticker.ledger.instances


@pytest.mark.parametrize('state', ['paused', 'shutoff'])
def test_defined_instances_keep_counters_past_the_retention(host, state):
    """Paused or shut off for longer than [agent] retention: still
    defined, so counters and share stay; it runs on from where it was."""
    host.inventory.set('a', 0)
    host.advance(0, 0)
    host.advance(2, 100, busy_ns=TICK_NS, cpu={'a': TICK_NS})
    host.inventory.set_state('a', state)
    for _ in range(5):
        report = host.advance(30, 100, busy_ns=TICK_NS)
    assert report.expired == () and report.instances['a'].state == state
    assert report.instances['a'].total_uj == 100
    host.inventory.set_state('a', 'running')
    host.inventory.set('a', 0 if state == 'shutoff' else TICK_NS)
    host.advance(2, 100, busy_ns=TICK_NS)
    report = host.advance(2, 100, busy_ns=TICK_NS, cpu={'a': TICK_NS})
    assert report.instances['a'].total_uj == 200


def test_absence_is_measured_on_the_monotonic_clock(host):
    """An NTP step of the wall clock removes nothing; only the agent's
    monotonic time counts towards the retention, summed tick by tick and
    kept across a restart."""
    wall = fakes.Clock(5000.0)
    host.ticker.wallclock = wall
    host.inventory.set('a', 0)
    host.advance(0, 0)
    host.inventory.remove('a')
    host.advance(2, 100)
    wall.now += 10 ** 7                      # the wall clock jumps a year
    report = host.advance(2, 100)
    assert 'a' in report.instances and report.expired == ()
    host.advance(30, 100)
    host.ticker = host.new_ticker()          # restarted: 34 s absent kept
    host.advance(2, 100)                     # baseline: no time passes
    assert 'a' in host.ticker.ledger.instances
    report = host.advance(30, 100)
    assert report.expired == ('a',)


class Paced(fakes.RecordingPublisher):
    name = 'paced'
    min_interval = 10.0


@pytest.fixture
def ledger_saves(host, monkeypatch):
    """The host clock's time at each Ledger.save, which still writes."""
    saves = []
    original = ledger_mod.Ledger.save

    def save(ledger, path):
        saves.append(host.clock.now)
        return original(ledger, path)

    monkeypatch.setattr(ledger_mod.Ledger, 'save', save)
    return saves


def test_ledger_is_saved_only_when_a_publisher_exposes_values(
        host, ledger_saves):
    """Ticks every 2 s, a publisher every 10 s: one save per publication
    (not per tick), and every published value is on disk."""
    paced = Paced()
    host.ticker.publishers = [paced]
    host.inventory.set('a', 0)
    host.advance(0, 0)
    for step in range(1, 17):
        host.advance(2, 100 + step * 37, busy_ns=TICK_NS,
                     cpu={'a': step * TICK_NS})
        on_disk = ledger_mod.Ledger.load(host.ledger_path)
        published = paced.totals[-1]['a']
        assert on_disk.instances['a'].total_uj == published
    assert len(ledger_saves) == len(paced.reports) == 4   # t=0, 10, 20, 30
    assert host.ticker.ledger.instances['a'].total_uj > published


def test_a_new_instance_is_published_at_once(host):
    paced = Paced()
    host.ticker.publishers = [paced]
    host.inventory.set('a', 0)
    host.advance(0, 0)
    host.advance(2, 100)
    assert len(paced.reports) == 1
    host.inventory.set('b', 0)
    report = host.advance(2, 100)
    assert report is not None and 'b' in report.instances


def test_the_report_is_frozen_against_later_ticks(host):
    host.inventory.set('a', 0)
    host.advance(0, 0)
    report = host.advance(2, 100, busy_ns=TICK_NS, cpu={'a': TICK_NS})
    host.inventory.set('b', 0)
    host.advance(2, 100, busy_ns=TICK_NS, cpu={'a': TICK_NS})
    assert report.instances['a'].total_uj == 100
    assert set(report.instances) == {'a'}
    with pytest.raises(TypeError):
        report.instances['a'].energy_uj['package-0'] = 0


def test_instance_cpu_delta():
    assert tick.instance_cpu_delta(None, 500) == 0
    assert tick.instance_cpu_delta(100, 500) == 400
    assert tick.instance_cpu_delta(500, 30) == 30   # domain restarted


def test_the_ledger_is_saved_every_300_s_when_nothing_publishes(
        host, ledger_saves):
    """A publisher that is never due (or none at all) must not leave the
    counters unsaved for longer than tick.MAX_UNSAVED_S."""
    class Never(fakes.RecordingPublisher):
        name = 'never'
        min_interval = 10 ** 9

    host.ticker.publishers = [Never()]
    host.inventory.set('a', 0)
    host.advance(0, 0)                       # the first publication
    start = host.clock.now
    for _ in range(300):                     # 600 s of 2 s ticks
        host.advance(2, 100, busy_ns=TICK_NS, cpu={'a': TICK_NS})
    assert [t - start for t in ledger_saves] == [0, 300, 600]
    on_disk = ledger_mod.Ledger.load(host.ledger_path)
    assert on_disk.instances['a'].total_uj > 0
