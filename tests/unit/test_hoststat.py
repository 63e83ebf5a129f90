import pytest

from scaph_openstack.inventory import hoststat

PROC_STAT = """cpu  1000 20 300 5000 100 7 3 0 400 10
cpu0 500 10 150 2500 50 4 2 0 200 5
cpu1 500 10 150 2500 50 3 1 0 200 5
intr 12345
ctxt 999
"""


def test_busy_excludes_guest_time_and_counts_iowait_idle():
    cpu = hoststat.parse_proc_stat(PROC_STAT)
    tick = hoststat.NS_PER_TICK
    # user+nice+system+irq+softirq+steal; guest (400) is inside user.
    assert cpu.busy_ns == (1000 + 20 + 300 + 7 + 3 + 0) * tick
    assert cpu.idle_ns == (5000 + 100) * tick
    assert cpu.cpus == 2


def test_old_kernels_with_four_fields():
    cpu = hoststat.parse_proc_stat('cpu 1 2 3 4\ncpu0 1 2 3 4\n')
    assert cpu.busy_ns == 6 * hoststat.NS_PER_TICK


@pytest.mark.parametrize('text', ['', 'intr 1\n', 'cpu a b c d\n',
                                  'cpu 1 2\n'])
def test_garbage_is_a_clear_error(text):
    with pytest.raises(hoststat.HostStatError):
        hoststat.parse_proc_stat(text)


def test_missing_file(tmp_path):
    with pytest.raises(hoststat.HostStatError, match='cannot read'):
        hoststat.read_host_cpu(str(tmp_path / 'stat'))


def test_reads_the_real_proc_stat():
    assert hoststat.read_host_cpu().cpus >= 1
