from oslo_config import cfg

GROUP = cfg.OptGroup('attribution', title='Energy attribution')

OPTS = [
    cfg.StrOpt('idle_policy', default='none',
               choices=[('none', 'idle energy stays unallocated (host)'),
                        ('vcpus', "split by each instance's vCPUs over the "
                                  "host's CPUs: the reservation view"),
                        ('cputime', 'split like the dynamic part, by CPU '
                                    'time')],
               help='Who pays for the idle part of each zone.'),
    cfg.DictOpt('idle_power', default={},
                help='Idle power in watts per zone name, for example '
                     'package-0:12.5,dram-0:2. Zones not listed learn their '
                     'idle power, with no idle period needed: the intercept '
                     'of the zone\'s power against its socket\'s CPU '
                     'utilisation (doc/design.md), persisted with the '
                     'ledger.'),
    cfg.IntOpt('idle_learning_window', default=3600, min=60,
               help='Time constant (seconds) with which old points of the '
                    'learned idle power fit are forgotten.'),
]


def register_opts(conf):
    conf.register_group(GROUP)
    conf.register_opts(OPTS, group=GROUP)


def list_opts():
    return {GROUP: OPTS}
