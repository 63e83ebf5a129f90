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
  ``check_can_live_migrate_source``) and ``suspend``: allowed where this
  host can migrate a virtiofs device (libvirt 10.5 or later and a
  virtiofsd that says ``migrate-precopy``: Debian 13), refused up front,
  cleanly, elsewhere (Debian 12), instead of failing half-way; the live
  migration with an error the conductor does not retry on other hosts;
- counters that follow the instance (scaph_openstack/handoff.py): before
  it leaves a host (live or cold migration, resize, shelve, stop), the
  agent freezes its counters and their values go into the instance's
  system metadata; before a domain of it starts elsewhere
  (``pre_live_migration``, ``_create_guest``), that host's share and
  agent continue from them (doc/nova.md);
- ``_build_share_metadata``: Nova's device metadata knows only Manila
  shares; the energy share is not one and is skipped without Nova's
  warning.

From scaph-openstack, only its options (conf.nova), the share layout and
the privsep helpers are imported, never the agent (doc/design.md, Facts 6).
"""

import json
import os
import subprocess
import time
import uuid as uuidlib

from lxml import etree
from oslo_log import log as logging
from oslo_utils import strutils

from nova import conf as nova_conf
from nova.compute import task_states
from nova import exception
from nova.i18n import _
from nova import objects
from nova.virt.libvirt import config as vconfig
from nova.virt.libvirt import driver as libvirt_driver

from scaph_openstack.conf import nova as scaph_conf
from scaph_openstack import handoff
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

# The counters the instance had when it last left a host (handoff.py's
# Counters as JSON), carried to the next one. Not an image key either.
SYSMETA_COUNTERS_KEY = 'scaphandre_counters'

# libvirt migrates (and saves) a domain with a virtiofs device from 10.5.0
# when virtiofsd says "migrate-precopy" to --print-capabilities
# (qemuMigrationSrcIsAllowed); QEMU 8.2 or later carries virtiofsd's state
# in the migration stream (doc/nova.md, "Live migration and suspend").
MIN_LIBVIRT_VIRTIOFS_MIGRATION = (10, 5, 0)
MIN_QEMU_VIRTIOFS_MIGRATION = (8, 2, 0)
MIGRATE_PRECOPY = 'migrate-precopy'
# Where libvirt looks for virtiofsd when the XML names none: QEMU's
# vhost-user descriptors, a file in /etc replacing one of the same name.
VHOST_USER_DIRS = ('/usr/share/qemu/vhost-user', '/etc/qemu/vhost-user')
HANDOFF_POLL_S = 0.2
# How long a live migration's hold lasts before the destination is
# prepared (live_migration then makes it last): the migration may wait in
# the source's queue ([DEFAULT] max_concurrent_live_migrations, 1 by
# default) behind the others of a host's evacuation. A destination that
# fails to prepare leaves the counters flat this long at most.
LIVE_MIGRATION_HOLD_S = 6 * 3600

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


def virtiofsd_from_descriptors(dirs=VHOST_USER_DIRS):
    """The virtiofsd binaries libvirt would try, in its order."""
    files = {}
    for directory in dirs:
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            if name.endswith('.json'):
                files[name] = os.path.join(directory, name)
    binaries = []
    for name in sorted(files):
        try:
            with open(files[name]) as f:
                doc = json.load(f)
        except (OSError, ValueError):
            continue      # an empty file in /etc masks the packaged one
        if isinstance(doc, dict) and doc.get('type') == 'fs' and \
                isinstance(doc.get('binary'), str):
            binaries.append(doc['binary'])
    return binaries


def virtiofsd_features(binary, timeout=10):
    """What ``binary --print-capabilities`` says, as libvirt asks it; an
    empty set when it cannot say (Debian 12's C virtiofsd)."""
    try:
        result = subprocess.run([binary, '--print-capabilities'],
                                capture_output=True, timeout=timeout)
        doc = json.loads(result.stdout)
    except (OSError, ValueError, subprocess.SubprocessError):
        return frozenset()
    features = doc.get('features') if isinstance(doc, dict) else None
    return frozenset(f for f in features or () if isinstance(f, str))


def agent_publishes(uuid, now=None):
    """Whether an agent keeps the instance's share current: its meta file
    (readable by all, as guests read it) was updated within three of its
    update intervals."""
    path = os.path.join(export_path(uuid), layout.META_FILE)
    try:
        with open(path, 'rb') as f:
            meta = json.loads(f.read(layout.MAX_META_BYTES))
        updated = float(meta['updated'])
        interval = float(meta['update_interval_s'])
    except (OSError, ValueError, TypeError, KeyError):
        return False
    now = time.time() if now is None else now
    return now - updated <= 3 * interval + HANDOFF_POLL_S


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

    _share_migration = None     # (bool, why not), probed once

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
            # The domain runs here again: a hold this host took when it
            # stopped ends, and counters carried from elsewhere apply.
            self._release_counters(instance)
            self._offer_counters(instance,
                                 instance.system_metadata.get(
                                     SYSMETA_COUNTERS_KEY))
        return super()._create_guest(context, xml, instance, *args,
                                     **kwargs)

    # -- counters that follow the instance (handoff.py) --

    def _record_counters(self, instance, expires=None):
        """Freeze the instance's counters here (until released, or the
        wall-clock time ``expires``) and put their values in its system
        metadata (saved by the caller's compute manager, or by ``save``);
        never fails the operation."""
        token = uuidlib.uuid4().hex
        try:
            mounts.hold_counters(instance.uuid, token, expires)
            # No agent keeps this share current: nobody would answer, and
            # every stop and migration would wait for nothing.
            answer = (self._wait_held(instance, token)
                      if agent_publishes(instance.uuid) else None)
        except Exception as exc:
            LOG.warning('Could not hold the energy counters (%s); the next '
                        'host continues from the last values recorded',
                        exc, instance=instance)
            return None
        if answer is None:
            LOG.warning('The scaph-openstack agent did not answer within '
                        '%.0f s; the next host continues from the last '
                        'values recorded', CONF.scaphandre.handoff_timeout,
                        instance=instance)
            return None
        counters = answer.at_least(self._carried(instance))
        instance.system_metadata[SYSMETA_COUNTERS_KEY] = json.dumps(
            counters.as_dict(), sort_keys=True)
        return counters

    def _wait_held(self, instance, token):
        deadline = time.monotonic() + CONF.scaphandre.handoff_timeout
        while True:
            doc = mounts.held_counters(instance.uuid, token)
            if doc is not None:
                return handoff.Counters.from_dict(doc)
            if time.monotonic() >= deadline:
                return None
            time.sleep(HANDOFF_POLL_S)

    @staticmethod
    def _carried(instance):
        recorded = instance.system_metadata.get(SYSMETA_COUNTERS_KEY)
        if not recorded:
            return None
        try:
            return handoff.Counters.from_dict(json.loads(recorded))
        except (ValueError, handoff.HandoffError) as exc:
            LOG.warning('Ignoring unusable %s: %s', SYSMETA_COUNTERS_KEY,
                        exc, instance=instance)
            return None

    def _offer_counters(self, instance, recorded):
        if not recorded:
            return
        try:
            mounts.start_counters(instance.uuid, json.loads(recorded))
        except Exception as exc:
            LOG.warning('Could not carry the energy counters here (%s): '
                        'they start from this host\'s own', exc,
                        instance=instance)

    def _release_counters(self, instance):
        try:
            mounts.release_counters(instance.uuid)
        except Exception as exc:
            LOG.warning('Could not release the energy counters: %s', exc,
                        instance=instance)

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

    def _probe_share_migration(self):
        """(True, '') where libvirt and virtiofsd here can migrate and
        save a domain with the share, else (False, why)."""
        if not self._host.has_min_version(
                lv_ver=MIN_LIBVIRT_VIRTIOFS_MIGRATION):
            return False, _('libvirt on %s is older than %s') % (
                CONF.host, '.'.join(map(str, MIN_LIBVIRT_VIRTIOFS_MIGRATION)))
        binaries = ([CONF.scaphandre.virtiofsd_path]
                    if CONF.scaphandre.virtiofsd_path
                    else virtiofsd_from_descriptors())
        for binary in binaries:
            if MIGRATE_PRECOPY in virtiofsd_features(binary):
                return True, ''
        return False, _('virtiofsd on %(host)s (%(binaries)s) does not say '
                        '%(feature)s') % {
            'host': CONF.host, 'binaries': ', '.join(binaries) or 'none',
            'feature': MIGRATE_PRECOPY}

    def _share_migratable(self):
        if self._share_migration is None:
            self._share_migration = self._probe_share_migration()
            LOG.info('scaph-openstack share: live migration and suspend '
                     '%s', 'allowed' if self._share_migration[0] else
                     'refused (%s)' % self._share_migration[1])
        return self._share_migration

    @staticmethod
    def _source_share_migratable(src_compute_info):
        """What the destination can tell of the source: its QEMU version
        (the compute node's hypervisor_version). A source whose QEMU
        cannot carry virtiofsd's state refuses whatever the destination,
        and its own refusal would be retried on every other host, so the
        destination says no for good. The source's own check stays the
        backstop for the rest (its libvirt and virtiofsd)."""
        try:
            version = int(src_compute_info['hypervisor_version'])
        except (TypeError, KeyError, ValueError):
            return True, ''
        major, rest = divmod(version, 1000000)
        minor, micro = divmod(rest, 1000)
        if (major, minor, micro) >= MIN_QEMU_VIRTIOFS_MIGRATION:
            return True, ''
        return False, _('the source host\'s QEMU %(have)s is older than '
                        '%(need)s') % {
            'have': '%d.%d.%d' % (major, minor, micro),
            'need': '.'.join(map(str, MIN_QEMU_VIRTIOFS_MIGRATION))}

    def _refusal(self, instance, why):
        return _('instance %(uuid)s has the scaph-openstack energy share, '
                 'a virtiofs device, which cannot be live migrated here: '
                 '%(why)s. Cold migrate it instead (migrate or resize), '
                 'which recreates the share on the destination') % {
            'uuid': instance.uuid, 'why': why}

    # Runs on the destination, first of the per-host checks. The conductor
    # (LiveMigrationTask._find_destination) tries the next host on Invalid
    # or MigrationPreCheckError, and the destination's compute manager
    # wraps whatever the source's check raises into MigrationPreCheckError,
    # so only a refusal from here can end the request: NoValidHost, which
    # the conductor passes on (migration 'error', instance left ACTIVE on
    # its host, the scheduler's claim on this host given back). Hosts of
    # one cloud run one stack, so a refusal here is one everywhere.
    def check_can_live_migrate_destination(self, context, instance,
                                           *args, **kwargs):
        if self._recorded_share(instance):
            allowed, why = self._share_migratable()
            if allowed:
                allowed, why = self._source_share_migratable(
                    kwargs.get('src_compute_info',
                               args[0] if args else None))
            if not allowed:
                raise exception.NoValidHost(
                    reason=self._refusal(instance, why))
        return super().check_can_live_migrate_destination(
            context, instance, *args, **kwargs)

    # The backstop, where the record is missing or wrong (a domain defined
    # before the options changed): the running domain decides. Only the
    # conductor's next host comes of it (see above). Where the migration
    # may go on, the counters are held here from now on: the destination
    # continues from their values (pre_live_migration).
    def check_can_live_migrate_source(self, context, instance,
                                      dest_check_data, *args, **kwargs):
        with_share = self._running_with_share(instance)
        if with_share:
            allowed, why = self._share_migratable()
            if not allowed:
                raise exception.MigrationPreCheckError(
                    reason=self._refusal(instance, why))
        result = super().check_can_live_migrate_source(
            context, instance, dest_check_data, *args, **kwargs)
        # With a deadline: when the destination fails to prepare, Nova
        # rolls back without telling this driver. live_migration, which
        # runs once it has prepared, makes the hold last.
        if with_share and self._record_counters(
                instance, expires=time.time() + LIVE_MIGRATION_HOLD_S
        ) is not None:
            # The conductor's copy of the instance, which goes on to the
            # destination, predates this: the database carries it.
            instance.save()
        return result

    def pre_live_migration(self, context, instance, block_device_info,
                           network_info, disk_info, migrate_data):
        if self._recorded_share(instance):
            # libvirt's incoming domain needs the share directory, and the
            # guest must find the source's values in it when it runs here.
            self._ensure_share(instance)
            self._offer_counters(instance,
                                 self._recorded_in_database(context,
                                                            instance))
        return super().pre_live_migration(
            context, instance, block_device_info, network_info, disk_info,
            migrate_data)

    @staticmethod
    def _recorded_in_database(context, instance):
        """The counters recorded by the source's check, which the
        conductor's copy of the instance (passed on to the source's
        live_migration and the destination's pre_live_migration)
        predates; copied into ``instance``."""
        fresh = objects.Instance.get_by_uuid(
            context, instance.uuid, expected_attrs=['system_metadata'])
        recorded = fresh.system_metadata.get(SYSMETA_COUNTERS_KEY)
        if recorded:
            instance.system_metadata[SYSMETA_COUNTERS_KEY] = recorded
        return recorded

    def live_migration(self, context, instance, *args, **kwargs):
        # The destination is prepared: the hold lasts until the migration
        # ends (post_live_migration) or fails (the rollback below).
        carried = (self._carried(instance)
                   if self._recorded_in_database(context, instance)
                   else None)
        if carried is not None:
            try:
                mounts.hold_counters(instance.uuid, carried.token)
            except Exception as exc:
                LOG.warning('Could not renew the energy counters\' hold: %s',
                            exc, instance=instance)
        return super().live_migration(context, instance, *args, **kwargs)

    def rollback_live_migration_at_source(self, context, instance,
                                          migrate_data):
        # The instance stays here: its counters grow again.
        self._release_counters(instance)
        return super().rollback_live_migration_at_source(
            context, instance, migrate_data)

    def migrate_disk_and_power_off(self, context, instance, *args,
                                   **kwargs):
        # Cold migration and resize: the compute manager saves the
        # instance right after, with the recorded counters.
        if self._running_with_share(instance):
            self._record_counters(instance)
        return super().migrate_disk_and_power_off(context, instance, *args,
                                                  **kwargs)

    def power_off(self, instance, *args, **kwargs):
        # Stop and shelve: the next start, here or on another host
        # (unshelve, evacuate), continues from these values.
        if self._running_with_share(instance):
            self._record_counters(instance)
        return super().power_off(instance, *args, **kwargs)

    def destroy(self, context, instance, *args, **kwargs):
        # A reverted resize's destination hands what it counted back to
        # the source. Not the other destroys: a deletion has nobody to hand
        # it to, and hard reboot, power on, rescue destroy a domain that
        # starts again here at once (_create_guest releases).
        if instance.task_state == task_states.RESIZE_REVERTING and \
                self._running_with_share(instance):
            self._record_counters(instance)
        return super().destroy(context, instance, *args, **kwargs)

    def suspend(self, context, instance, *args, **kwargs):
        if self._running_with_share(instance):
            allowed, why = self._share_migratable()
            if not allowed:
                # InstanceFaultRollback: the compute manager puts the
                # instance back to ACTIVE instead of ERROR, and records the
                # reason.
                raise exception.InstanceFaultRollback(
                    inner_exception=exception.InstanceSuspendFailure(
                        reason=_('instance %(uuid)s has the scaph-openstack '
                                 'energy share, a virtiofs device, and '
                                 'this host cannot save it: %(why)s; stop '
                                 'or shelve it instead') % {
                            'uuid': instance.uuid, 'why': why}))
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
