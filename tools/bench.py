"""Benchmark of the scaph-openstack agent and its Ceilometer pollsters.

    python -m tools.bench [--sizes 10,100,1000] [--ticks 20]
                          [--real-guests 2] [--output FILE] [--quick]

(``tox -e bench -- ARGS``). Prints markdown: agent CPU time per tick and
per instance, split by stage, at each scale, against the floor of system
calls a tick cannot avoid, with peak RSS; then the cost of one polling
cycle of our four Ceilometer meters against Ceilometer's own ``cpu``
pollster for the same instances. doc/performance.md explains what is
measured and keeps the latest results.

Every scale runs in a fresh process (tools/bench_support/agent_worker.py
and ceilometer_worker.py), so peak RSS is that scale's own.
"""

import argparse
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time

from tools.bench_support import fixtures
from tools.bench_support import report
from tools.bench_support import standin

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SIZES = (10, 100, 1000)
ORPHAN_SCAN_S = 60.0   # scaph_openstack.publishers.share
# [snapshot], [share] and [prometheus] min_interval default: the ticker
# persists the ledger and publishes every 10 s, ticks every 2 s.
DEFAULT_MIN_INTERVAL = 10.0
WORKER_TIMEOUT_S = 600


class WorkerError(RuntimeError):
    pass


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog='python -m tools.bench',
        description='CPU time per tick and per instance of the '
        'scaph-openstack agent, its floor, peak RSS, and the Ceilometer '
        'polling cycle against the cpu pollster. Markdown on stdout.')
    p.add_argument('--sizes', nargs='+', default=None,
                   help='instance counts (stand-in), "10,100,1000" or '
                   '"10 100 1000" (default %s)'
                   % ','.join(map(str, DEFAULT_SIZES)))
    p.add_argument('--ticks', type=int, default=20,
                   help='measured ticks (and polling cycles) per scale, '
                   'after the warm-up (default 20)')
    p.add_argument('--warmup', type=int, default=2,
                   help='ticks run before measuring (default 2; the first '
                   'is the baseline tick)')
    p.add_argument('--interval', type=float, default=2.0,
                   help='[agent] interval the fake clock advances per '
                   'tick (default 2.0 s, the agent default)')
    p.add_argument('--real-guests', type=int, default=2,
                   help='real TCG guests to boot for the honesty row '
                   '(default 2; 0 to skip)')
    p.add_argument('--no-ceilometer', action='store_true',
                   help='skip the Ceilometer comparison')
    p.add_argument('--no-mount', action='store_true',
                   help='do not mount a tmpfs; use /dev/shm')
    p.add_argument('--recording', default=standin.FIXTURE,
                   help='recorded libvirt replies used when no real guest '
                   'can be recorded (default %(default)s)')
    p.add_argument('--record-fixture', action='store_true',
                   help='also save the replies recorded from a real guest '
                   'as the fixture file')
    p.add_argument('--quick', action='store_true',
                   help='smoke test: no real guests, no mount, one warm-up '
                   'tick, short amortised runs')
    p.add_argument('--output', help='also write the markdown to this file')
    args = p.parse_args(argv)
    raw = args.sizes or [str(n) for n in DEFAULT_SIZES]
    args.sizes = sorted({int(x) for item in raw for x in item.split(',')
                         if x.strip()})
    if any(n < 1 for n in args.sizes) or args.ticks < 1:
        p.error('sizes and ticks must be positive')
    if args.quick:
        args.real_guests = 0
        args.no_mount = True
        args.warmup = min(args.warmup, 1)
    args.warmup = max(args.warmup, 1)
    return args


def write_period(interval):
    """Ticks between two publications (ledger save, report, snapshot,
    share trees) at the default min_interval."""
    return max(1, math.ceil(DEFAULT_MIN_INTERVAL / interval - 1e-9))


def amortised_ticks(args):
    """Measured ticks of the default-config rows: whole periods of the
    publications and (unless --quick) of the share's orphan scan, so
    the mean per tick has each at its real frequency."""
    period = write_period(args.interval)
    if not args.quick:
        scan = max(1, math.ceil(ORPHAN_SCAN_S / args.interval - 1e-9))
        period = period * scan // math.gcd(period, scan)
    return max(period, math.ceil(args.ticks / period) * period)


def run_worker(module, params, scratch_dir):
    tmp = tempfile.mkdtemp(prefix='worker-', dir=scratch_dir)
    pfile, rfile = os.path.join(tmp, 'params.json'), os.path.join(
        tmp, 'result.json')
    with open(pfile, 'w') as f:
        json.dump(params, f)
    env = dict(os.environ, PYTHONWARNINGS='ignore')
    res = subprocess.run([sys.executable, '-m', module, pfile, rfile],
                         cwd=REPO, capture_output=True, text=True, env=env,
                         timeout=WORKER_TIMEOUT_S)
    if res.returncode != 0:
        raise WorkerError('%s %s failed (rc=%d):\n%s' % (
            module, json.dumps({k: params[k] for k in ('n', 'mode')}),
            res.returncode, res.stderr[-3000:]))
    with open(rfile) as f:
        return json.load(f)


class Bench:

    def __init__(self, args):
        self.args = args
        self.notes = []
        self.agent_rows = []
        self.poll_rows = []
        self.recording_path = args.recording
        self.recording_origin = None
        self.real_n = None
        self.rpc = None
        self.standin_cost = None
        self.scratch = None
        self.ceilometer = not args.no_ceilometer and self._has_ceilometer()

    def _has_ceilometer(self):
        # Not imported here: this process stays small, the workers load it.
        for module in ('ceilometer.compute.pollsters.instance_stats',
                       'scaph_openstack.ceilometer.pollsters'):
            try:
                found = importlib.util.find_spec(module)
            except ImportError:
                found = None
            if found is None:
                self.notes.append('Ceilometer comparison skipped: %s is '
                                  'not installed.' % module)
                return False
        return True

    def log(self, message):
        print('[bench %s] %s' % (time.strftime('%H:%M:%S'), message),
              file=sys.stderr, flush=True)

    # -- workers --------------------------------------------------------
    def _dirs(self, tag):
        base = self.scratch.subdir(tag)
        state = os.path.join(self.scratch.state_dir, tag)
        os.makedirs(state, exist_ok=True)
        return base, state

    def agent(self, n, mode, min_interval, ticks):
        tag = 'agent-%s-%d-%g' % (mode, n, min_interval)
        base, state = self._dirs(tag)
        params = {
            'n': n, 'mode': mode, 'interval': self.args.interval,
            'min_interval': min_interval, 'warmup': self.args.warmup,
            'ticks': ticks, 'floor_ticks': self.args.ticks,
            'recording': self.recording_path,
            'powercap': os.path.join(base, 'powercap'),
            'snapshot': os.path.join(base, 'run', 'snapshot.json'),
            'shares': os.path.join(base, 'shares'),
            'floor_dir': os.path.join(base, 'floor'),
            'state_dir': state}
        self.log('agent %s n=%s min_interval=%g (%d ticks)'
                 % (mode, n if mode == 'standin' else 'real', min_interval,
                    ticks))
        return run_worker('tools.bench_support.agent_worker', params,
                          self.scratch.state_dir)

    def poll(self, n, mode):
        tag = 'ceilometer-%s-%d' % (mode, n)
        base, state = self._dirs(tag)
        params = {
            'n': n, 'mode': mode, 'interval': self.args.interval,
            'warmup': self.args.warmup, 'cycles': self.args.ticks,
            'recording': self.recording_path,
            'powercap': os.path.join(base, 'powercap'),
            'snapshot': os.path.join(base, 'snapshot.json'),
            'ledger': os.path.join(state, 'ledger.json')}
        self.log('ceilometer %s n=%s (%d cycles)'
                 % (mode, n if mode == 'standin' else 'real',
                    self.args.ticks))
        return run_worker('tools.bench_support.ceilometer_worker', params,
                          self.scratch.state_dir)

    def add_agent(self, result, label, amortised):
        self.agent_rows.append(report.AgentRow(result, label, amortised))

    # -- the run --------------------------------------------------------
    def real_guests(self):
        from tools.bench_support import realguests
        count = self.args.real_guests
        self.log('booting %d real TCG guest(s)' % count)
        try:
            with realguests.RealGuests(count) as guests:
                recording = guests.record()
                path = os.path.join(self.scratch.state_dir,
                                    'recorded_libvirt.json')
                standin.save(recording, path)
                self.recording_path = path
                self.recording_origin = (
                    'recorded at bench start from %s (libvirt %s)' % (
                        recording['source'],
                        recording['libvirt_daemon_version']))
                if self.args.record_fixture:
                    standin.save(recording, standin.FIXTURE)
                self.log('calibrating the real bulk stats RPC')
                self.rpc = guests.calibrate_rpc()
                result = self.agent(0, 'real', 0.0, self.args.ticks)
                self.real_n = result['n']
                if self.real_n != count:
                    states = result.get('states') or {}
                    self.notes.append(
                        'The real-guest rows see %d defined domains: the %d '
                        'booted by the bench and %d other (another '
                        'process\'s guests on this shared host); at the '
                        'end: %s.' % (
                            self.real_n, count, self.real_n - count,
                            ', '.join('%d %s' % (v, k) for k, v in
                                      sorted(states.items())) or 'n/a'))
                self.add_agent(result, '%d (real guests)' % result['n'],
                               False)
                if self.ceilometer:
                    self.poll_rows.append(report.PollRow(
                        self.poll(0, 'real'),
                        '%d (real guests)' % result['n']))
        except realguests.Unavailable as exc:
            self.notes.append('No real-guest row: %s.' % exc)
        except WorkerError as exc:
            # A shared host can lose its guests or libvirtd mid-run: keep
            # the stand-in rows, say why the real one is missing.
            self.log(str(exc))
            self.notes.append('The real-guest run failed: %s' % str(
                exc).splitlines()[-1])

    def run(self):
        args = self.args
        self.facts = fixtures.host_facts()
        self.scratch = fixtures.Scratch(mount=not args.no_mount)
        try:
            if args.real_guests > 0:
                self.real_guests()
            if self.recording_origin is None:
                rec = standin.load(self.recording_path)
                self.recording_origin = (
                    'the fixture %s, recorded %s from %s (libvirt %s)' % (
                        os.path.relpath(self.recording_path, REPO),
                        rec['recorded_at'], rec['source'],
                        rec['libvirt_daemon_version']))
            from scaph_openstack.inventory import libvirt as inventory
            self.standin_cost = standin.calibrate(
                standin.load(self.recording_path), inventory.STATS,
                inventory.FLAGS)
            sizes = list(args.sizes)
            if self.real_n and self.real_n not in sizes:
                sizes.insert(0, self.real_n)
            for n in sizes:
                label = '%d (stand-in)' % n
                self.add_agent(self.agent(n, 'standin', 0.0, args.ticks),
                               label, False)
                self.add_agent(self.agent(n, 'standin',
                                          DEFAULT_MIN_INTERVAL,
                                          amortised_ticks(args)),
                               label, True)
                if self.ceilometer:
                    self.poll_rows.append(report.PollRow(
                        self.poll(n, 'standin'), label))
            self.tmpfs = self.scratch.describe()
            self.state_fs = self.scratch.state_fstype
        finally:
            self.scratch.close()

    # -- the report -----------------------------------------------------
    def command(self):
        return 'python -m tools.bench ' + ' '.join(sys.argv[1:])

    def header(self):
        f, a = self.facts, self.args
        lines = [
            '## scaph-openstack benchmark',
            '',
            '- host: %s, %d cores, %d GB, %s, kernel %s; Python %s, '
            'libvirt %s (libvirt-python %s), Ceilometer %s' % (
                f['cpu'], f['cores'], f['memory_gb'], f['os'], f['kernel'],
                f['python'], f['libvirt_library'], f['libvirt_python'],
                f['ceilometer']),
            '- date: %s; load average at start: %s (the host is shared)'
            % (f['date'], f['loadavg']),
            '- command: `%s`' % self.command().strip(),
            '- real: the agent as `scaph-openstack-agent` builds it '
            '(`service.build_ticker`, stevedore plugins) and its '
            '`Ticker.tick()`; `LibvirtInventory` (identity cache, Nova XML '
            'parsing, its deadline thread), `RaplSource`, `cputime`, the '
            'ledger saved with fsync to a directory on %s before each '
            'publication, the `Report`, the `snapshot` and `share` '
            'publishers writing to %s; Ceilometer\'s `CPUPollster`, '
            '`LibvirtInspector` and `local_instances` discovery, and our '
            'discovery and pollsters' % (self.state_fs, self.tmpfs),
            '- stand-ins: libvirt connection = recorded replies served for '
            'N generated domains (tools/bench_support/standin.py), %s; '
            'energy source = fixture RAPL (powercap tree of two Intel '
            'sockets with DRAM, advanced by the bench); monotonic clock = '
            'fake, advanced by %g s per tick while ticks run back to back'
            % (self.recording_origin, a.interval),
            '- CPU time of the agent process (`time.process_time_ns`, all '
            'its threads) around each stage; every tick (min_interval 0 '
            'for every publisher: each tick saves the ledger and '
            'publishes): medians of %d ticks after %d warm-up; '
            'min_interval %g s (the default: a tick every %g s, a '
            'publication every %d ticks): means over %d ticks (whole '
            'publication and orphan-scan periods); Ceilometer: medians of '
            '%d polling cycles' % (
                a.ticks, a.warmup, DEFAULT_MIN_INTERVAL, a.interval,
                write_period(a.interval), amortised_ticks(a), a.ticks),
        ]
        return '\n'.join(lines)

    def derived_notes(self):
        notes = []
        by = {(r.n, r.amortised, 'real' in r.label): r
              for r in self.agent_rows}
        for row in self.agent_rows:
            if row.amortised or 'real' in row.label:
                continue
            notes.append(
                '%s: first (baseline) tick %s µs, of which inventory %s µs '
                '(Nova XML parsed once per domain) and share %s µs '
                '(directories created); peak RSS %s MB (%s MB after '
                'imports, %s MB of it the stand-in\'s data; %s MB after '
                'the ticks; peak reached at tick %s of the every-tick '
                'run, 0 being the baseline tick).' % (
                    row.label, report._fmt(row.first['total']),
                    report._fmt(row.first['inventory']),
                    report._fmt(row.first['share']),
                    report._fmt(row.rss, 1), report._fmt(row.import_mb, 1),
                    report._fmt(row.standin_mb, 1),
                    report._fmt(row.rss_after, 1), row.peak_tick))
        if self.real_n:
            real = by.get((self.real_n, False, True))
            fake = by.get((self.real_n, False, False))
            if real and fake:
                notes.append(
                    'Honesty check at N=%d: inventory %s µs/tick with '
                    'real guests vs %s µs/tick with the stand-in; whole '
                    'tick %s vs %s µs/instance. libvirtd spent %s µs of '
                    'its own CPU per tick serving the real bulk call '
                    '(not in the agent\'s numbers); the difference is the '
                    'RPC, priced per domain below.' % (
                        self.real_n,
                        report._fmt(real.stages['inventory']),
                        report._fmt(fake.stages['inventory']),
                        report._fmt(real.per_instance, 1),
                        report._fmt(fake.per_instance, 1),
                        report._fmt(real.stages['libvirtd'])))
        for row in self.agent_rows:
            if row.n not in (report.TARGET_SCALE, max(
                    r.n for r in self.agent_rows)) or 'real' in row.label:
                continue
            top = sorted(report.STAGE_COLUMNS,
                         key=lambda k: -row.stages[k])[:3]
            kinds = []
            for published, what in ((True, 'publishing'),
                                    (False, 'other')):
                mean = row.by_kind.get(published)
                if mean:
                    kinds.append('%d %s ticks %s µs each (%s '
                                 'µs/instance)' % (
                                     mean[1], what, report._fmt(mean[0]),
                                     report._fmt(mean[0] / row.n, 1)))
            notes.append(
                '%s, %s: %s µs/instance (wall %s ms per tick); largest '
                'stages %s; %s; garbage collector %s µs/tick on average, '
                '%s %% of the mean tick (collections per tick: gen0 %s, '
                'gen1 %s, gen2 %s; %s objects tracked, %s frozen); the '
                'floor alone is %s µs/instance.' % (
                    row.label, row.mode_cell, report._fmt(
                        row.per_instance, 1),
                    report._fmt(row.stages['wall'] / 1000, 1),
                    ', '.join('%s %s µs/inst' % (
                        k, report._fmt(row.stages[k] / row.n, 1))
                        for k in top),
                    ' and '.join(kinds) if kinds else 'no tick',
                    report._fmt(row.gc_us),
                    report._fmt(100 * row.gc_us / row.mean_total
                                if row.mean_total else None),
                    *(report._fmt(x, 2) for x in row.gc_per_tick),
                    report._fmt(row.gc_tracked),
                    report._fmt(row.gc_frozen),
                    report._fmt(row.floor / row.n, 1)))
        return notes

    def _row(self, n, amortised, real=False):
        for row in self.agent_rows:
            if row.n == n and row.amortised == amortised and \
                    ('real' in row.label) == real:
                return row
        return None

    def _poll_row(self, n, real=False):
        for row in self.poll_rows:
            # The real-guest run has one row, whatever the domains it saw
            # (another process's guests may come and go meanwhile).
            if row.real == real and (real or row.n == n):
                return row
        return None

    def rpc_delta(self):
        """Extra agent CPU per instance a real libvirt RPC adds over the
        stand-in (µs), or None without a calibration."""
        if not self.rpc or not self.standin_cost:
            return None
        return (self.rpc['client_per_domain_us']
                - self.standin_cost['per_domain_us'])

    def targets(self):
        """Rows of the targets table: (target, measured, verdict, estimate
        with a real libvirt RPC)."""
        n, fmt = report.TARGET_SCALE, report._fmt
        delta = self.rpc_delta()
        out = []
        for amortised, how in ((True, 'default min_interval %g s: a '
                                'publication every %d ticks' % (
                                    DEFAULT_MIN_INTERVAL,
                                    write_period(self.args.interval))),
                               (False, 'min_interval 0: every tick '
                                'saves the ledger and publishes')):
            row = self._row(n, amortised)
            if row is None:
                out.append(('agent at %d instances (%s)' % (n, how),
                            'not run', 'n/a', 'n/a'))
                continue
            v = row.verdicts()
            est_us = est_ratio = 'n/a'
            if delta is not None:
                est_us = '%s µs (%s)' % (
                    fmt(row.per_instance + delta, 1),
                    report._verdict(row.per_instance + delta
                                    <= report.TARGET_US_PER_INSTANCE))
                ratio = (row.total + delta * n) / (row.floor + delta * n)
                est_ratio = '%sx (%s)' % (fmt(ratio, 2), report._verdict(
                    ratio <= report.TARGET_FLOOR_RATIO))
            if v['us'] is not None:
                out.append(('agent CPU ≤ %g µs/instance/tick at %d (%s)'
                            % (report.TARGET_US_PER_INSTANCE, n, how),
                            '%s µs' % fmt(row.per_instance, 1),
                            report._verdict(v['us']), est_us))
            out.append(('agent ≤ %gx the floor at %d (%s)'
                        % (report.TARGET_FLOOR_RATIO, n, how),
                        '%sx (floor %s µs/instance)' % (
                            fmt(row.ratio, 2), fmt(row.floor / n, 1)),
                        report._verdict(v['floor']), est_ratio))
        rows = [r for r in (self._row(n, False), self._row(n, True)) if r]
        if rows:
            rss = max(r.rss for r in rows)
            standin_mb = max(r.standin_mb or 0 for r in rows)
            out.append(('agent peak RSS ≤ %g MB at %d' % (
                report.TARGET_RSS_MB, n),
                '%s MB (VmHWM; %s MB of it the stand-in\'s data)'
                % (fmt(rss, 1), fmt(standin_mb, 1)),
                report._verdict(rss <= report.TARGET_RSS_MB),
                'same (a real reply is held only during the call)'))
        poll, real = self._poll_row(n), self._poll_row(self.real_n, True) \
            if self.real_n else None
        if poll is not None:
            estimate = 'n/a'
            if real is not None and real.cpu_samples:
                per_instance = real.cpu / real.cpu_samples
                ratio = poll.ours / (per_instance * n)
                estimate = '%sx (%s): `cpu` at %s µs/instance as measured ' \
                    'with real guests' % (fmt(ratio, 2), report._verdict(
                        ratio <= report.TARGET_POLL_RATIO),
                        fmt(per_instance))
            out.append(('our polling cycle ≤ %gx the `cpu` pollster\'s at '
                        '%d' % (report.TARGET_POLL_RATIO, n),
                        '%sx' % fmt(poll.ratio, 2), poll.target_cell(),
                        estimate))
        elif self.ceilometer:
            out.append(('our polling cycle ≤ %gx the `cpu` pollster\'s at '
                        '%d' % (report.TARGET_POLL_RATIO, n), 'not run',
                        'n/a', 'n/a'))
        return out

    def targets_table(self):
        head = ('| target | measured (stand-in) | PASS/MISS | with the real '
                'libvirt RPC cost (estimate) |')
        lines = [head, report._separator(head)]
        lines += ['| %s | %s | %s | %s |' % t for t in self.targets()]
        return '\n'.join(lines)

    def rpc_note(self):
        if not self.standin_cost:
            return None
        cost = self.standin_cost
        text = ('Bulk stats call, cost per domain in the agent process: the '
                'stand-in %s µs (+%s µs per call)' % (
                    report._fmt(cost['per_domain_us'], 2),
                    report._fmt(cost['fixed_us'], 1)))
        if not self.rpc:
            return text + '; the real RPC was not calibrated (no real ' \
                'guest).'
        rpc = self.rpc
        return text + (
            '; the real RPC to libvirtd %s µs (+%s µs per call), measured '
            'at bench start with domainListGetStats([dom] x %d) on a real '
            'guest. libvirtd itself spent %s µs of CPU and %s µs of wall '
            'time per domain per call (QEMU under TCG), which the agent\'s '
            'CPU time does not include. The estimates above add the '
            'difference, %s µs per instance, to the stand-in rows.' % (
                report._fmt(rpc['client_per_domain_us'], 2),
                report._fmt(rpc['client_fixed_us'], 1), rpc['count'],
                report._fmt(rpc['libvirtd_per_domain_us']),
                report._fmt(rpc['wall_per_domain_us']),
                report._fmt(self.rpc_delta(), 2)))

    def markdown(self):
        parts = [self.header(), '', '### Agent: CPU time per tick', '',
                 report.agent_table(self.agent_rows), '',
                 '### Floor: the system calls a tick cannot avoid', '',
                 report.floor_table(self.agent_rows), '']
        if self.poll_rows:
            parts += ['### Ceilometer: one polling cycle, ours vs the `cpu` '
                      'pollster', '', report.poll_table(self.poll_rows), '']
        parts += ['### Targets', '', self.targets_table(), '']
        notes = self.derived_notes() + [
            n for n in (self.rpc_note(),) if n] + self.notes
        if notes:
            parts += ['### Notes', ''] + ['- ' + n for n in notes] + ['']
        return '\n'.join(parts)


def _terminate(signum, frame):
    raise SystemExit(128 + signum)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _terminate)
    bench = Bench(args)
    started = time.monotonic()
    bench.run()
    text = bench.markdown()
    print(text)
    if args.output:
        with open(args.output, 'w') as f:
            f.write(text + '\n')
    bench.log('done in %.0f s' % (time.monotonic() - started))
    return 0


if __name__ == '__main__':
    sys.exit(main())
