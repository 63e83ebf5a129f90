"""Ground-truth accuracy of the agent's attribution (issue 9).

    python -m tools.accuracy [--full] [--scenarios steady,steps,cross,restart]
                             [--out DIR] [--agent-rev REV]
    python -m tools.accuracy --report DIR

(``tox -e accuracy`` runs ``--full``). Each scenario runs the real agent
with its default attribution configuration against an emulated
two-socket powercap tree whose power follows this host's real per-CPU
load, real TCG guests with known loads and pinned host noise, and prints
a markdown table per scenario: every VM's true and attributed dynamic
energy, the worst error over sliding windows, the idle estimates against
the true idle power, conservation. Exit status 0 when every scenario
meets its targets, 1 otherwise. Needs root, libvirtd and QEMU
(tools/install-deps). doc/accuracy.md explains the method and keeps the
latest tables.

Full: 5-minute windows after 5 minutes, 11 minutes per scenario (about
45 minutes for all four). Short (the default, what tests/accuracy runs):
60 s windows after 120 s, about 3.3 minutes per scenario.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from tests.accuracy import harness
from tests.functional.helpers import libvirtd


def parse_args(argv):
    p = argparse.ArgumentParser(prog='python -m tools.accuracy',
                                description=__doc__.split('\n\n')[1])
    p.add_argument('--full', action='store_true',
                   help='5-minute windows after 5 minutes (11 min each)')
    p.add_argument('--scenarios', default=None,
                   help='comma-separated keys (default: all): %s' % ','.join(
                       s.key for s in harness.scenarios()))
    p.add_argument('--out', default=None,
                   help='directory for truth, snapshots, results and agent '
                        'logs (default: /tmp/scaph-accuracy-<time>)')
    p.add_argument('--agent-rev', default='worktree',
                   help='git revision of scaph_openstack to run, exported so '
                        'that edits in progress do not matter (default: '
                        'the working tree\'s)')
    p.add_argument('--duration', type=float, default=None,
                   help='override: seconds from the agent start to the end')
    p.add_argument('--warmup', type=float, default=None)
    p.add_argument('--window', type=float, default=None)
    p.add_argument('--report', metavar='DIR', default=None,
                   help='run nothing: print the tables of the results saved '
                        'in DIR (by --out or SCAPH_ACCURACY_OUT)')
    return p.parse_args(argv)


def report(directory):
    order = [s.key for s in harness.scenarios()]
    results = []
    for name in sorted(os.listdir(directory)):
        if name.endswith('.result.json'):
            with open(os.path.join(directory, name)) as f:
                results.append(json.load(f))
    results.sort(key=lambda r: order.index(r['scenario'])
                 if r['scenario'] in order else len(order))
    for r in results:
        print(harness.table(r))
    return 0 if results and all(r['pass'] for r in results) else 1


def main(argv=None):
    args = parse_args(argv)
    if args.report:
        return report(args.report)
    reason = libvirtd.unavailable_reason()
    if reason:
        print('cannot run: %s' % reason, file=sys.stderr)
        return 2
    chosen = harness.scenarios(args.full)
    if args.scenarios:
        keys = args.scenarios.split(',')
        unknown = set(keys) - {s.key for s in chosen}
        if unknown:
            print('unknown scenarios: %s' % ', '.join(sorted(unknown)),
                  file=sys.stderr)
            return 2
        chosen = [s for s in chosen if s.key in keys]
    out = args.out or os.path.join(
        tempfile.gettempdir(),
        'scaph-accuracy-' + time.strftime('%Y%m%d-%H%M%S'))
    rev = None
    if args.agent_rev != 'worktree':
        # one commit for every scenario, even if HEAD moves meanwhile
        rev = subprocess.run(['git', 'rev-parse', args.agent_rev],
                             cwd=harness.REPO_ROOT, check=True,
                             capture_output=True, text=True).stdout.strip()
    results = []
    for scn in chosen:
        if args.duration:
            scn.duration_s = args.duration
        if args.warmup is not None:
            scn.warmup_s = args.warmup
        if args.window:
            scn.window_s = args.window
        if scn.restart_at_s is not None and (args.duration or args.warmup):
            scn.restart_at_s = scn.warmup_s + \
                (scn.duration_s - scn.warmup_s) / 3
        t0 = time.time()
        result = harness.run(scn, outdir=out, agent_rev=rev)
        result['wall_s'] = time.time() - t0
        results.append(result)
        print(harness.table(result), flush=True)
    with open(os.path.join(out, 'summary.json'), 'w') as f:
        json.dump(results, f, indent=1)
    ok = all(r['pass'] for r in results)
    print('%s: %d scenario(s), %s; results in %s' % (
        'PASS' if ok else 'MISS', len(results),
        ', '.join('%s %s (%.0f s)' % (r['scenario'],
                                      'PASS' if r['pass'] else 'MISS',
                                      r['wall_s']) for r in results), out))
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
