from oslo_config import cfg

GROUP = cfg.OptGroup('agent', title='Compute-node energy agent')

OPTS = [
    cfg.FloatOpt('interval', default=2.0, min=0.1,
                 help='Seconds between two ticks. One tick reads energy '
                      'once, lists instances once, attributes and publishes.'),
    cfg.StrOpt('state_dir', default='/var/lib/scaph-openstack',
               help='Where the ledger (per-instance cumulative counters) is '
                    'persisted atomically, so counters survive restarts.'),
    cfg.IntOpt('retention', default=86400, min=0,
               help='Seconds an instance that disappeared is kept in the '
                    'ledger (and its share) before it is dropped. Covers '
                    'reboots, migrations back and short outages.'),
    cfg.StrOpt('inventory', default='libvirt',
               help='Inventory plugin (entry point group '
                    'scaph_openstack.inventory): libvirt or qemu.'),
    cfg.StrOpt('attribution', default='cputime',
               help='Attribution plugin (entry point group '
                    'scaph_openstack.attribution).'),
    cfg.ListOpt('publishers', default=['snapshot', 'share'],
                help='Publisher plugins run after every tick (entry point '
                     'group scaph_openstack.publishers): snapshot, share, '
                     'prometheus.'),
    cfg.StrOpt('host', sample_default='<hostname>',
               help='Name of this compute node in outputs; defaults to the '
                    'hostname, as nova-compute does.'),
    cfg.StrOpt('proc_stat_path', default='/proc/stat',
               help='Host CPU accounting file (busy and idle time, per '
                    'CPU).'),
    cfg.StrOpt('cpu_topology_path', default='/sys/devices/system/cpu',
               help='Directory of cpuN/topology/physical_package_id: '
                    'which socket each CPU is on. Package and DRAM zones '
                    'are split by the CPU time of their own socket; '
                    'unreadable, every zone is split host-wide.'),
]


def register_opts(conf):
    conf.register_group(GROUP)
    conf.register_opts(OPTS, group=GROUP)


def list_opts():
    return {GROUP: OPTS}
