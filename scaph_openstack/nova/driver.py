"""Nova's LibvirtDriver plus the scaph-openstack energy share.

nova-compute loads it with ``[DEFAULT] compute_driver =
scaphandre.LibvirtDriver``: Nova imports ``nova.virt.<compute_driver>``,
and the shim package in ``nova_shim/`` installs ``nova/virt/scaphandre``,
which only re-exports this class. Nova has had no hook for guest XML since
Victoria, so the driver subclasses LibvirtDriver and overrides:

- ``_get_guest_config``: every XML Nova generates (spawn, hard reboot,
  power on, rescue, resize and cold migration, rebuild, unshelve) gets the
  virtiofs ``<filesystem>`` and shared guest memory, for the instances
  ``[scaphandre] attach`` selects (never memory-encrypted ones), and
  records in the instance's system metadata whether it did;
- ``_create_guest``: every domain definition and start (all of the above,
  plus resume from suspend and unrescue, which reuse an existing XML)
  makes the instance's share directory first, whether or not the agent
  runs, because libvirt refuses to start a domain whose virtiofs source
  does not exist;
- ``check_can_live_migrate_destination`` (and, as a backstop,
  ``check_can_live_migrate_source``) and ``suspend``: libvirt cannot
  migrate or save a domain with a virtiofs device, so both are refused up
  front, cleanly, instead of failing half-way; the live migration with an
  error the conductor does not retry on other hosts (doc/nova.md);
- ``_build_share_metadata``: Nova's device metadata knows only Manila
  shares; the energy share is not one and is skipped without Nova's
  warning.

From scaph-openstack, only its options (conf.nova), the share layout and
the privsep helpers are imported, never the agent (doc/design.md, Facts 6).
"""

import os

from lxml import etree
from oslo_log import log as logging
from oslo_utils import strutils

from nova import conf as nova_conf
from nova import exception
from nova.i18n import _
from nova.virt.libvirt import config as vconfig
from nova.virt.libvirt import driver as libvirt_driver

from scaph_openstack.conf import nova as scaph_conf
from scaph_openstack.privsep import mounts
from scaph_openstack.share import layout

LOG = logging.getLogger(__name__)
CONF = nova_conf.CONF
scaph_conf.register_opts(CONF)

# Nova copies every property of the boot image into system metadata with
# this prefix; ImageMetaProps only carries the fields Nova itself knows.
SYSMETA_IMAGE_KEY = 'image_' + scaph_conf.IMAGE_PROPERTY

# Memory encryption, as nova.virt.hardware.get_mem_encryption_constraint
# reads it: the flavor extra spec, or the image property (in system
# metadata like the one above). The model (hw:mem_encryption_model: SEV,
# SEV-ES, SEV-SNP, TDX) alone asks for nothing.
MEM_ENCRYPTION_SPEC = 'hw:mem_encryption'
SYSMETA_MEM_ENCRYPTION_KEY = 'image_hw_mem_encryption'

# Written by the driver that generated the instance's current XML: 'True'
# when it has the share, 'False' when not. Not an image key (no 'image_'
# prefix), so no tenant can set it. The compute manager saves it with the
# instance after the operation, as Nova does for image_hw_machine_type
# that LibvirtDriver._get_guest_config records the same way. Read on the
# live migration's destination, which cannot see the source's domain.
SYSMETA_ATTACHED_KEY = 'scaphandre_share_attached'

# libvirt accepts <readonly/> on virtiofs from 11.0.0, as other libvirt
# users rely on (it needs a virtiofsd with --readonly); 9.0, the one these
# machines run, rejects it: "virtiofs does not yet support read-only mode"
# (doc/design.md, Facts 2).
MIN_LIBVIRT_VIRTIOFS_READONLY = (11, 0, 0)

VIRT_TYPES = ('kvm', 'qemu')  # virtiofs is a QEMU vhost-user device


class ShareUnavailable(exception.NovaException):
    msg_fmt = _('The scaph-openstack share of instance %(uuid)s cannot be '
                'created in %(work_dir)s: %(reason)s')


class ShareFilesys(vconfig.LibvirtConfigGuestFilesys):
    """The virtiofs ``<filesystem>``, plus what Nova's class cannot say:
    ``<binary path=.../>`` and ``<readonly/>``."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.source_type = 'mount'
        self.accessmode = 'passthrough'
        self.driver_type = 'virtiofs'
        self.binary_path = None
        self.readonly = False

    def format_dom(self):
        dev = super().format_dom()
        if self.binary_path:
            dev.append(etree.Element('binary', path=self.binary_path))
        if self.readonly:
            dev.append(etree.Element('readonly'))
        return dev


class MemfdMemoryBacking(vconfig.LibvirtConfigGuestMemoryBacking):
    """``<memoryBacking>`` with ``<source type='memfd'/>``, which Nova's
    class cannot express (it only knows ``type='file'``)."""

    @classmethod
    def from_backing(cls, backing):
        memfd = cls()
        if backing is not None:
            # Keep whatever Nova set (locked, nosharepages, ...), in this
            # release's attributes.
            memfd.__dict__.update(vars(backing))
        return memfd

    def format_dom(self):
        root = super().format_dom()
        if not self.filesource:
            source = etree.Element('source', type='memfd')
            access = root.find('access')
            if access is not None:
                access.addprevious(source)  # libvirt's own order
            else:
                root.append(source)
        return root


def export_path(uuid):
    """The directory libvirt exports to the instance's guest."""
    return os.path.join(CONF.scaphandre.export_dir,
                        layout.instance_dir_name(uuid))


def _bool(value, what):
    try:
        return strutils.bool_from_string(value, strict=True)
    except ValueError:
        LOG.warning('Ignoring %s=%r: not a boolean', what, value)
        return None


def share_requested(extra_specs, system_metadata,
                    honor_image_property=False):
    """True or False when the flavor or the image says, else None.

    The flavor is the operator's and wins over the image, the user's. The
    image can always say no; it can say yes only with
    honor_image_property: anyone who can upload an image could otherwise
    make their instance impossible to live migrate or suspend.
    """
    value = extra_specs.get(scaph_conf.FLAVOR_SPEC)
    if value is not None:
        requested = _bool(value, scaph_conf.FLAVOR_SPEC)
        if requested is not None:
            return requested
    value = system_metadata.get(SYSMETA_IMAGE_KEY)
    if value is not None:
        requested = _bool(value, scaph_conf.IMAGE_PROPERTY)
        if requested and not honor_image_property:
            return None
        return requested
    return None


def mem_encryption_requested(extra_specs, system_metadata):
    """Whether the flavor or the image asks for encrypted guest memory, read
    as Nova reads them (non-strict booleans)."""
    return any(strutils.bool_from_string(value) for value in (
        extra_specs.get(MEM_ENCRYPTION_SPEC),
        system_metadata.get(SYSMETA_MEM_ENCRYPTION_KEY)))


def wants_share(attach, extra_specs, system_metadata,
                honor_image_property=False):
    if attach == scaph_conf.ATTACH_NONE:
        return False
    if mem_encryption_requested(extra_specs, system_metadata):
        # Encrypted memory is what the host must not read; the share
        # would make the guest's memory a shared mapping that virtiofsd
        # maps (doc/nova.md).
        return False
    requested = share_requested(extra_specs, system_metadata,
                                honor_image_property)
    if requested is None:
        return attach == scaph_conf.ATTACH_ALL
    return requested


def has_shared_memory(guest):
    """What libvirt checks for virtiofs: shared memory backing, or every
    guest NUMA cell shared (Nova does that for huge pages)."""
    if guest.membacking is not None and guest.membacking.sharedaccess:
        return True
    numa = guest.cpu.numa if guest.cpu is not None else None
    cells = numa.cells if numa is not None else []
    return bool(cells) and all(cell.memAccess == 'shared' for cell in cells)


def ensure_shared_memory(guest):
    if has_shared_memory(guest):
        return
    backing = guest.membacking
    if backing is not None and (backing.hugepages or backing.filesource):
        # Already backed by a file (hugetlbfs or file_backed_memory): only
        # the mapping has to become shared.
        backing.sharedaccess = True
        return
    guest.membacking = MemfdMemoryBacking.from_backing(backing)
    guest.membacking.sharedaccess = True


def share_devices(xml, uuid):
    """The virtiofs <filesystem> elements of a domain XML exporting the
    instance's share directory."""
    try:
        root = etree.fromstring(xml.encode() if isinstance(xml, str)
                                else xml)
    except etree.XMLSyntaxError:
        return []
    path = export_path(uuid)
    found = []
    for fs in root.iterfind('./devices/filesystem'):
        driver = fs.find('driver')
        source = fs.find('source')
        if (driver is not None and driver.get('type') == 'virtiofs' and
                source is not None and source.get('dir') == path):
            found.append(fs)
    return found


def is_energy_share(dev):
    """Whether a parsed LibvirtConfigGuestFilesys is the energy share of
    its instance: virtiofs, our tag, a source directly in export_dir."""
    source = getattr(dev, 'source_dir', None)
    return (getattr(dev, 'driver_type', None) == 'virtiofs' and
            getattr(dev, 'target_dir', None) == CONF.scaphandre.tag and
            bool(source) and
            os.path.dirname(os.path.normpath(source)) ==
            os.path.normpath(CONF.scaphandre.export_dir))


class LibvirtDriver(libvirt_driver.LibvirtDriver):
    """``compute_driver = scaphandre.LibvirtDriver``"""

    # -- which guests get the share, and its XML --

    def _wants_share(self, instance):
        if CONF.libvirt.virt_type not in VIRT_TYPES:
            return False
        return wants_share(CONF.scaphandre.attach,
                           instance.flavor.extra_specs,
                           instance.system_metadata,
                           CONF.scaphandre.honor_image_property)

    def _share_readonly(self):
        if CONF.scaphandre.readonly == scaph_conf.READONLY_NEVER:
            return False
        return self._host.has_min_version(
            lv_ver=MIN_LIBVIRT_VIRTIOFS_READONLY)

    def _add_share(self, guest, instance):
        tag = CONF.scaphandre.tag
        for dev in guest.devices:
            if (isinstance(dev, vconfig.LibvirtConfigGuestFilesys) and
                    dev.target_dir == tag):
                # Two devices with one tag: the guest would mount either.
                LOG.warning('Not adding the scaph-openstack share: another '
                            'filesystem already uses the tag %s', tag,
                            instance=instance)
                return False
        fs = ShareFilesys()
        fs.source_dir = export_path(instance.uuid)
        fs.target_dir = tag
        fs.binary_path = CONF.scaphandre.virtiofsd_path
        fs.readonly = self._share_readonly()
        guest.add_device(fs)
        ensure_shared_memory(guest)
        return True

    # The signature changes across Nova releases (share_info in 31,
    # old_guest in 33): pass everything through.
    def _get_guest_config(self, instance, *args, **kwargs):
        guest = super()._get_guest_config(instance, *args, **kwargs)
        attached = False
        if self._wants_share(instance):
            if getattr(guest, 'launch_security', None) is not None:
                # Nova encrypts this guest's memory (SEV, SEV-ES, SEV-SNP,
                # TDX) however it was asked to: never share it.
                LOG.info('Not adding the scaph-openstack share: the guest '
                         'memory is encrypted', instance=instance)
            else:
                attached = self._add_share(guest, instance)
        instance.system_metadata[SYSMETA_ATTACHED_KEY] = str(attached)
        return guest

    # -- the share directory exists before any domain start --

    def _ensure_share(self, instance):
        work_dir = CONF.scaphandre.work_dir
        try:
            if CONF.scaphandre.manage_mounts:
                mounts.ensure_share_mounts()  # reads [scaphandre] itself
            # with_dram=False: the agent adds the DRAM zone on its first
            # write where the host has one. Present files are kept, so
            # counters the agent already wrote are never lowered.
            mounts.create_instance_share(instance.uuid)
        except Exception as exc:
            # Whatever failed (privsep daemon, mount, full tmpfs), the
            # domain can still start if the directory is there.
            if os.path.isdir(export_path(instance.uuid)):
                LOG.warning('Could not refresh the scaph-openstack share '
                            '(%s); it exists, starting anyway', exc,
                            instance=instance)
                return
            raise ShareUnavailable(uuid=instance.uuid, work_dir=work_dir,
                                   reason=exc)
        if not os.path.isdir(export_path(instance.uuid)):
            raise ShareUnavailable(
                uuid=instance.uuid, work_dir=work_dir,
                reason='%s does not show it: is export_dir the read-only '
                       'bind mount of work_dir?'
                       % CONF.scaphandre.export_dir)

    # Every path that defines or starts a domain comes through here (see
    # the module docstring), with a freshly generated XML or a saved one.
    def _create_guest(self, context, xml, instance, *args, **kwargs):
        if xml and share_devices(xml, instance.uuid):
            self._ensure_share(instance)
        return super()._create_guest(context, xml, instance, *args,
                                     **kwargs)

    # -- what libvirt cannot do with a virtiofs device --

    def _running_with_share(self, instance):
        try:
            guest = self._host.get_guest(instance)
        except exception.InstanceNotFound:
            return False
        return bool(share_devices(guest.get_xml_desc(), instance.uuid))

    def _recorded_share(self, instance):
        """Whether the instance's current domain has the share, as the
        driver that generated its XML recorded; without a record (an XML
        from before the record existed), whether this host's options give
        it one."""
        recorded = instance.system_metadata.get(SYSMETA_ATTACHED_KEY)
        if recorded is not None:
            return strutils.bool_from_string(recorded)
        return self._wants_share(instance)

    # Runs on the destination, first of the per-host checks. The conductor
    # (LiveMigrationTask._find_destination) tries the next host on Invalid
    # or MigrationPreCheckError, and the destination's compute manager
    # wraps whatever the source's check raises into MigrationPreCheckError,
    # so only a refusal from here can end the request: NoValidHost, which
    # the conductor passes on (migration 'error', instance left ACTIVE on
    # its host, the scheduler's claim on this host given back).
    def check_can_live_migrate_destination(self, context, instance,
                                           *args, **kwargs):
        if self._recorded_share(instance):
            raise exception.NoValidHost(reason=_(
                'instance %s has the scaph-openstack energy share, a '
                'virtiofs device, which libvirt cannot live migrate to any '
                'host; cold migrate it instead (migrate or resize), which '
                'recreates the share on the destination') % instance.uuid)
        return super().check_can_live_migrate_destination(
            context, instance, *args, **kwargs)

    # The backstop, where the record is missing or wrong (a domain defined
    # before the options changed): the running domain decides. Only the
    # conductor's next host comes of it (see above).
    def check_can_live_migrate_source(self, context, instance,
                                      dest_check_data, *args, **kwargs):
        if self._running_with_share(instance):
            raise exception.MigrationPreCheckError(reason=_(
                'instance %s has the scaph-openstack energy share, a '
                'virtiofs device, which libvirt cannot live migrate; '
                'cold migrate it instead (migrate or resize), which '
                'recreates the share on the destination') % instance.uuid)
        return super().check_can_live_migrate_source(
            context, instance, dest_check_data, *args, **kwargs)

    def suspend(self, context, instance, *args, **kwargs):
        if self._running_with_share(instance):
            # InstanceFaultRollback: the compute manager puts the instance
            # back to ACTIVE instead of ERROR, and records the reason.
            raise exception.InstanceFaultRollback(
                inner_exception=exception.InstanceSuspendFailure(reason=_(
                    'instance %s has the scaph-openstack energy share, a '
                    'virtiofs device, and libvirt cannot save the memory '
                    'of a domain with one; stop or shelve it '
                    'instead') % instance.uuid))
        return super().suspend(context, instance, *args, **kwargs)

    # -- Nova's device metadata --

    def _build_share_metadata(self, dev, shares, *args, **kwargs):
        # Nova builds device metadata (attach_volume, attach_interface,
        # hard reboot, config drive) for every <filesystem> and expects a
        # Manila share mapping for each, warning "Device ... of type
        # filesystem found but it is not linked to any share" otherwise.
        # The energy share is not a Manila share: no metadata, no warning.
        if is_energy_share(dev) and not any(
                share.tag == dev.target_dir for share in shares):
            return None
        return super()._build_share_metadata(dev, shares, *args, **kwargs)
