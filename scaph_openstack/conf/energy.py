from oslo_config import cfg

GROUP = cfg.OptGroup('energy', title='Energy source')

OPTS = [
    cfg.StrOpt('source', default='auto',
               choices=[('auto', 'rapl when its energy_uj files are readable, '
                                 'else simulated with one WARNING'),
                        ('rapl', 'the powercap RAPL tree, fail if unusable'),
                        ('simulated', 'the documented linear CPU model')],
               help='Where host energy comes from.'),
    cfg.StrOpt('powercap_path', default='/sys/class/powercap',
               help='Root of the powercap sysfs tree (intel-rapl:N, '
                    'intel-rapl:N:M).'),
    cfg.BoolOpt('use_privsep', default=True,
                help='Read energy_uj through the privsep daemon when it is '
                     'not readable directly (root-only since '
                     'CVE-2020-8694).'),
]


def register_opts(conf):
    conf.register_group(GROUP)
    conf.register_opts(OPTS, group=GROUP)


def list_opts():
    return {GROUP: OPTS}
