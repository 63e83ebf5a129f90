from oslo_config import cfg

GROUP = cfg.OptGroup('share', title='Guest share (powercap tree per instance)')

OPTS = [
    cfg.StrOpt('work_dir', default='/var/lib/scaph-openstack/shares',
               help='Read-write tmpfs the agent writes the trees into.'),
    cfg.StrOpt('export_dir', default='/var/lib/libvirt/scaphandre',
               help='Read-only bind mount of work_dir; libvirt/virtiofsd '
                    'exports <export_dir>/<instance uuid> to each guest.'),
    cfg.BoolOpt('manage_mounts', default=True,
                help='Mount the tmpfs and its read-only view at agent '
                     'start (through privsep). Disable when systemd mount '
                     'units do it.'),
    cfg.StrOpt('tmpfs_size', default='128m',
               help='Size limit of the tmpfs. Each instance takes about '
                    '28 KiB (7 small files, one page each): 128m holds '
                    'about 4500 instances. Pages are used only when '
                    'written.'),
    cfg.StrOpt('tag', default='scaphandre',
               help='virtiofs (or 9p) tag the guest mounts; used by '
                    '"scaph-openstack attach" and "proxmox-args".'),
    cfg.StrOpt('virtiofsd_path',
               help='virtiofsd binary libvirt should run for the share '
                    '(<binary path=...>). Unset: libvirt finds it itself.'),
    cfg.FloatOpt('min_interval', default=10.0, min=0,
                 help='Seconds between two updates a guest can see. '
                      'Slower updates blunt the PLATYPUS-style side channel '
                      'a host-derived counter opens.'),
    cfg.IntOpt('resolution_uj', default=1000000, min=1,
               help='Guest-visible counters are rounded down to a multiple '
                    'of this (1 J by default).'),
]


def register_opts(conf):
    conf.register_group(GROUP)
    conf.register_opts(OPTS, group=GROUP)


def list_opts():
    return {GROUP: OPTS}
