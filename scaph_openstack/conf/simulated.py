from oslo_config import cfg

GROUP = cfg.OptGroup('simulated',
                     title='Simulated energy (hosts without RAPL)',
                     help='Linear model: P = idle + (max - idle) x host CPU '
                          'utilisation, per socket. Outputs say '
                          'source=simulated.')

OPTS = [
    cfg.IntOpt('sockets', default=1, min=1,
               help='Number of simulated CPU packages.'),
    cfg.FloatOpt('idle_watts', default=20.0, min=0,
                 help='Package power per socket at 0% CPU utilisation.'),
    cfg.FloatOpt('max_watts', default=100.0, min=0,
                 help='Package power per socket at 100% CPU utilisation.'),
    cfg.FloatOpt('dram_watts', default=0.0, min=0,
                 help='Constant DRAM power per socket; 0 means no DRAM '
                      'zone (like AMD hosts).'),
    cfg.IntOpt('max_energy_range_uj', default=262143328850, min=1,
               help='Where simulated counters wrap, like RAPL.'),
]


def register_opts(conf):
    conf.register_group(GROUP)
    conf.register_opts(OPTS, group=GROUP)


def list_opts():
    return {GROUP: OPTS}
