from oslo_config import cfg

GROUP = cfg.OptGroup('snapshot', title='Host-side snapshot (read by the '
                                       'Ceilometer pollsters)')

OPTS = [
    cfg.StrOpt('path', default='/run/scaph-openstack/snapshot.json',
               help='Versioned JSON snapshot written atomically each tick.'),
    cfg.FloatOpt('stale_after', default=3.0, min=1.0,
                 help='Readers treat the snapshot as stale when it is older '
                      'than this many agent intervals.'),
]


def register_opts(conf):
    conf.register_group(GROUP)
    conf.register_opts(OPTS, group=GROUP)


def list_opts():
    return {GROUP: OPTS}
