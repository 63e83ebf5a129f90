"""Options of the Ceilometer plugins, read from ceilometer.conf.

The pollsters run inside ``ceilometer-polling``, whose option list does not
know ours: the plugins register this group on Ceilometer's own ConfigOpts
when they load (oslo.config reads values from already parsed files lazily,
so registering after parsing is fine).
"""

from oslo_config import cfg

GROUP = cfg.OptGroup(
    'scaphandre', title='scaph-openstack energy meters in Ceilometer',
    help='Read by the scaph-openstack discovery and pollsters loaded by '
         'ceilometer-polling --polling-namespaces compute.')

OPTS = [
    cfg.StrOpt('snapshot_path',
               default='/run/scaph-openstack/snapshot.json',
               help='Snapshot written by scaph-openstack-agent (its '
                    '[snapshot] path). It must be readable by the '
                    'user ceilometer-polling runs as. A snapshot older '
                    'than the stale_after_s it declares, and older than '
                    'stale_after_min, gives no samples.'),
    cfg.FloatOpt('stale_after_min', default=30.0, min=0.0,
                 help='Seconds: a snapshot is stale only when it is older '
                      'than both the stale_after_s it declares and this. '
                      'One slow agent tick must not make a whole polling '
                      'cycle publish nothing, and agents before issue 10 '
                      'declare 3 intervals (6 s by default). 0: the '
                      'snapshot\'s stale_after_s alone.'),
]


def register_opts(conf):
    conf.register_group(GROUP)
    conf.register_opts(OPTS, group=GROUP)


def list_opts():
    return [(GROUP, OPTS)]
