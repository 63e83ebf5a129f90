"""nova-compute's ``[scaphandre]`` group (in nova.conf), and the names
the Nova integration reads: the flavor extra spec and the image property.

Read by scaph_openstack.nova.driver (registered on Nova's CONF when the
driver loads) and by oslo-config-generator (``oslo.config.opts`` entry
point ``scaph_openstack.nova``). Nothing here imports Nova.
"""

from oslo_config import cfg

from scaph_openstack.share import layout

ATTACH_ALL = 'all'
ATTACH_OPT_IN = 'opt-in'
ATTACH_NONE = 'none'

READONLY_AUTO = 'auto'
READONLY_NEVER = 'never'

# Flavor extra spec (validated by scaph_openstack.nova.extra_specs) and
# image property that ask for (true) or refuse (false) the share. The
# image property is the tenant's: it can only ask for the share when
# [scaphandre] honor_image_property is true.
FLAVOR_SPEC = 'scaphandre:share'
IMAGE_PROPERTY = 'scaphandre_share'

GROUP = cfg.OptGroup(
    'scaphandre',
    title='scaph-openstack energy share of Nova instances',
    help='Read by nova-compute when [DEFAULT] compute_driver is '
         'scaphandre.LibvirtDriver: which instances get the read-only '
         'virtiofs share of their energy counters, and where it lives. '
         'work_dir and export_dir must be the same as the '
         'scaph-openstack-agent [share] options of this host.')

OPTS = [
    cfg.StrOpt(
        'attach', default=ATTACH_OPT_IN,
        choices=[
            (ATTACH_ALL, 'Every instance, unless its flavor extra spec '
                         '%s or its image property %s is false.'
             % (FLAVOR_SPEC, IMAGE_PROPERTY)),
            (ATTACH_OPT_IN, 'Only instances whose flavor extra spec %s '
                            'is true, or whose image property %s is true '
                            'when honor_image_property is true.'
             % (FLAVOR_SPEC, IMAGE_PROPERTY)),
            (ATTACH_NONE, 'No instance: switches the feature off without '
                          'changing compute_driver.'),
        ],
        help='Which instances get the share. When both the flavor and the '
             'image say something, the flavor (the operator) wins. The '
             'share needs shared guest memory and, like any virtiofs '
             'device, blocks live migration and suspend of the instance, '
             'hence opt-in by default. Instances with memory encryption '
             '(hw:mem_encryption, hw_mem_encryption: SEV, SEV-ES, SEV-SNP, '
             'TDX) never get it. A change applies when an instance\'s '
             'domain is next regenerated (hard reboot, stop and start, '
             'resize, migration, rebuild).'),
    cfg.BoolOpt(
        'honor_image_property', default=False,
        help='Whether the image property %s=true gives an instance the '
             'share (with attach = opt-in). Anyone who can upload an '
             'image can set it, and an instance with the share can be '
             'neither live migrated nor suspended: leave this false where '
             'tenants must not be able to pin their instances to a host '
             'during the operator\'s maintenance, and offer flavors with '
             '%s=true instead. %s=false (no share) is honored either way.'
             % (IMAGE_PROPERTY, FLAVOR_SPEC, IMAGE_PROPERTY)),
    cfg.StrOpt(
        'tag', default=layout.DEFAULT_TAG, regex=r'^[A-Za-z0-9._-]+$',
        max_length=36,
        help='virtiofs mount tag the guest mounts (mount -t virtiofs TAG '
             '/var/scaphandre). At most 36 bytes, the size of the tag in '
             'the virtio-fs device.'),
    cfg.StrOpt(
        'work_dir', default='/var/lib/scaph-openstack/shares',
        help='Read-write tmpfs holding every instance\'s tree; nova-compute '
             'creates an instance\'s initial tree here (through privsep) '
             'before its domain starts.'),
    cfg.StrOpt(
        'export_dir', default='/var/lib/libvirt/scaphandre',
        help='Read-only bind mount of work_dir: each domain exports '
             '<export_dir>/<instance uuid> to its guest.'),
    cfg.BoolOpt(
        'manage_mounts', default=True,
        help='Mount the work_dir tmpfs and its read-only export_dir view '
             'when they are missing, before a domain starts, as the agent '
             'does: guests resumed at host boot may start before the '
             'agent. Disable when systemd mount units provide them.'),
    cfg.StrOpt(
        'tmpfs_size', default='128m',
        help='Size of the work_dir tmpfs when nova-compute mounts it '
             '(same as the agent\'s [share] tmpfs_size).'),
    cfg.StrOpt(
        'virtiofsd_path',
        help='virtiofsd binary given to libvirt (<binary path=.../>). '
             'Unset, libvirt finds it through the vhost-user descriptors '
             'QEMU installs (/usr/share/qemu/vhost-user/).'),
    cfg.StrOpt(
        'readonly', default=READONLY_AUTO,
        choices=[
            (READONLY_AUTO, 'Add <readonly/> where libvirt accepts it on '
                            'virtiofs (11.0.0 and later).'),
            (READONLY_NEVER, 'Never add it, e.g. with libvirt 11 and a '
                             'virtiofsd without --readonly.'),
        ],
        help='The guest\'s view is read-only in any case: export_dir is a '
             'read-only bind mount. <readonly/> adds the same refusal '
             'inside virtiofsd; libvirt before 11.0 rejects it ("virtiofs '
             'does not yet support read-only mode").'),
    cfg.FloatOpt(
        'handoff_timeout', default=10.0, min=0.0,
        help='Seconds to wait, before an instance leaves this host (live '
             'or cold migration, resize, shelve, stop), for the agent to '
             'freeze its counters and say their values, which the '
             'instance\'s system metadata carries to the next host. Past '
             'it the operation goes on and the next host continues from '
             'the last values recorded (doc/nova.md). Not waited for where '
             'no agent keeps the instance\'s share current (its meta file '
             'older than three update intervals).'),
]


def register_opts(conf):
    conf.register_group(GROUP)
    conf.register_opts(OPTS, group=GROUP)


def list_opts():
    return [(GROUP, OPTS)]
