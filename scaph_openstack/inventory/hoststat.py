"""Host CPU time from /proc/stat.

Guest time is already counted inside user (and guest_nice inside nice) by
the kernel, so it is not added again. iowait counts as idle.
"""

import dataclasses
import os

USER_HZ = os.sysconf('SC_CLK_TCK') if hasattr(os, 'sysconf') else 100
NS_PER_TICK = 1_000_000_000 // USER_HZ


class HostStatError(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class HostCpuTime:
    busy_ns: int
    idle_ns: int
    cpus: int


def parse_proc_stat(text):
    """HostCpuTime from the text of /proc/stat."""
    total_line, cpus = None, 0
    for line in text.splitlines():
        if line.startswith('cpu '):
            total_line = line
        elif line.startswith('cpu') and line[3:4].isdigit():
            cpus += 1
    if total_line is None:
        raise HostStatError('no aggregate "cpu" line in /proc/stat')
    fields = total_line.split()[1:]
    try:
        values = [int(v) for v in fields]
    except ValueError:
        raise HostStatError('malformed cpu line in /proc/stat: %r'
                            % total_line[:80])
    if len(values) < 4:
        raise HostStatError('too few fields in cpu line: %r' % total_line)
    values += [0] * (8 - len(values))
    user, nice, system, idle, iowait, irq, softirq, steal = values[:8]
    busy = user + nice + system + irq + softirq + steal
    return HostCpuTime(busy_ns=busy * NS_PER_TICK,
                       idle_ns=(idle + iowait) * NS_PER_TICK,
                       cpus=max(cpus, 1))


def read_host_cpu(path='/proc/stat'):
    try:
        with open(path, encoding='ascii') as f:
            return parse_proc_stat(f.read())
    except OSError as exc:
        raise HostStatError('cannot read %s: %s' % (path, exc))
