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
    assert first.interval_s == 0 and first.splits == ()
    report = host.advance(2, 400_000_000, 100_000_000, busy_ns=4 * TICK_NS,
                          cpu={'a': 3 * TICK_NS})
    by_zone = {s.zone: s for s in report.splits}
    assert by_zone['package-0'].instances == {'a': 300_000_000}
    assert by_zone['dram-0'].instances == {'a': 75_000_000}
    assert report.ledger.instances['a'].total_uj == 375_000_000
    assert report.ledger.instances['a'].power_w == pytest.approx(187.5)
    doc = snapshot.read(host.snapshot_path, now=host.clock.now).document
    assert doc['source'] == 'rapl'
    (instance,) = doc['instances']
    assert instance['total_uj'] == 375_000_000
    assert instance['project_id'] == 'p1'


def test_wraparound_is_exact(host):
    host.inventory.set('a', 0)
    host.advance(0, 0)
    host.advance(2, 900_000_000, busy_ns=TICK_NS, cpu={'a': TICK_NS})
    report = host.advance(2, 300_000_000, busy_ns=TICK_NS,
                          cpu={'a': TICK_NS})     # package wrapped at 1e9
    assert host.counters['intel-rapl:0'] == 200_000_000
    assert report.ledger.zones['package-0'].measured_uj == 1_200_000_000
    assert report.ledger.instances['a'].energy_uj['package-0'] == \
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


def test_inventory_outage_keeps_baselines_and_covers_the_gap(host):
    host.inventory.set('a', 0)
    host.advance(0, 0)
    host.inventory.available = False
    assert host.advance(2, 100, busy_ns=TICK_NS, cpu={'a': TICK_NS}) is None
    host.inventory.available = True
    report = host.advance(2, 100, busy_ns=TICK_NS, cpu={'a': TICK_NS})
    assert report.interval_s == 4
    assert report.ledger.zones['package-0'].measured_uj == 200
    assert report.ledger.instances['a'].energy_uj['package-0'] == 200


def test_full_disk_pauses_publishing_and_loses_nothing(host, monkeypatch):
    disk = fakes.FullDisk(monkeypatch, ledger_mod.Ledger)
    host.inventory.set('a', 0)
    host.advance(0, 0)
    published = len(host.publisher.reports)
    disk.full = True
    assert host.advance(2, 100, busy_ns=TICK_NS, cpu={'a': TICK_NS}) is None
    assert len(host.publisher.reports) == published
    disk.full = False
    report = host.advance(2, 100, busy_ns=TICK_NS, cpu={'a': TICK_NS})
    assert report.ledger.instances['a'].energy_uj['package-0'] == 200
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
    assert [s.zone for s in report.splits] == ['package-0']
    host.counters['intel-rapl:0'] = 100
    report = host.advance(2, 100, 50, busy_ns=TICK_NS, cpu={'a': TICK_NS})
    assert report.ledger.zones['dram-0'].measured_uj == 100


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
    assert report.ledger.instances['a'].running is False
    report = host.advance(61, 100)
    assert report.expired == ('a',)
    assert 'a' not in report.ledger.instances


def test_instance_cpu_delta():
    assert tick.instance_cpu_delta(None, 500) == 0
    assert tick.instance_cpu_delta(100, 500) == 400
    assert tick.instance_cpu_delta(500, 30) == 30   # domain restarted
