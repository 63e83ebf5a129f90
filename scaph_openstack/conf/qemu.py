from oslo_config import cfg

GROUP = cfg.OptGroup('qemu', title='QEMU process inventory (Proxmox, plain '
                                   'QEMU)')

OPTS = [
    cfg.StrOpt('proc_path', default='/proc',
               help='procfs root scanned for QEMU processes.'),
]


def register_opts(conf):
    conf.register_group(GROUP)
    conf.register_opts(OPTS, group=GROUP)


def list_opts():
    return {GROUP: OPTS}
