import xml.etree.ElementTree as ET

import pytest

from scaph_openstack.inventory import hoststat
from scaph_openstack.inventory import topology


def test_parse_cpuset_follows_libvirt_syntax():
    assert topology.parse_cpuset('0-3,^2,8') == {0, 1, 3, 8}
    assert topology.parse_cpuset('5') == {5}
    for bad in ('', '3-1', 'a', '^1'):
        with pytest.raises(ValueError):
            topology.parse_cpuset(bad)


def test_read_topology(tmp_path):
    for cpu, socket in ((0, 0), (1, 0), (2, 1), (3, 1)):
        d = tmp_path / ('cpu%d' % cpu) / 'topology'
        d.mkdir(parents=True)
        (d / 'physical_package_id').write_text('%d\n' % socket)
    (tmp_path / 'cpu4').mkdir()          # offline: no topology directory
    (tmp_path / 'cpufreq').mkdir()
    assert topology.read_topology(str(tmp_path)) == {0: 0, 1: 0, 2: 1, 3: 1}
    assert topology.read_topology(str(tmp_path / 'missing')) == {}
    assert topology.read_topology() != {}    # this machine's own


def test_socket_of():
    topo = {0: 0, 1: 0, 2: 1, 3: 1}
    assert topology.socket_of(frozenset({2, 3}), topo) == 1
    assert topology.socket_of(frozenset({1, 2}), topo) is None
    assert topology.socket_of(None, topo) is None
    assert topology.socket_of(frozenset({9}), topo) is None


def cpus(xml):
    return topology.allowed_cpus_from_xml(ET.fromstring(xml))


def test_nova_dedicated_pinning():
    # What Nova writes for hw:cpu_policy=dedicated on one NUMA node.
    assert cpus("""<domain><vcpu placement='static'>2</vcpu><cputune>
        <shares>2048</shares>
        <vcpupin vcpu='0' cpuset='4'/><vcpupin vcpu='1' cpuset='5'/>
        <emulatorpin cpuset='4-5'/></cputune></domain>""") == {4, 5}


def test_vcpu_cpuset_covers_unpinned_threads():
    assert cpus("<domain><vcpu cpuset='0-1'>4</vcpu></domain>") == {0, 1}
    assert cpus("""<domain><vcpu cpuset='0-3'>2</vcpu><cputune>
        <vcpupin vcpu='0' cpuset='1'/></cputune></domain>""") == {0, 1, 2, 3}


def test_anything_unpinned_means_anywhere():
    assert cpus('<domain><vcpu>2</vcpu></domain>') is None
    assert cpus("""<domain><vcpu>2</vcpu><cputune>
        <vcpupin vcpu='0' cpuset='1'/><vcpupin vcpu='1' cpuset='1'/>
        </cputune></domain>""") is None        # the emulator is not
    assert cpus("<domain><vcpu placement='auto'>2</vcpu></domain>") is None
    assert cpus("<domain><vcpu cpuset='x'>2</vcpu></domain>") is None


def test_per_cpu_busy_time():
    cpu = hoststat.parse_proc_stat(
        'cpu  30 0 10 100 5 0 0 0\ncpu0 20 0 5 50 5 0 0 0\n'
        'cpu1 10 0 5 50 0 0 0 0\n')
    tick = hoststat.NS_PER_TICK
    assert cpu.cpu_busy_ns == {0: 25 * tick, 1: 15 * tick}
    assert cpu.busy_ns == 40 * tick and cpu.cpus == 2


TOPO = {0: 0, 1: 0, 2: 1, 3: 1}


def pins(xml):
    return topology.pins_from_xml(ET.fromstring(xml))


SPANNING = pins("""<domain><vcpu>2</vcpu><cputune>
    <vcpupin vcpu='0' cpuset='0-1'/><vcpupin vcpu='1' cpuset='2-3'/>
    <emulatorpin cpuset='1'/></cputune></domain>""")


def test_a_guest_spanning_sockets_is_charged_per_vcpu():
    assert SPANNING.allowed == {0, 1, 2, 3}
    # 1.0 s in all: vCPU 0 0.6 s, vCPU 1 0.3 s, the emulator the rest.
    assert topology.socket_cpu_ns(10 ** 9, SPANNING,
                                  {0: 6 * 10 ** 8, 1: 3 * 10 ** 8},
                                  TOPO) == {0: 7 * 10 ** 8, 1: 3 * 10 ** 8}


def test_vcpu_times_above_the_total_are_scaled_down():
    assert topology.socket_cpu_ns(900, SPANNING, {0: 600, 1: 600},
                                  TOPO) == {0: 450, 1: 450}
    assert topology.socket_cpu_ns(1000, SPANNING, {0: 700, 1: 600},
                                  TOPO) == {0: 539, 1: 461}


def test_unknown_placement_is_left_to_the_caller():
    assert topology.socket_cpu_ns(100, None, None, TOPO) == {}
    assert topology.socket_cpu_ns(100, SPANNING, None, TOPO) == {}
    assert topology.socket_cpu_ns(100, SPANNING, {0: 10, 1: 10}, {}) == {}
    floating_vcpu = pins("""<domain><vcpu>2</vcpu><cputune>
        <vcpupin vcpu='0' cpuset='0'/><emulatorpin cpuset='0'/></cputune>
        </domain>""")
    assert topology.socket_cpu_ns(100, floating_vcpu, {0: 10, 1: 10},
                                  TOPO) == {}
    one_socket = pins("<domain><vcpu cpuset='2-3'>4</vcpu></domain>")
    assert topology.socket_cpu_ns(100, one_socket, None, TOPO) == {1: 100}
