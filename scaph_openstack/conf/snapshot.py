from oslo_config import cfg

GROUP = cfg.OptGroup('snapshot', title='Host-side snapshot (read by the '
                                       'Ceilometer pollsters)')

OPTS = [
    cfg.StrOpt('path', default='/run/scaph-openstack/snapshot.json',
               help='Versioned JSON snapshot written atomically each tick.'),
    cfg.FloatOpt('min_interval', default=10.0, min=0,
                 help='Seconds between two writes of the snapshot. Each '
                      'write needs the ledger saved first (a reader must '
                      'never see a value a restarted agent would not '
                      'start from), so this also paces the ledger\'s '
                      'fsyncs. Ceilometer polls every 300 s by default.'),
    cfg.FloatOpt('stale_after', default=3.0, min=1.0,
                 help='Readers treat the snapshot as stale when it is older '
                      'than this many write periods (the larger of '
                      '[agent] interval and min_interval) ...'),
    cfg.FloatOpt('stale_after_min', default=30.0, min=0,
                 help='... and older than this many seconds: one slow '
                      'tick must not make a whole Ceilometer cycle '
                      'publish nothing.'),
    cfg.StrOpt('group',
               help='Group that may read the snapshot (it holds tenant '
                    'names and ids, so it is 0640): the group the '
                    'Ceilometer polling agent runs as, usually '
                    'ceilometer. Unset: the agent\'s own group.'),
]


def register_opts(conf):
    conf.register_group(GROUP)
    conf.register_opts(OPTS, group=GROUP)


def list_opts():
    return {GROUP: OPTS}
