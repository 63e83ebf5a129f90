"""The emulated tree on its own: layout, the power model against the real
/proc/stat, wraps, and the truth record. No libvirt, a few seconds."""

import json
import os
import time

import pytest

from tests.accuracy import emulated_rapl
from tests.accuracy import loads

pytestmark = pytest.mark.skipif(
    not os.path.exists('/proc/stat'), reason='needs Linux /proc/stat')


def _read(path):
    with open(path) as f:
        return f.read().strip()


def test_busy_ns_reads_every_cpu_line():
    busy = emulated_rapl.read_cpu_busy_ns()
    assert sorted(busy) == list(range(len(busy)))
    assert len(busy) == os.cpu_count()
    assert all(v >= 0 and v % emulated_rapl.NS_PER_JIFFY == 0
               for v in busy.values())


def test_busy_ns_counts_user_nice_system_irq_softirq_steal(tmp_path):
    stat = tmp_path / 'stat'
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text('cpu  9 9 9 9 9 9 9 9 9 9\n'
                    'cpu0 1 2 3 1000 500 4 5 6 70 80\n'
                    'cpu1 10 0 0 0 0 0 0 0 0 0\n'
                    'intr 1 2 3\n')
    busy = emulated_rapl.read_cpu_busy_ns(str(stat))
    ns = emulated_rapl.NS_PER_JIFFY
    assert busy == {0: 21 * ns, 1: 10 * ns}


def test_layout_topology_and_names(tmp_path):
    rapl = emulated_rapl.EmulatedRapl(tmp_path).create()
    try:
        pc = rapl.powercap_path
        assert _read(os.path.join(pc, 'intel-rapl:0', 'name')) == 'package-0'
        assert _read(os.path.join(pc, 'intel-rapl:1', 'name')) == 'package-1'
        assert _read(os.path.join(pc, 'intel-rapl:0:0', 'name')) == 'dram'
        assert _read(os.path.join(pc, 'intel-rapl:1:0', 'name')) == 'dram'
        for cpu, socket in ((0, 0), (1, 1)):
            assert _read(os.path.join(
                rapl.topology_path, 'cpu%d' % cpu, 'topology',
                'physical_package_id')) == str(socket)
        r = int(_read(os.path.join(pc, 'intel-rapl:0',
                                   'max_energy_range_uj')))
        assert r == rapl.model.package_range_uj
    finally:
        rapl.stop()


def test_power_follows_real_per_cpu_load_and_wraps(tmp_path):
    """A busy loop pinned to the last CPU: that socket's energy grows by
    idle x dt + slope x its busy seconds (from /proc/stat, read here
    independently), the other socket's by its own; counters wrap."""
    if os.cpu_count() < 2:
        pytest.skip('needs two CPUs')
    model = emulated_rapl.PowerModel(package_range_uj=40_000_000,
                                     dram_range_uj=5_000_000)
    rapl = emulated_rapl.EmulatedRapl(tmp_path, model)
    with loads.HostNoise(cpu=1, duties=[1.0], hold_s=60):
        time.sleep(0.3)
        with rapl:
            t0 = time.time()
            busy0 = emulated_rapl.read_cpu_busy_ns()
            time.sleep(3.0)
            busy1 = emulated_rapl.read_cpu_busy_ns()
            t1 = time.time()
    rapl.check()
    # what the counters show, wrap-corrected, equals the truth record
    for z in rapl.zones:
        shown = int(_read(os.path.join(rapl.powercap_path, z.dirname,
                                       'energy_uj')))
        total = rapl._start[z.agent_name] + int(rapl.energy[z.agent_name])
        assert shown == total % z.max_range_uj
        assert total // z.max_range_uj == rapl.wraps[z.agent_name]
    assert rapl.wraps['package-1'] >= 1
    a, b = rapl.truth_at(t0), rapl.truth_at(t1)
    for socket in (0, 1):
        busy_s = (busy1[socket] - busy0[socket]) / 1e9
        dyn = b['dynamic_uj']['package-%d' % socket] - \
            a['dynamic_uj']['package-%d' % socket]
        idle = b['idle_uj']['package-%d' % socket] - \
            a['idle_uj']['package-%d' % socket]
        expect_dyn = model.package_w_per_core[socket] * busy_s * 1e6
        # the truth is sampled every 200 ms: allow two jiffies per edge
        slack = model.package_w_per_core[socket] * 0.05 * 1e6
        assert abs(dyn - expect_dyn) <= slack, (socket, dyn, expect_dyn)
        assert idle == pytest.approx(
            model.package_idle_w[socket] * (t1 - t0) * 1e6, rel=0.03)
    # the pinned loop kept CPU 1 busy: socket 1 drew close to full power
    p1 = (b['energy_uj']['package-1'] - a['energy_uj']['package-1']) / \
        (t1 - t0) / 1e6
    assert p1 > model.package_idle_w[1] + 0.8 * model.package_w_per_core[1]


def test_truth_file_is_json_lines(tmp_path):
    with emulated_rapl.EmulatedRapl(tmp_path) as rapl:
        time.sleep(0.5)
    with open(rapl.truth_path) as f:
        lines = [json.loads(line) for line in f]
    assert 'model' in lines[0] and 'zones' in lines[0]
    samples = lines[1:]
    assert len(samples) >= 2
    assert [s['t'] for s in samples] == sorted(s['t'] for s in samples)
    last = samples[-1]
    for name in ('package-0', 'package-1', 'dram-0', 'dram-1'):
        assert last['energy_uj'][name] == pytest.approx(
            last['idle_uj'][name] + last['dynamic_uj'][name])
    summary = rapl.write_summary(str(tmp_path / 'truth.json'))
    with open(summary) as f:
        assert json.load(f)['steps'] == rapl.steps
