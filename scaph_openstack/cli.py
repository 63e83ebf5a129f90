"""scaph-openstack: operator commands (status; attach/detach/proxmox-args
for hosts without Nova)."""

import argparse
import json
import sys
import time

from scaph_openstack import snapshot

DEFAULT_SNAPSHOT = '/run/scaph-openstack/snapshot.json'


def _fmt_j(uj):
    return '%.1f' % (uj / 1e6)


def status_rows(snap):
    for i in sorted(snap.instances, key=lambda i: -i['power_w']):
        yield (i['display_name'] or i['name'], i['uuid'],
               i['project_name'] or i['project_id'] or '-',
               '%.2f' % i['power_w'] if i['running'] else 'stopped',
               _fmt_j(i['total_uj']), snap.source)


def print_table(rows, header, out):
    rows = [header] + [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
    for row in rows:
        cells = (c.ljust(w) for c, w in zip(row, widths, strict=True))
        out.write('  '.join(cells).rstrip() + '\n')


def cmd_status(args, out=sys.stdout):
    try:
        snap = snapshot.read(args.snapshot)
    except snapshot.SnapshotStale as exc:
        sys.stderr.write('scaph-openstack: %s\n' % exc)
        return 3
    except snapshot.SnapshotError as exc:
        sys.stderr.write('scaph-openstack: %s\n' % exc)
        return 2
    if args.json:
        json.dump(snap.document, out, indent=2)
        out.write('\n')
        return 0
    totals = snap.host_totals
    out.write('host %s  source=%s  model=%s  idle_policy=%s  interval=%.1fs'
              '  age=%.1fs\n' % (snap.host, snap.source, snap.model,
                                 snap.idle_policy, snap.interval_s,
                                 time.time() - snap.time))
    out.write('host power %.2f W, energy %s J (attributed %s J, residual %s '
              'J, idle %s J)\n' % (
                  totals['power_w'], _fmt_j(totals['energy_uj']),
                  _fmt_j(totals['attributed_uj']),
                  _fmt_j(totals['residual_uj']),
                  _fmt_j(totals['unallocated_idle_uj'])))
    if snap.source == 'simulated':
        out.write('NOTE: energy is SIMULATED (no RAPL on this host)\n')
    print_table(status_rows(snap), ('INSTANCE', 'UUID', 'PROJECT', 'WATTS',
                                    'ENERGY_J', 'SOURCE'), out)
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog='scaph-openstack')
    sub = parser.add_subparsers(dest='command', required=True)
    status = sub.add_parser('status', help='per-instance power and energy '
                                           'from the agent snapshot')
    status.add_argument('--json', action='store_true')
    status.add_argument('--snapshot', default=DEFAULT_SNAPSHOT)
    status.set_defaults(func=cmd_status)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == '__main__':
    sys.exit(main())
