from oslo_config import cfg

GROUP = cfg.OptGroup('proxmox', title='Proxmox VE: how a VM gets its share '
                                      '(scaph-openstack proxmox-share, and '
                                      'the hookscript)')

OPTS = [
    cfg.StrOpt('transport', default='virtiofs', choices=[
        ('virtiofs', 'Proxmox VE 8.4 and later: a cluster directory mapping '
                     'named in the VM\'s virtiofsN option; qemu-server '
                     'starts virtiofsd'),
        ('9p', 'Proxmox VE before 8.4: an args: line with a read-only '
               'virtio-9p device')],
        help='How proxmox-share exports a VM\'s share when --transport is '
             'not given.'),
    cfg.StrOpt('pve_dir', default='/etc/pve',
               help='The Proxmox cluster file system: VM configurations in '
                    'qemu-server/<VMID>.conf of the node, directory '
                    'mappings in mapping/directory.cfg.'),
    cfg.StrOpt('node',
               help='This node\'s name in the cluster (default: the host '
                    'name up to its first dot, as Proxmox VE names nodes).'),
    cfg.StrOpt('hookscript', default='local:snippets/scaph-share-hook',
               help='Volume id of the hookscript that creates a VM\'s share '
                    'directory before it starts (etc/proxmox/scaph-share-'
                    'hook, copied to a storage with the "snippets" content '
                    'type); proxmox-share sets it on the VM.'),
]


def register_opts(conf):
    conf.register_group(GROUP)
    conf.register_opts(OPTS, group=GROUP)


def list_opts():
    return {GROUP: OPTS}
