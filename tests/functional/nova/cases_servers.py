"""Servers booted through the Nova API with scaphandre.LibvirtDriver.

Nova's own functional harness from the nova wheel (ServersTestBase:
fakelibvirt, placement, fake Neutron/Glance/Cinder, the API through
wsgi-intercept). Every domain definition is recorded with what the
instance's share directory held at that moment.

The outer pytest run does not collect this file: test_nova_servers.py
runs it in a fresh interpreter (see harness.py for why).
"""

import os

# Native threads, as nova-compute runs in production. It must be chosen
# before anything imports eventlet (oslo.privsep does) or urllib3.
os.environ.setdefault('OS_NOVA_DISABLE_EVENTLET_PATCHING', '1')
from nova import monkey_patch  # noqa: E402

monkey_patch.patch(backend='threading')

import collections  # noqa: E402
import copy  # noqa: E402
import stat  # noqa: E402
import sys  # noqa: E402
import sysconfig  # noqa: E402
from unittest import mock  # noqa: E402

import fixtures  # noqa: E402
from lxml import etree  # noqa: E402
from oslo_utils.fixture import uuidsentinel as uuids  # noqa: E402

from nova.compute import rpcapi as compute_rpcapi  # noqa: E402
from nova import conf as nova_conf  # noqa: E402
from nova.tests.fixtures import libvirt as fakelibvirt  # noqa: E402
from nova.tests.functional.api import client  # noqa: E402
from nova.tests.functional.libvirt import base  # noqa: E402

from scaph_openstack.conf import nova as scaph_conf  # noqa: E402
# Also registers [scaphandre] on Nova's CONF for the tests' flags.
from scaph_openstack.nova import driver  # noqa: E402
from scaph_openstack import privsep  # noqa: E402
from scaph_openstack.share import layout  # noqa: E402
from scaph_openstack.share import tree  # noqa: E402

CONF = nova_conf.CONF
XML_OUT_ENV = 'SCAPH_NOVA_XML_OUT'
VIRT_TYPE_ENV = 'SCAPH_NOVA_VIRT_TYPE'  # e.g. qemu for a TCG guest
SHARE_ON = {scaph_conf.FLAVOR_SPEC: 'true'}
SHARE_OFF = {scaph_conf.FLAVOR_SPEC: 'false'}

# One defineXML call: the host it went to, the XML, and the files of the
# instance's share directory at that moment (None: no directory).
Defined = collections.namedtuple('Defined', 'host uuid xml share')


def api_paste_config():
    """Nova's api-paste.ini as the wheel installs it (<venv>/etc/nova)."""
    for prefix in (sys.prefix, sysconfig.get_path('data')):
        path = os.path.join(prefix, 'etc', 'nova', 'api-paste.ini')
        if os.path.exists(path):
            return path
    raise RuntimeError('api-paste.ini of the nova wheel not found under %s'
                       % sys.prefix)


def read_tree(path):
    """{relative path: bytes} of every file under path, None if absent."""
    if not os.path.isdir(path):
        return None
    files = {}
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            full = os.path.join(dirpath, name)
            with open(full, 'rb') as f:
                files[os.path.relpath(full, path)] = f.read()
    return files


def initial_tree(uuid):
    return {os.path.join(subdir, name): data for (subdir, name), data
            in layout.initial_files(uuid).items()}


def make_writable(root):
    # The share tree is 0555/0444, as the guest must see it; let the
    # temporary directory go away even when the tests do not run as root.
    for dirpath, dirs, _names in os.walk(root):
        for name in dirs:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, stat.S_IRWXU)


def filesystems(xml):
    return etree.fromstring(xml.encode()).findall('./devices/filesystem')


class ShareServersTestBase(base.ServersTestBase):
    """One compute host, [scaphandre] attach = ATTACH."""

    microversion = 'latest'
    ADMIN_API = True
    ATTACH = scaph_conf.ATTACH_OPT_IN
    COMPUTES = ('compute1',)

    def setUp(self):
        super().setUp()
        self._setup_share_dirs()
        # Run the privsep entrypoint (create_instance_share) in-process.
        privsep.sys_admin.set_client_mode(False)
        self.addCleanup(privsep.sys_admin.set_client_mode, True)
        self.defined = []
        define = fakelibvirt.Connection.defineXML
        self.useFixture(fixtures.MonkeyPatch(
            'nova.tests.fixtures.libvirt.Connection.defineXML',
            lambda conn, xml: self._record_define(define, conn, xml)))
        for host in self.COMPUTES:
            self.start_compute(host)

    def _setup_share_dirs(self):
        root = self.useFixture(fixtures.TempDir()).path
        self.addCleanup(make_writable, root)
        self.work_dir = os.path.join(root, 'shares')
        os.mkdir(self.work_dir)
        # Stands for the read-only bind mount of work_dir.
        self.export_dir = os.path.join(root, 'export')
        os.symlink(self.work_dir, self.export_dir)
        self.flags(attach=self.ATTACH, work_dir=self.work_dir,
                   export_dir=self.export_dir, manage_mounts=False,
                   group='scaphandre')
        # A plain directory stands for the tmpfs (tests only may say so).
        self.flags(require_tmpfs=False, group='scaph_openstack_privsep')

    def _setup_compute_service(self):
        # ServersTestBase forces libvirt.LibvirtDriver here; this runs
        # before the API starts, which needs the wheel's paste file.
        self.flags(compute_driver='scaphandre.LibvirtDriver')
        self.flags(api_paste_config=api_paste_config(), group='wsgi')
        self.flags(virt_type=os.environ.get(VIRT_TYPE_ENV, 'kvm'),
                   group='libvirt')

    def _clear_attrs(self):
        # Nova deletes the test's public attributes after each test (to
        # save memory under stestr); under pytest that removes attributes
        # pytest itself deletes later, which then fails.
        pass

    def _record_define(self, define, conn, xml):
        uuid = etree.fromstring(xml.encode()).findtext('uuid')
        self.defined.append(Defined(
            conn.getHostname(), uuid, xml,
            read_tree(os.path.join(self.export_dir, uuid))))
        return define(conn, xml)

    # -- helpers --

    def _flavor(self, extra_spec=None):
        return self._create_flavor(memory_mb=512, vcpu=1, disk=1,
                                   ephemeral=0, extra_spec=extra_spec)

    def _boot(self, extra_spec=None, image_uuid=None, host=None):
        return self._create_server(
            flavor_id=self._flavor(extra_spec), image_uuid=image_uuid,
            networks='none', host=host)

    def _image(self, **properties):
        image = copy.deepcopy(self.glance.image1)
        image['id'] = getattr(uuids, 'image_%s' % '_'.join(
            '%s_%s' % item for item in sorted(properties.items())))
        image['properties'].update(properties)
        self.glance.create(None, image)
        return image['id']

    def _sysmeta(self, server):
        # What the compute manager saved with the instance.
        from nova import context as nova_context
        from nova import objects
        return objects.Instance.get_by_uuid(
            nova_context.get_admin_context(), server['id'],
            expected_attrs=['system_metadata']).system_metadata

    def _forget_record(self, server):
        # As an instance whose XML an older driver generated.
        from nova import context as nova_context
        from nova import objects
        instance = objects.Instance.get_by_uuid(
            nova_context.get_admin_context(), server['id'],
            expected_attrs=['system_metadata'])
        del instance.system_metadata[driver.SYSMETA_ATTACHED_KEY]
        instance.save()

    def _last_define(self, server):
        records = [d for d in self.defined if d.uuid == server['id']]
        self.assertTrue(records, 'no domain defined for %s' % server['id'])
        return records[-1]

    def _remove_share(self, server):
        path = os.path.join(self.work_dir, server['id'])
        make_writable(path)
        os.chmod(path, stat.S_IRWXU)
        for dirpath, _dirs, names in os.walk(path, topdown=False):
            for name in names:
                os.unlink(os.path.join(dirpath, name))
            os.rmdir(dirpath)
        self.assertFalse(os.path.exists(os.path.join(self.export_dir,
                                                     server['id'])))

    # -- assertions --

    def assertShareXML(self, xml, uuid):
        devices = filesystems(xml)
        self.assertEqual(1, len(devices), xml)
        fs = devices[0]
        self.assertEqual('mount', fs.get('type'))
        self.assertEqual('passthrough', fs.get('accessmode'))
        self.assertEqual('virtiofs', fs.find('driver').get('type'))
        self.assertEqual(os.path.join(self.export_dir, uuid),
                         fs.find('source').get('dir'))
        self.assertEqual(layout.DEFAULT_TAG, fs.find('target').get('dir'))
        # The fake libvirt is older than 11.0: no <readonly/> (libvirt
        # 9.0 rejects it), the bind mount is read-only instead.
        self.assertIsNone(fs.find('readonly'))
        backing = etree.fromstring(xml.encode()).find('./memoryBacking')
        self.assertIsNotNone(backing, xml)
        self.assertEqual('memfd', backing.find('source').get('type'))
        self.assertEqual('shared', backing.find('access').get('mode'))

    def assertNoShareXML(self, xml):
        self.assertEqual([], filesystems(xml))
        self.assertIsNone(
            etree.fromstring(xml.encode()).find('./memoryBacking/access'))

    def assertShareReadyAtDefine(self, record):
        """The directory existed with its initial files when libvirt was
        given the domain: it starts with virtiofsd serving it."""
        self.assertEqual(initial_tree(record.uuid), record.share)

    def assertDefinedWithShare(self, server, generated=True):
        """generated=False: the XML was not generated by the driver but
        saved from (fake) libvirt, as resume and unrescue do."""
        record = self._last_define(server)
        if generated:
            self.assertShareXML(record.xml, server['id'])
        else:
            self.assertTrue(driver.share_devices(record.xml, server['id']))
        self.assertShareReadyAtDefine(record)
        return record


class OptInTest(ShareServersTestBase):

    def test_flavor_opt_in(self):
        server = self._boot(SHARE_ON)
        record = self.assertDefinedWithShare(server)
        # harness.domain_xml(): end-to-end tests boot it in libvirtd.
        if os.environ.get(XML_OUT_ENV):
            with open(os.environ[XML_OUT_ENV], 'w') as f:
                f.write(record.xml)

    def test_plain_flavor_gets_nothing(self):
        server = self._boot()
        self.assertNoShareXML(self._last_define(server).xml)
        self.assertFalse(os.path.exists(
            os.path.join(self.work_dir, server['id'])))

    def test_flavor_opt_out_is_nothing(self):
        server = self._boot(SHARE_OFF)
        self.assertNoShareXML(self._last_define(server).xml)

    def test_image_property_opt_in_not_honored(self):
        # Default honor_image_property = false: a tenant's image cannot
        # make its instance non-migratable.
        image = self._image(**{scaph_conf.IMAGE_PROPERTY: 'true'})
        server = self._boot(image_uuid=image)
        self.assertNoShareXML(self._last_define(server).xml)
        self.assertFalse(os.path.exists(
            os.path.join(self.work_dir, server['id'])))
        # ...and it stays live-migratable as far as the driver goes.
        self.assertEqual('False', self._sysmeta(server).get(
            driver.SYSMETA_ATTACHED_KEY))

    def test_flavor_overrides_image(self):
        image = self._image(**{scaph_conf.IMAGE_PROPERTY: 'true'})
        server = self._boot(SHARE_OFF, image_uuid=image)
        self.assertNoShareXML(self._last_define(server).xml)

    def test_hard_reboot_recreates_share(self):
        server = self._boot(SHARE_ON)
        self._remove_share(server)
        count = len(self.defined)
        self._reboot_server(server, hard=True)
        self.assertGreater(len(self.defined), count)
        self.assertDefinedWithShare(server)

    def test_hard_reboot_without_nova_share_warning(self):
        # Nova builds device metadata at the end of a hard reboot (and of
        # attach_volume, attach_interface) and warned about the
        # energy share's <filesystem>, which no Manila share backs.
        server = self._boot(SHARE_ON)
        self._reboot_server(server, hard=True)
        self.assertDefinedWithShare(server)
        self.assertNotIn('not linked to any share',
                         self.stdlog.logger.output)

    def test_share_recorded_in_system_metadata(self):
        server = self._boot(SHARE_ON)
        self.assertEqual('True', self._sysmeta(server).get(
            driver.SYSMETA_ATTACHED_KEY))

    def test_agent_counters_survive_hard_reboot(self):
        server = self._boot(SHARE_ON)
        # What the agent wrote since: the hook must not lower it.
        files = layout.zone_files(123000000)
        written = {os.path.join(subdir, name): data
                   for (subdir, name), data in files.items()}
        tree.ShareTree(self.work_dir).write_instance(server['id'], files)
        self._reboot_server(server, hard=True)
        share = self._last_define(server).share
        for path, data in written.items():
            self.assertEqual(data, share[path])

    def test_power_on_recreates_share(self):
        server = self._boot(SHARE_ON)
        self._stop_server(server)
        self._remove_share(server)
        self._start_server(server)
        self.assertDefinedWithShare(server)

    def test_rescue_and_unrescue_recreate_share(self):
        server = self._boot(SHARE_ON)
        # Rescue saves unrescue.xml there; ServersTestBase mocks the
        # _create_image that makes it.
        os.makedirs(os.path.join(CONF.instances_path, server['id']))
        self._remove_share(server)
        self._rescue_server(server)
        self.assertDefinedWithShare(server)
        self._remove_share(server)
        self._unrescue_server(server)
        self.assertDefinedWithShare(server, generated=False)

    def test_flavor_extra_spec_validated(self):
        flavor = self._flavor()
        for key, value, error in (
                (scaph_conf.FLAVOR_SPEC, 'maybe', 'not a valid boolean'),
                ('scaphandre:shares', 'true', 'scaphandre:shares')):
            exc = self.assertRaises(
                client.OpenStackApiException,
                self.admin_api.post_extra_spec, flavor,
                {'extra_specs': {key: value}})
            self.assertEqual(400, exc.response.status_code)
            self.assertIn(error, exc.response.text)


class HonorImagePropertyTest(ShareServersTestBase):

    def setUp(self):
        super().setUp()
        self.flags(honor_image_property=True, group='scaphandre')

    def test_image_property_opt_in(self):
        image = self._image(**{scaph_conf.IMAGE_PROPERTY: 'true'})
        server = self._boot(image_uuid=image)
        self.assertDefinedWithShare(server)

    def test_flavor_still_overrides_image(self):
        image = self._image(**{scaph_conf.IMAGE_PROPERTY: 'true'})
        server = self._boot(SHARE_OFF, image_uuid=image)
        self.assertNoShareXML(self._last_define(server).xml)


class AttachAllTest(ShareServersTestBase):
    ATTACH = scaph_conf.ATTACH_ALL

    def test_plain_flavor_gets_share(self):
        self.assertDefinedWithShare(self._boot())

    def test_flavor_opt_out(self):
        server = self._boot(SHARE_OFF)
        self.assertNoShareXML(self._last_define(server).xml)

    def test_image_opt_out(self):
        image = self._image(**{scaph_conf.IMAGE_PROPERTY: 'false'})
        server = self._boot(image_uuid=image)
        self.assertNoShareXML(self._last_define(server).xml)


class AttachNoneTest(ShareServersTestBase):
    ATTACH = scaph_conf.ATTACH_NONE

    def test_flavor_opt_in_ignored(self):
        server = self._boot(SHARE_ON)
        self.assertNoShareXML(self._last_define(server).xml)
        self.assertEqual([], os.listdir(self.work_dir))


class SuspendTest(ShareServersTestBase):
    # Casts stay casts: the refusal comes back as an instance action.
    CAST_AS_CALL = False

    def test_suspend_refused_instance_stays_active(self):
        server = self._boot(SHARE_ON)
        saved = []
        self.useFixture(fixtures.MonkeyPatch(
            'nova.tests.fixtures.libvirt.Domain.managedSave',
            lambda dom, flags: saved.append(dom)))
        self.api.post_server_action(server['id'], {'suspend': {}})
        event = self._wait_for_action_fail_completion(
            server, 'suspend', 'compute_suspend_instance')
        self.assertIn('this host cannot save it', event['details'])
        server = self._wait_for_server_parameter(
            server, {'status': 'ACTIVE', 'OS-EXT-STS:task_state': None})
        self.assertEqual([], saved)

    def test_suspend_without_share_works(self):
        server = self._boot()
        self._suspend_server(server)
        self._resume_server(server)

    def test_resume_recreates_share(self):
        # A guest suspended with the share (fakelibvirt can save it; only
        # the driver's refusal is lifted) resumes from its saved XML.
        server = self._boot(SHARE_ON)
        with mock.patch.object(driver.LibvirtDriver, '_running_with_share',
                               return_value=False):
            self._suspend_server(server)
        self._remove_share(server)
        self._resume_server(server)
        self.assertDefinedWithShare(server, generated=False)


class MigrationTest(base.LibvirtMigrationMixin, ShareServersTestBase):
    CAST_AS_CALL = False
    COMPUTES = ('src', 'dest')

    def setUp(self):
        super().setUp()
        self.src = self.computes['src']
        self.dest = self.computes['dest']

    def assertRefusedByDestination(self, host='dest'):
        # The destination's check says why (instance action event details,
        # microversion 2.84) with NoValidHost, which ends the conductor's
        # request instead of sending it to the next host.
        event = self._wait_for_action_fail_completion(
            self.server, 'live-migration',
            'compute_check_can_live_migrate_destination')
        self.assertEqual(host, event['host'])
        self.assertIn('which cannot be live migrated here',
                      event['details'])
        event = self._wait_for_action_fail_completion(
            self.server, 'live-migration', 'conductor_live_migrate_instance')
        self.assertIn('No valid host', event['details'])
        self.assertIn('scaph-openstack energy share', event['details'])
        # Refused before anything happened on the destination.
        self.assertFalse(self.migrate_stub_ran)
        server = self.api.get_server(self.server['id'])
        self.assertEqual('src', server['OS-EXT-SRV-ATTR:host'])

    def test_live_migration_to_host_refused(self):
        self.server = self._boot(SHARE_ON, host='src')
        with mock.patch.object(self.dest.driver, 'pre_live_migration') as pre:
            self._live_migrate(self.server, migration_expected_state='error',
                               server_expected_state='ACTIVE', host='dest')
        pre.assert_not_called()
        self.assertRefusedByDestination()

    def test_live_migration_scheduled_refused(self):
        self.server = self._boot(SHARE_ON, host='src')
        self._live_migrate(self.server, migration_expected_state='error',
                           server_expected_state='ACTIVE')
        self.assertRefusedByDestination()

    def test_live_migration_source_backstop(self):
        # No record on the instance and options that give it no share
        # (an XML from before the options changed): the destination lets
        # it through, the source's running domain refuses.
        self.server = self._boot(SHARE_ON, host='src')
        self._forget_record(self.server)
        self.flags(attach=scaph_conf.ATTACH_NONE, group='scaphandre')
        self._live_migrate(self.server, migration_expected_state='error',
                           server_expected_state='ACTIVE')
        event = self._wait_for_action_fail_completion(
            self.server, 'live-migration',
            'compute_check_can_live_migrate_source')
        self.assertEqual('src', event['host'])
        self.assertIn('which cannot be live migrated here', event['details'])
        self.assertFalse(self.migrate_stub_ran)

    def test_live_migration_without_share_works(self):
        self.server = self._boot(host='src')
        self._live_migrate(self.server, host='dest')
        self.assertTrue(self.migrate_stub_ran)

    def test_cold_migration_destination_gets_share(self):
        server = self._boot(SHARE_ON, host='src')
        self._remove_share(server)
        self.useFixture(fixtures.MockPatch(
            'nova.virt.libvirt.driver.LibvirtDriver'
            '.migrate_disk_and_power_off', return_value='{}'))
        self._migrate_server(server, host='dest')
        record = self.assertDefinedWithShare(server)
        self.assertEqual('dest', record.host)
        self._confirm_resize(server)


def spy_destination_checks(test):
    """The destinations the conductor asks to check a live migration,
    in order: a list that fills as ``test`` runs (the real check still
    runs)."""
    tried = []
    check = compute_rpcapi.ComputeAPI.check_can_live_migrate_destination

    def spy(rpcapi, ctxt, instance, destination, *args, **kwargs):
        tried.append(destination)
        return check(rpcapi, ctxt, instance, destination, *args, **kwargs)
    test.useFixture(fixtures.MonkeyPatch(
        'nova.compute.rpcapi.ComputeAPI.'
        'check_can_live_migrate_destination', spy))
    return tried


class LiveMigrationRetryTest(ShareServersTestBase):
    """Three hosts a refused live migration could be sent to: how many
    does the conductor try?"""

    CAST_AS_CALL = False
    COMPUTES = ('src', 'dest1', 'dest2', 'dest3')

    def setUp(self):
        super().setUp()
        self.tried = spy_destination_checks(self)
        self.migrated = []
        self.useFixture(fixtures.MonkeyPatch(
            'nova.tests.fixtures.libvirt.Domain.migrateToURI3',
            lambda *args: self.migrated.append(args)))

    def _migrate_refused(self, server):
        self._live_migrate(server, migration_expected_state='error',
                           server_expected_state='ACTIVE')
        self.assertEqual([], self.migrated)
        server = self.api.get_server(server['id'])
        self.assertEqual('src', server['OS-EXT-SRV-ATTR:host'])
        # Every claim the scheduler made on a destination was given back.
        src = self._get_provider_uuid_by_host('src')
        self.assertEqual(
            [src], list(self._get_allocations_by_server_uuid(server['id'])))
        for host in self.COMPUTES[1:]:
            usages = self._get_provider_usages(
                self._get_provider_uuid_by_host(host))
            self.assertEqual(0, usages['VCPU'], host)

    def test_refusal_tries_one_destination(self):
        server = self._boot(SHARE_ON, host='src')
        self._migrate_refused(server)
        self.assertEqual(1, len(self.tried), self.tried)
        self.assertIn(self.tried[0], self.COMPUTES[1:])

    def test_refusal_without_record_tries_one_destination(self):
        # An XML from before the record: this host's options decide.
        server = self._boot(SHARE_ON, host='src')
        self._forget_record(server)
        self._migrate_refused(server)
        self.assertEqual(1, len(self.tried), self.tried)

    def test_source_backstop_walks_every_host(self):
        # What every refusal did before (the source refusing with
        # MigrationPreCheckError), and what the backstop still does when
        # neither the record nor the options know of the share:
        # [DEFAULT] migrate_max_retries (-1: no limit) bounds it.
        server = self._boot(SHARE_ON, host='src')
        self._forget_record(server)
        self.flags(attach=scaph_conf.ATTACH_NONE, group='scaphandre')
        self._migrate_refused(server)
        self.assertEqual(sorted(self.COMPUTES[1:]), sorted(self.tried))


class FileBackedMemoryTest(ShareServersTestBase):
    """Guests whose memory Nova already backs by a shared file keep it."""

    def test_file_backed_memory_keeps_its_source(self):
        # Needs a restart of the compute with the option set.
        self.flags(file_backed_memory=1024, group='libvirt')
        self.flags(ram_allocation_ratio=1.0, reserved_host_memory_mb=0)
        self.restart_compute_service('compute1', keep_hypervisor_state=True)
        server = self._boot(SHARE_ON)
        record = self._last_define(server)
        backing = etree.fromstring(record.xml.encode()).find(
            './memoryBacking')
        self.assertEqual('file', backing.find('source').get('type'))
        self.assertEqual(1, len(backing.findall('source')))
        self.assertEqual('shared', backing.find('access').get('mode'))
        self.assertShareReadyAtDefine(record)
