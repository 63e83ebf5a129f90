from oslo_config import cfg

GROUP = cfg.OptGroup('energy', title='Energy source')

OPTS = [
    cfg.StrOpt('source', default='rapl',
               choices=[('rapl', 'the powercap RAPL tree; the agent does '
                                 'not start without it'),
                        ('auto', 'rapl when its energy_uj files are readable, '
                                 'else simulated with one WARNING (demos, '
                                 'development, hosts without RAPL)'),
                        ('simulated', 'the documented linear CPU model')],
               help='Where host energy comes from. A service that meters '
                    'for billing must not fall back to a model silently, '
                    'hence rapl. Counters of different sources never add '
                    'up: a change of source starts a new epoch.'),
    cfg.StrOpt('powercap_path', default='/sys/class/powercap',
               help='Root of the powercap sysfs tree (intel-rapl:N, '
                    'intel-rapl:N:M).'),
    cfg.BoolOpt('use_privsep', default=True,
                help='Read energy_uj through the privsep daemon when it is '
                     'not readable directly (root-only since '
                     'CVE-2020-8694).'),
    cfg.FloatOpt('max_zone_power', default=1000.0, min=1.0,
                 help='Watts no single zone can draw. A counter that went '
                      'down (or jumped) by more than this power explains '
                      'is a reset (resume from suspend, driver reload): '
                      'the zone is re-baselined and that interval is not '
                      'counted, instead of counting a wrap.'),
    cfg.FloatOpt('sample_interval', min=0.1,
                 sample_default='<[agent] interval>',
                 help='Seconds between energy readings taken between '
                      'ticks, independent of the inventory: a tick '
                      'stalled by a hung libvirt never leaves a counter '
                      'unread long enough to wrap twice (a 262 kJ RAPL '
                      'range wraps every 11 minutes at 400 W). A reading '
                      'is skipped when a tick made one within this time, '
                      'so it costs nothing while ticks run. Defaults to '
                      '[agent] interval.'),
]


def register_opts(conf):
    conf.register_group(GROUP)
    conf.register_opts(OPTS, group=GROUP)


def list_opts():
    return {GROUP: OPTS}
