"""Keeps the benchmark (tools/bench.py) from rotting.

The stand-in must keep looking like libvirt to the real inventory, and
``python -m tools.bench`` must still run end to end at a tiny scale.
"""

import os
import subprocess
import sys

import libvirt
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


def test_standin_serves_the_groups_asked(recording):
    conn = standin.StandInConnection(recording, 2)
    state_cpu = libvirt.VIR_DOMAIN_STATS_STATE | \
        libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
    stats = conn.getAllDomainStats(
        state_cpu, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT)[0][1]
    assert list(stats) == [k for k in recording['all_domain_stats']
                           if k.startswith(('state.', 'cpu.'))]
    # 0: every group, in the recorded all-groups reply's order.
    dom = conn.lookupByUUIDString(standin.instance_uuid(0))
    everything = conn.domainListGetStats([dom], 0)[0][1]
    assert list(everything) == list(recording['domain_list_stats'])
    conn.advance(2.0)
    moved = conn.getAllDomainStats(state_cpu)[0][1]
    assert moved['cpu.time'] > stats['cpu.time']
    assert conn.domainListGetStats([dom], state_cpu)[0][1] == moved
    # As libvirt: no state filter with a domain list, no unknown flag.
    with pytest.raises(libvirt.libvirtError):
        conn.domainListGetStats(
            [dom], 0, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_RUNNING)
    with pytest.raises(libvirt.libvirtError):
        conn.getAllDomainStats(0, 1 << 20)


def test_standin_domains_in_every_state(recording):
    conn = standin.StandInConnection(
        recording, 4, {1: standin.STATE_PAUSED, 2: standin.STATE_SHUTOFF})
    stats = {d.UUIDString(): (d, s) for d, s in conn.getAllDomainStats(
        standin.STATS, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT)}
    assert len(stats) == 4
    paused, shut = (stats[standin.instance_uuid(i)] for i in (1, 2))
    assert paused[1]['state.state'] == libvirt.VIR_DOMAIN_PAUSED
    assert 'cpu.time' in paused[1] and paused[0].ID() > 0
    assert shut[1]['state.state'] == libvirt.VIR_DOMAIN_SHUTOFF
    assert not any(k.startswith('cpu.') for k in shut[1])
    assert shut[1]['vcpu.current'] == 2     # flavour m1.medium
    assert shut[0].ID() == -1 and not shut[0].isActive()
    assert shut[0].XMLDesc(0).startswith("<domain type='qemu'>")
    with pytest.raises(libvirt.libvirtError) as err:
        shut[0].vcpus()
    assert err.value.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID
    # State filters, as libvirt applies them.
    running = conn.getAllDomainStats(
        0, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_RUNNING)
    assert len(running) == 2
    inactive = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_INACTIVE)
    assert [d.UUIDString() for d in inactive] == [standin.instance_uuid(2)]
    # Paused counters stand still; started again, a new domain ID.
    conn.advance(2.0)
    assert conn.lookupByUUIDString(standin.instance_uuid(1)).info()[4] == \
        paused[0].info()[4]
    conn.set_state(2, standin.STATE_RUNNING)
    again = conn.lookupByUUIDString(standin.instance_uuid(2))
    assert again.ID() > 4 and again.isActive()
    assert again.XMLDesc(0).startswith(
        "<domain type='qemu' id='%d'>" % again.ID())


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


def test_real_inventory_sees_stopped_standin_domains(recording):
    conn = standin.StandInConnection(recording, 3,
                                     {1: standin.STATE_SHUTOFF})
    inventory = inventory_libvirt.LibvirtInventory()
    inventory._conn = conn
    listed = {i.uuid: i for i in inventory.list_instances()}
    states = {uuid: getattr(i, 'state', None) for uuid, i in listed.items()}
    if states.get(standin.instance_uuid(1)) is None:
        pytest.skip('this inventory lists running domains only')
    assert states[standin.instance_uuid(1)] == 'shutoff'
    assert states[standin.instance_uuid(0)] == 'running'
    conn.set_state(1, standin.STATE_RUNNING)
    conn.advance(2.0)
    again = {i.uuid: i for i in inventory.list_instances()}
    assert again[standin.instance_uuid(1)].state == 'running'
    assert again[standin.instance_uuid(1)].cpu_time_ns > 0


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
    assert '| 3 (stand-in) | every tick (median; 2 of 2 publish) |' in \
        res.stdout
    assert '| 3 (stand-in) | min_interval 10 s (mean; 1 of 5 ticks ' \
        'publish) |' in res.stdout
    assert '### Floor' in res.stdout
    assert '### Targets' in res.stdout
    assert output.read_text().strip() == res.stdout.strip()
