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
    cfg.FloatOpt('call_timeout', default=5.0, min=0.1,
                 help='Longest wait (seconds) for libvirt in one tick '
                      '(connect, the bulk stats call, the XML of new '
                      'domains). A QEMU stuck in D state (NFS, Ceph) or a '
                      'hung libvirtd would otherwise freeze the tick: the '
                      'snapshot and every guest\'s share. A late call is '
                      'left behind (its result dropped when it returns) '
                      'and that tick\'s instance energy stays '
                      'unattributed; the next tick tries again once, on a '
                      'new connection, and no further call is made while '
                      'two are left behind. 5 s: a healthy answer takes '
                      'about 0.7 ms per domain here (0.7 s for 1000, TCG '
                      'guests), but a busy libvirtd answers late at '
                      'times (1.5 s seen in the tests while other domains '
                      'were being started), and a late call costs that '
                      'tick\'s attribution; two late calls '
                      'delay ticks by 10 s, well within the snapshot\'s '
                      'staleness limit ([snapshot] stale_after_min, '
                      '30 s). Keep call_timeout + interval below the '
                      'snapshot\'s stale_after_s if you lower that.'),
]


def register_opts(conf):
    conf.register_group(GROUP)
    conf.register_opts(OPTS, group=GROUP)


def list_opts():
    return {GROUP: OPTS}
