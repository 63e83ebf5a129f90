from oslo_config import cfg

GROUP = cfg.OptGroup('libvirt', title='libvirt inventory')

OPTS = [
    cfg.StrOpt('connection_uri', default='qemu:///system',
               help='libvirt URI the inventory connects to.'),
    cfg.FloatOpt('reconnect_min', default=0.5, min=0.01,
                 help='First delay (seconds) before reconnecting after '
                      'libvirtd went away; doubles up to reconnect_max.'),
    cfg.FloatOpt('reconnect_max', default=4.0, min=0.01,
                 help='Longest delay between reconnection attempts. A '
                      'connection attempt costs one socket connect; a '
                      'short cap makes measurement resume within two '
                      'ticks of libvirtd coming back.'),
]


def register_opts(conf):
    conf.register_group(GROUP)
    conf.register_opts(OPTS, group=GROUP)


def list_opts():
    return {GROUP: OPTS}
