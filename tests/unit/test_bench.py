"""Keeps the benchmark (tools/bench.py) from rotting.

The stand-in must keep looking like libvirt to the real inventory, and
``python -m tools.bench`` must still run end to end at a tiny scale.
"""

import os
import subprocess
import sys

import pytest

from scaph_openstack.inventory import libvirt as inventory_libvirt
from tools import bench
from tools.bench_support import standin

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


@pytest.fixture(scope='module')
def recording():
    return standin.load()


def test_recording_is_a_real_cpu_reply(recording):
    stats = recording['all_domain_stats']
    assert isinstance(stats['cpu.time'], int)
    assert stats['vcpu.current'] == 1
    assert 'vcpu.0.time' in stats
    assert recording['libvirt_daemon_version']
    assert 'nova:instance' in recording['xml']


def test_standin_keeps_keys_and_types(recording):
    conn = standin.StandInConnection(recording, 4)
    replies = conn.getAllDomainStats(standin.STATS, standin.FLAGS)
    assert len(replies) == 4
    one_vcpu = replies[0][1]
    assert list(one_vcpu) == list(recording['all_domain_stats'])
    assert {k: type(v) for k, v in one_vcpu.items()} == {
        k: type(v) for k, v in recording['all_domain_stats'].items()}
    four_vcpus = replies[3][1]
    assert four_vcpus['vcpu.current'] == 4
    assert 'vcpu.3.time' in four_vcpus
    # Fresh dicts every call, like libvirt-python.
    assert replies[0][1] is not conn.getAllDomainStats(
        standin.STATS, standin.FLAGS)[0][1]


def test_real_inventory_runs_on_the_standin(recording):
    conn = standin.StandInConnection(recording, 5)
    inventory = inventory_libvirt.LibvirtInventory()
    inventory._conn = conn
    first = {i.uuid: i for i in inventory.list_instances()}
    conn.advance(2.0)
    second = {i.uuid: i for i in inventory.list_instances()}
    assert len(first) == 5
    assert set(first) == {standin.instance_uuid(i) for i in range(5)}
    for uuid, usage in second.items():
        assert usage.identity.nova
        assert usage.identity.project_id
        assert usage.identity.name.startswith('instance-')
        assert usage.cpu_time_ns > first[uuid].cpu_time_ns
        assert usage.vcpus == usage.identity.vcpus


def test_amortised_ticks_cover_whole_periods():
    args = bench.parse_args(['--ticks', '20'])
    assert bench.write_period(2.0) == 5
    assert bench.amortised_ticks(args) == 30
    quick = bench.parse_args(['--ticks', '2', '--quick', '--sizes', '3'])
    assert bench.amortised_ticks(quick) == 5
    assert quick.real_guests == 0 and quick.sizes == [3]


def test_bench_runs_at_tiny_scale(tmp_path):
    output = tmp_path / 'bench.md'
    res = subprocess.run(
        [sys.executable, '-m', 'tools.bench', '--sizes', '3', '--ticks',
         '2', '--quick', '--output', str(output)],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert '### Agent: CPU time per tick' in res.stdout
    assert '| 3 (stand-in) | every tick (median) |' in res.stdout
    assert '### Floor' in res.stdout
    assert '### Targets' in res.stdout
    assert output.read_text().strip() == res.stdout.strip()
