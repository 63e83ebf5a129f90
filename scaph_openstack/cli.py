"""scaph-openstack: operator commands (status; attach/detach and
proxmox-share/proxmox-args/proxmox-hook for hosts without Nova;
telemetry-setup for Gnocchi)."""

import argparse
import json
import os
import sys
import time

from scaph_openstack import snapshot

DOMAIN_MESSAGE = {
    True: 'takes effect at the next start of the domain (a running domain '
          'keeps its current devices until then)',
    False: 'nothing to change',
}

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


PROJECT = 'scaph-openstack'
# What the shipped systemd unit gives the agent (etc/systemd/).
DEFAULT_CONFIG_FILE = '/etc/scaph-openstack/scaph-openstack.conf'
DEFAULT_CONFIG_DIR = DEFAULT_CONFIG_FILE + '.d'


def _load_conf(args, config=None):
    """The agent's configuration: ``--config-file``, or else the file the
    agent's systemd unit reads, DEFAULT_CONFIG_FILE (and the
    DEFAULT_CONFIG_DIR beside it), when it exists. A share made with other
    ``work_dir``, ``export_dir`` or ``tag`` than the agent's is one it
    never writes. Not oslo.config's search, which starts in HOME: this
    runs as root, and under sudo HOME can be the invoking user's, whose
    file would choose ``virtiofsd_path``, a binary libvirt runs as root."""
    from scaph_openstack import conf
    config = conf.CONF if config is None else config
    argv = ['--config-file', args.config_file] if args.config_file else []
    conf.register_opts(config)
    config(argv, project=PROJECT, prog=PROJECT,
           default_config_files=[
               path for path in (DEFAULT_CONFIG_FILE,)
               if os.path.isfile(path)],
           default_config_dirs=[
               path for path in (DEFAULT_CONFIG_DIR,) if os.path.isdir(path)])
    from scaph_openstack import privsep
    privsep.start_if_root()
    return config


def _config_files(conf):
    return ', '.join(conf.config_file) or 'none found, built-in defaults'


def _fail(message, code=2):
    sys.stderr.write('scaph-openstack: %s\n' % message)
    return code


TRANSIENT = ('%s is a transient domain: it has no persistent definition to '
             'change, and defining one would make it persistent behind your '
             'back. Make it persistent first (virsh dumpxml %s > %s.xml; '
             'virsh define %s.xml), then run %s again')


class TransientDomain(Exception):
    pass


def _persistent_domain(args, conf):
    """(connection, domain) of ``args.domain``; TransientDomain (nothing
    left open) for a domain without a persistent definition: defineXML
    on it would silently make it persistent."""
    import libvirt
    connection = libvirt.open(args.uri or conf.libvirt.connection_uri)
    try:
        domain = connection.lookupByName(args.domain)
        if not domain.isPersistent():
            raise TransientDomain(
                TRANSIENT % ((args.domain,) * 4 + (args.command,)))
    except (libvirt.libvirtError, TransientDomain):
        connection.close()
        raise
    return connection, domain


def cmd_attach(args, out=sys.stdout):
    """What the Nova hook does, for one plain libvirt domain. Everything
    is checked, and the new definition made, before the share directory
    is created: a refusal leaves nothing behind."""
    import libvirt
    from scaph_openstack.privsep import mounts
    from scaph_openstack.share import domain_xml
    from scaph_openstack.share import layout
    conf = _load_conf(args)
    try:
        connection, domain = _persistent_domain(args, conf)
    except (libvirt.libvirtError, TransientDomain) as exc:
        return _fail(exc)
    try:
        xml = domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        uuid = domain_xml.domain_uuid(xml)
        source = '%s/%s' % (conf.share.export_dir.rstrip('/'),
                            layout.instance_dir_name(uuid))
        new_xml, changed = domain_xml.attach(xml, source, conf.share.tag,
                                             conf.share.virtiofsd_path)
        mounts.create_instance_share(uuid)   # the daemon's own [share]
        if changed:
            try:
                connection.defineXML(new_xml)
            except libvirt.libvirtError as exc:
                return _fail('libvirt refused the new definition of %s, '
                             'which stays as it was: %s (the share '
                             'directory was made: zero counters, harmless)'
                             % (args.domain, exc))
    except (libvirt.libvirtError, domain_xml.DomainXmlError) as exc:
        return _fail(exc)
    finally:
        connection.close()
    out.write('%s: share %s attached as tag %r; %s\n' % (
        args.domain, source, conf.share.tag, DOMAIN_MESSAGE[changed]))
    out.write('configuration: %s\n' % _config_files(conf))
    out.write('in the guest: mount -t virtiofs -o ro %s %s\n'
              % (conf.share.tag, layout.GUEST_MOUNTPOINT))
    return 0


def cmd_detach(args, out=sys.stdout):
    import libvirt
    from scaph_openstack.share import domain_xml
    conf = _load_conf(args)
    try:
        connection, domain = _persistent_domain(args, conf)
    except (libvirt.libvirtError, TransientDomain) as exc:
        return _fail(exc)
    try:
        new_xml, changed = domain_xml.detach(
            domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), conf.share.tag)
        if changed:
            connection.defineXML(new_xml)
    except (libvirt.libvirtError, domain_xml.DomainXmlError) as exc:
        return _fail(exc)
    finally:
        connection.close()
    out.write('%s: share detached; %s\n' % (args.domain,
                                             DOMAIN_MESSAGE[changed]))
    return 0


def cmd_proxmox_args(args, out=sys.stdout):
    """The 9p args: line alone (Proxmox VE before 8.4); proxmox-share
    prints it too, with the hookscript."""
    from scaph_openstack import proxmox
    conf = _load_conf(args)
    try:
        line = proxmox.args_line(
            args.vmid, conf.share.export_dir, conf.share.tag,
            config_dir=os.path.join(conf.proxmox.pve_dir, 'qemu-server'))
    except ValueError as exc:
        return _fail(exc)
    out.write('# append to /etc/pve/qemu-server/%s.conf, then stop and '
              'start the VM:\n%s\n' % (args.vmid, line))
    out.write('# in the guest:\n%s\n' % proxmox.guest_mount_command(
        conf.share.tag))
    return 0


def _run_commands(commands, out):
    """Run each qm/pvesh command in order; the first failure stops."""
    import shlex
    import shutil
    import subprocess
    for command in commands:
        if shutil.which(command[0]) is None:
            return _fail('%s not found: this is not a Proxmox VE node. Run '
                         'the commands above on the node that holds the VM'
                         % command[0])
        out.write('+ %s\n' % shlex.join(command))
        out.flush()
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            return _fail('%s failed (exit %s): %s' % (
                shlex.join(command[:3]), result.returncode,
                (result.stderr or result.stdout).strip()))
    return 0


def cmd_proxmox_share(args, out=sys.stdout):
    """Print (with --apply: run) what VM ``args.vmid`` needs for its
    share over the transport of its Proxmox generation."""
    import shlex
    from scaph_openstack import privsep
    from scaph_openstack import proxmox
    from scaph_openstack.privsep import mounts
    conf = _load_conf(args)
    transport = args.transport or conf.proxmox.transport
    try:
        plan = proxmox.plan(args.vmid, transport, conf.share.export_dir,
                            conf.share.tag, conf.proxmox.pve_dir,
                            conf.proxmox.node, args.node or (),
                            conf.proxmox.hookscript)
    except ValueError as exc:
        return _fail(exc)
    out.write('# VM %s, transport %s: share %s, guest tag %s\n'
              % (plan.vmid, plan.transport, plan.share_dir, plan.tag))
    for command in plan.commands:
        out.write('%s\n' % shlex.join(command))
    if not plan.commands:
        out.write('# nothing to change\n')
    out.write('# then stop and start the VM (not a reboot from inside)\n'
              '# in the guest (or the cloud-init snippet, which finds the '
              'tag):\n%s\n' % plan.guest_mount)
    if not args.apply:
        return 0
    if transport == 'virtiofs':
        # Proxmox refuses a directory mapping whose path does not exist.
        try:
            mounts.create_proxmox_share(plan.key)
        except (privsep.Refused, OSError) as exc:
            return _fail('cannot create the share of VM %s: %s'
                         % (plan.vmid, exc))
    return _run_commands(plan.commands, out)


def cmd_proxmox_hook(args, out=sys.stdout):
    """Proxmox's hookscript call (``<script> VMID PHASE``): in pre-start,
    refuse a VM whose options name another VM's share, then create its
    own. A non-zero exit in pre-start keeps the VM from starting, with
    this message in the task log. Other phases: nothing."""
    from scaph_openstack import privsep
    from scaph_openstack import proxmox
    from scaph_openstack.privsep import mounts
    if args.phase != 'pre-start':
        return 0
    conf = _load_conf(args)
    try:
        path, text = proxmox.read_config(args.vmid, conf.proxmox.pve_dir)
        key = proxmox.key_of_config(args.vmid, path, text)
        problems = proxmox.foreign_shares(
            proxmox.config_options(text), key, conf.share.export_dir,
            proxmox.read_directory_mappings(conf.proxmox.pve_dir),
            proxmox.node_name(conf.proxmox.node))
    except ValueError as exc:
        return _fail('VM %s not started: %s' % (args.vmid, exc), 1)
    if problems:
        return _fail('VM %s not started: %s. Was it cloned? Its guest would '
                     'read another VM\'s energy. Run "scaph-openstack '
                     'proxmox-share %s --apply", which replaces the copied '
                     'option'
                     % (args.vmid, '; '.join(problems), args.vmid), 1)
    try:
        mounts.create_proxmox_share(key)
    except (privsep.Refused, OSError) as exc:
        return _fail('VM %s not started: cannot create its share: %s'
                     % (args.vmid, exc), 1)
    out.write('scaph-openstack: share of VM %s ready (%s)\n'
              % (args.vmid, key))
    return 0


def cmd_telemetry_setup(args, out=sys.stdout):
    """Gnocchi's archive policies and resource types for our meters, with
    the caller's credentials (OS_* variables or --os-* options, as the
    openstack command takes them)."""
    from gnocchiclient import client as gnocchi_client
    from gnocchiclient import exceptions as gnocchi_exc
    from keystoneauth1 import exceptions as ks_exc
    from keystoneauth1 import loading as ks_loading
    from scaph_openstack.telemetry import gnocchi
    try:
        auth = ks_loading.load_auth_from_argparse_arguments(args)
        session = ks_loading.load_session_from_argparse_arguments(
            args, auth=auth)
        client = gnocchi_client.Client('1', session, adapter_options={
            'interface': args.os_interface,
            'region_name': args.os_region_name,
            'endpoint_override': args.metric_url})
        changes = gnocchi.ensure(client)
    except (gnocchi.SetupError, gnocchi_exc.ClientException,
            ks_exc.ClientException) as exc:
        return _fail('telemetry-setup: %s' % exc)
    for change in changes:
        out.write('%-15s %-28s %s\n' % (change.what, change.name,
                                        change.action))
    return 0


def _telemetry_setup_parser(sub, argv):
    from keystoneauth1 import loading as ks_loading
    command = sub.add_parser(
        'telemetry-setup', help="create Gnocchi's archive policies and "
                                'resource types for the energy meters')
    command.add_argument(
        '--metric-url', default=os.environ.get('SCAPH_METRIC_URL'),
        help="Gnocchi's URL (default: the catalog's metric service)")
    command.add_argument('--os-interface',
                         default=os.environ.get('OS_INTERFACE', 'public'))
    command.add_argument('--os-region-name',
                         default=os.environ.get('OS_REGION_NAME'))
    ks_loading.register_session_argparse_arguments(command)
    # The auth type's own options (--os-username, ...) depend on the
    # --os-auth-type given: keystoneauth reads it from the arguments.
    rest = argv[argv.index('telemetry-setup') + 1:] \
        if 'telemetry-setup' in argv else []
    ks_loading.register_auth_argparse_arguments(command, rest,
                                                default='password')
    command.set_defaults(func=cmd_telemetry_setup)


def build_parser(argv=()):
    parser = argparse.ArgumentParser(prog='scaph-openstack')
    sub = parser.add_subparsers(dest='command', required=True)
    status = sub.add_parser('status', help='per-instance power and energy '
                                           'from the agent snapshot')
    status.add_argument('--json', action='store_true')
    status.add_argument('--snapshot', default=DEFAULT_SNAPSHOT)
    status.set_defaults(func=cmd_status)
    for name, func, text in (
            ('attach', cmd_attach, 'add the share to a libvirt domain'),
            ('detach', cmd_detach, 'remove the share from a domain')):
        command = sub.add_parser(name, help=text)
        command.add_argument('domain')
        command.add_argument('--uri', help='libvirt URI (default: '
                                           '[libvirt] connection_uri)')
        command.add_argument('--config-file')
        command.set_defaults(func=func)
    pve = sub.add_parser('proxmox-args', help='the args: line exporting a '
                                              'Proxmox VM share over 9p')
    pve.add_argument('vmid')
    pve.add_argument('--config-file')
    pve.set_defaults(func=cmd_proxmox_args)
    share = sub.add_parser(
        'proxmox-share', help="what a Proxmox VM needs for its share "
                              "(qm/pvesh commands); --apply runs them")
    share.add_argument('vmid')
    share.add_argument('--transport', choices=('virtiofs', '9p'),
                       help='virtiofs (Proxmox VE 8.4+) or 9p (before); '
                            'default: [proxmox] transport')
    share.add_argument('--node', action='append',
                       help='another node the directory mapping covers '
                            '(again for each; this node always is)')
    share.add_argument('--apply', action='store_true',
                       help='create the share and run the commands')
    share.add_argument('--config-file')
    share.set_defaults(func=cmd_proxmox_share)
    hook = sub.add_parser(
        'proxmox-hook', help='the Proxmox hookscript (VMID PHASE): creates '
                             'the share before the VM starts')
    hook.add_argument('vmid')
    hook.add_argument('phase')
    hook.add_argument('--config-file')
    hook.set_defaults(func=cmd_proxmox_hook)
    if 'telemetry-setup' in argv:
        # keystoneauth only for this one: the others run on compute nodes
        # without it being needed.
        _telemetry_setup_parser(sub, list(argv))
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    return args.func(args)


if __name__ == '__main__':
    sys.exit(main())
