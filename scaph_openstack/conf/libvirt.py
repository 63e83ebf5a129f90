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
    cfg.FloatOpt('call_timeout', min=0.1,
                 help='Longest wait (seconds) for libvirt in one tick '
                      '(connect, the bulk stats call, the XML of new '
                      'domains). A QEMU stuck in D state (NFS, Ceph) or a '
                      'hung libvirtd would otherwise freeze the tick: the '
                      'snapshot and every guest\'s share. A late call is '
                      'left behind (its result dropped when it returns) '
                      'and that tick\'s energy stays unattributed; the '
                      'next tick tries again once, and no further call '
                      'is made while two are left behind. Unset: the '
                      '[agent] interval, at least 1 s. A healthy call '
                      'must fit in a tick anyway (one runs every '
                      'interval; libvirtd takes about 0.7 ms per domain '
                      'under TCG, 0.7 s for 1000), and a late one then '
                      'delays a tick by at most one '
                      'interval, so the snapshot stays fresh (stale after '
                      '3 intervals). The 1 s floor keeps a busy host\'s '
                      'slow answer at sub-second intervals from counting '
                      'as a hang.'),
]


def register_opts(conf):
    conf.register_group(GROUP)
    conf.register_opts(OPTS, group=GROUP)


def list_opts():
    return {GROUP: OPTS}
