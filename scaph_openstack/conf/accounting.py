from oslo_config import cfg

GROUP = cfg.OptGroup(
    'accounting', title='Carbon and facility overhead',
    help='Cumulative carbon per instance and per host, integrated tick by '
         'tick: the energy of a tick x pue x the carbon intensity in '
         'force at that tick (doc/carbon.md). Energy meters stay '
         'measured joules: pue is applied to the carbon counters only. '
         'With neither carbon_intensity nor carbon_intensity_file set, '
         'no carbon is counted or published.')

OPTS = [
    cfg.FloatOpt('pue', default=1.0, min=1.0,
                 help='Power usage effectiveness of the facility: the '
                      'energy the building takes per joule the IT '
                      'equipment uses. Multiplies the energy counted into '
                      'the carbon counters (resolution 0.001), never the '
                      'energy meters; published as pue beside them.'),
    cfg.FloatOpt('carbon_intensity', min=0.0,
                 help='Static carbon intensity of the electricity, in '
                      'gCO2e/kWh (resolution 0.001). Unset: unknown. '
                      'With carbon_intensity_file set, used only while '
                      'that file gives no intensity in force (unreadable '
                      'from the start, no entry yet, or stale).'),
    cfg.StrOpt('carbon_intensity_file',
               help='File of time-stamped carbon intensities that an '
                    'operator\'s job keeps current: one '
                    '"<ISO 8601 time with zone>,<gCO2e/kWh>" per line, '
                    '"#" comments (doc/carbon.md). Read every tick, parsed '
                    'again only when it changes; the intensity at a tick '
                    'is that of the latest entry not after the tick. When '
                    'set, it wins over carbon_intensity. An unusable '
                    'version is logged once and the last good one kept.'),
    cfg.FloatOpt('carbon_intensity_max_age', default=86400.0, min=0.0,
                 help='Seconds after which the entry in force from '
                      'carbon_intensity_file is stale (the job that keeps '
                      'the file current stopped): then carbon_intensity '
                      'is used if set, else the intensity is unknown and '
                      'no carbon is counted. 0: entries never go stale.'),
]


def register_opts(conf):
    conf.register_group(GROUP)
    conf.register_opts(OPTS, group=GROUP)


def list_opts():
    return {GROUP: OPTS}
