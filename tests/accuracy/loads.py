"""Host-side noise: a process outside any guest with a varying load.

The agent learns each socket's idle power from how power moves with
utilisation, so every scenario needs natural variation in each socket's
utilisation that does not come from an idle period. ``HostNoise`` runs
a separate Python process pinned to one CPU (os.sched_setaffinity) that
spins for ``duty`` of every ``period_s`` and sleeps the rest; the duty
changes every ``hold_s`` seconds through ``duties`` (cycled).

    with HostNoise(cpu=1, duties=varying(0.1, 0.7, seed=3)):
        ...

Run on its own: ``python -m tests.accuracy.loads --cpu 1 --duties
0.2,0.6 --hold 10``.
"""

import argparse
import os
import random
import signal
import subprocess
import sys
import time

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__),
                                         '..', '..'))


def varying(lo, hi, n=16, seed=0):
    """``n`` duties in [lo, hi], pseudo-random but reproducible, with no
    two neighbours closer than a tenth of the range."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        d = round(rng.uniform(lo, hi), 3)
        if not out or abs(d - out[-1]) >= (hi - lo) / 10:
            out.append(d)
    return out


def proc_cpu_ns(pid):
    """utime + stime of a process (its threads together), in ns; None
    when it is gone."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            fields = f.read().rsplit(')', 1)[1].split()
    except OSError:
        return None
    ticks = int(fields[11]) + int(fields[12])
    return ticks * (1_000_000_000 // os.sysconf('SC_CLK_TCK'))


class HostNoise:
    """A pinned busy/sleep process whose duty cycle changes; a context
    manager. ``cpu`` None leaves it unpinned."""

    def __init__(self, cpu=None, duties=(0.3, 0.6), hold_s=15.0,
                 period_s=0.1, nice=0):
        self.cpu = cpu
        self.duties = [float(d) for d in duties]
        self.hold_s = hold_s
        self.period_s = period_s
        self.nice = nice
        self.proc = None

    def argv(self):
        argv = [sys.executable, '-m', 'tests.accuracy.loads',
                '--duties', ','.join('%g' % d for d in self.duties),
                '--hold', str(self.hold_s), '--period', str(self.period_s)]
        if self.cpu is not None:
            argv += ['--cpu', str(self.cpu)]
        return argv

    def start(self):
        self.proc = subprocess.Popen(
            self.argv(), cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        if self.nice:
            os.setpriority(os.PRIO_PROCESS, self.proc.pid, self.nice)
        return self

    def cpu_ns(self):
        return proc_cpu_ns(self.proc.pid) if self.proc else None

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False


def run(duties, hold_s, period_s, cpu=None):
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    start = time.monotonic()
    while True:
        now = time.monotonic()
        duty = duties[int((now - start) // hold_s) % len(duties)]
        t0 = now
        busy_until = t0 + duty * period_s
        while time.monotonic() < busy_until:
            pass
        rest = t0 + period_s - time.monotonic()
        if rest > 0:
            time.sleep(rest)


def main(argv=None):
    p = argparse.ArgumentParser(prog='python -m tests.accuracy.loads')
    p.add_argument('--cpu', type=int, default=None)
    p.add_argument('--duties', default='0.3,0.6')
    p.add_argument('--hold', type=float, default=15.0)
    p.add_argument('--period', type=float, default=0.1)
    a = p.parse_args(argv)
    run([float(d) for d in a.duties.split(',')], a.hold, a.period, a.cpu)


if __name__ == '__main__':
    main()
