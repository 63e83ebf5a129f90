from oslo_config import cfg

GROUP = cfg.OptGroup('prometheus', title='Prometheus /metrics publisher')

OPTS = [
    cfg.HostAddressOpt('listen_address', default='127.0.0.1',
                       help='Address the /metrics endpoint binds to.'),
    cfg.PortOpt('port', default=9109,
                help='Port of the /metrics endpoint.'),
    cfg.FloatOpt('min_interval', default=10.0, min=0,
                 help='Seconds between two updates of what /metrics shows '
                      '(each needs the ledger saved first). Keep it at or '
                      'below the scrape interval.'),
]


def register_opts(conf):
    conf.register_group(GROUP)
    conf.register_opts(OPTS, group=GROUP)


def list_opts():
    return {GROUP: OPTS}
