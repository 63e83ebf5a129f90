"""Host CPU time from /proc/stat, in total and per CPU.

Guest time is already counted inside user (and guest_nice inside nice) by
the kernel, so it is not added again. iowait counts as idle. Per-CPU busy
time is what splits a socket's energy: a package zone's power follows the
load of that socket's CPUs only.
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
    # CPU number -> cumulative busy ns, from the cpuN lines.
    cpu_busy_ns: dict = dataclasses.field(default_factory=dict)


def _busy_idle(line):
    """(busy ticks, idle ticks) of one cpu line."""
    try:
        values = [int(v) for v in line.split()[1:]]
    except ValueError:
        raise HostStatError('malformed cpu line in /proc/stat: %r'
                            % line[:80])
    if len(values) < 4:
        raise HostStatError('too few fields in cpu line: %r' % line)
    values += [0] * (8 - len(values))
    user, nice, system, idle, iowait, irq, softirq, steal = values[:8]
    return user + nice + system + irq + softirq + steal, idle + iowait


def parse_proc_stat(text):
    """HostCpuTime from the text of /proc/stat."""
    total_line, per_cpu = None, {}
    for line in text.splitlines():
        if line.startswith('cpu '):
            total_line = line
        elif line.startswith('cpu') and line[3:4].isdigit():
            label = line.split(None, 1)[0]
            per_cpu[int(label[3:])] = _busy_idle(line)[0] * NS_PER_TICK
    if total_line is None:
        raise HostStatError('no aggregate "cpu" line in /proc/stat')
    busy, idle = _busy_idle(total_line)
    return HostCpuTime(busy_ns=busy * NS_PER_TICK,
                       idle_ns=idle * NS_PER_TICK,
                       cpus=max(len(per_cpu), 1), cpu_busy_ns=per_cpu)


def read_host_cpu(path='/proc/stat'):
    try:
        with open(path, encoding='ascii') as f:
            return parse_proc_stat(f.read())
    except OSError as exc:
        raise HostStatError('cannot read %s: %s' % (path, exc))
