from scaph_openstack.energy import base
from scaph_openstack.energy import simulated
from scaph_openstack.inventory import hoststat

TICK = hoststat.NS_PER_TICK


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def write_stat(path, busy, idle):
    path.write_text('cpu %d 0 0 %d 0 0 0 0\ncpu0 0 0 0 0\n' % (busy, idle))


def test_linear_model_and_source_label(tmp_path):
    stat = tmp_path / 'stat'
    clock = Clock()
    source = simulated.SimulatedSource(
        sockets=2, idle_watts=10, max_watts=110, dram_watts=3,
        proc_stat_path=str(stat), clock=clock)
    write_stat(stat, 0, 0)
    first = source.read()
    assert first.source == base.SOURCE_SIMULATED
    assert {z.energy_uj for z in first.zones} == {0}
    clock.now += 2.0
    write_stat(stat, 25, 75)          # 25 % busy
    zones = source.read().by_name()
    # (10 + 100 x 0.25) W x 2 s = 70 J per package
    assert zones['package-0'].energy_uj == 70_000_000
    assert zones['package-1'].energy_uj == 70_000_000
    assert zones['dram-1'].energy_uj == 6_000_000
    assert zones['dram-0'].kind == 'dram'


def test_counters_wrap_like_rapl(tmp_path):
    stat = tmp_path / 'stat'
    clock = Clock()
    source = simulated.SimulatedSource(
        idle_watts=1, max_watts=1, max_energy_range_uj=1_500_000,
        proc_stat_path=str(stat), clock=clock)
    write_stat(stat, 0, 0)
    source.read()
    clock.now += 1.0
    assert source.read().by_name()['package-0'].energy_uj == 1_000_000
    clock.now += 1.0
    assert source.read().by_name()['package-0'].energy_uj == 500_000
