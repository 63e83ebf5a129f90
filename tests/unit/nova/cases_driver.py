"""Unit cases of scaph_openstack.nova (driver, extra specs, shim).

They import Nova, so test_nova_unit.py runs them in a child interpreter
(isolated.py); they never start a Nova service.
"""

import json
import os
import threading
import time
import types
from unittest import mock
import uuid as uuidlib

from lxml import etree
from oslo_config import fixture as config_fixture
import pytest

from nova import exception
from nova.virt.libvirt import config as vconfig
from nova.virt.libvirt import driver as libvirt_driver

from scaph_openstack.conf import nova as scaph_conf
from scaph_openstack import handoff
from scaph_openstack.nova import driver
from scaph_openstack.nova import extra_specs
from scaph_openstack import privsep
from scaph_openstack.share import layout
from scaph_openstack.share import tree

UUID = str(uuidlib.UUID(int=42))
PARENT = 'nova.virt.libvirt.driver.LibvirtDriver.'
ON = {scaph_conf.FLAVOR_SPEC: 'true'}
OFF = {scaph_conf.FLAVOR_SPEC: 'false'}
IMAGE_ON = {driver.SYSMETA_IMAGE_KEY: 'True'}
IMAGE_OFF = {driver.SYSMETA_IMAGE_KEY: 'no'}
ENCRYPTED = {driver.MEM_ENCRYPTION_SPEC: 'true'}
IMAGE_ENCRYPTED = {driver.SYSMETA_MEM_ENCRYPTION_KEY: 'True'}


@pytest.fixture(autouse=True)
def privsep_in_process():
    # create_instance_share runs here instead of in a privsep daemon.
    privsep.sys_admin.set_client_mode(False)
    yield
    privsep.sys_admin.set_client_mode(True)


@pytest.fixture
def conf(tmp_path):
    fixture = config_fixture.Config(driver.CONF)
    fixture.setUp()
    work = tmp_path / 'shares'
    work.mkdir()
    export = tmp_path / 'export'
    export.symlink_to(work)  # stands for the read-only bind mount
    fixture.config(group='scaphandre', work_dir=str(work),
                   export_dir=str(export), manage_mounts=False)
    fixture.config(group='libvirt', virt_type='kvm')
    # tmp_path stands for the tmpfs (the privileged side's test switch).
    fixture.config(group='scaph_openstack_privsep', require_tmpfs=False)
    yield fixture
    fixture.cleanUp()


def instance(extra_specs=None, system_metadata=None):
    return types.SimpleNamespace(
        uuid=UUID, flavor=types.SimpleNamespace(extra_specs=extra_specs or {}),
        system_metadata=system_metadata or {})


def libvirt_driver_instance(xml=None, lv_ver_ok=False):
    """A LibvirtDriver without __init__: no libvirt connection."""
    drv = object.__new__(driver.LibvirtDriver)
    drv._host = mock.Mock()
    drv._host.has_min_version.return_value = lv_ver_ok
    if xml is None:
        drv._host.get_guest.side_effect = exception.InstanceNotFound(
            instance_id=UUID)
    else:
        drv._host.get_guest.return_value.get_xml_desc.return_value = xml
    return drv


def guest_with_share(conf, readonly=False, binary=None):
    guest = vconfig.LibvirtConfigGuest()
    fs = driver.ShareFilesys()
    fs.source_dir = driver.export_path(UUID)
    fs.target_dir = 'scaphandre'
    fs.readonly = readonly
    fs.binary_path = binary
    guest.add_device(fs)
    return guest


def domain_xml(devices=''):
    return ("<domain type='kvm'><name>instance-1</name><uuid>%s</uuid>"
            "<devices>%s</devices></domain>" % (UUID, devices))


def share_fs_xml(path, driver_type='virtiofs'):
    return ("<filesystem type='mount' accessmode='passthrough'>"
            "<driver type='%s'/><source dir='%s'/>"
            "<target dir='scaphandre'/></filesystem>" % (driver_type, path))


# -- which instances get the share --

@pytest.mark.parametrize('attach, specs, sysmeta, expected', [
    ('opt-in', {}, {}, False),
    ('opt-in', ON, {}, True),
    ('opt-in', OFF, {}, False),
    ('opt-in', {}, IMAGE_ON, True),
    ('opt-in', OFF, IMAGE_ON, False),     # the flavor wins
    ('opt-in', ON, IMAGE_OFF, True),
    ('all', {}, {}, True),
    ('all', OFF, {}, False),
    ('all', {}, IMAGE_OFF, False),
    ('all', ON, IMAGE_OFF, True),
    ('none', ON, IMAGE_ON, False),
])
def test_wants_share(attach, specs, sysmeta, expected):
    assert driver.wants_share(attach, specs, sysmeta,
                              honor_image_property=True) is expected


@pytest.mark.parametrize('attach, specs, sysmeta, expected', [
    # The tenant's image cannot ask for the share...
    ('opt-in', {}, IMAGE_ON, False),
    ('opt-in', ON, {}, True),             # ...the operator's flavor can
    ('opt-in', OFF, IMAGE_ON, False),
    ('all', {}, IMAGE_ON, True),          # what attach gives anyway
    ('all', {}, IMAGE_OFF, False),        # saying no is always honored
])
def test_image_property_not_honored_by_default(attach, specs, sysmeta,
                                               expected):
    assert driver.wants_share(attach, specs, sysmeta) is expected


@pytest.mark.parametrize('specs, sysmeta', [
    (dict(ON, **ENCRYPTED), {}),
    (ON, IMAGE_ENCRYPTED),
    ({}, dict(IMAGE_ON, **IMAGE_ENCRYPTED)),
    ({driver.MEM_ENCRYPTION_SPEC: 'yes'}, {}),   # Nova's non-strict bool
])
@pytest.mark.parametrize('attach', ['opt-in', 'all'])
def test_memory_encryption_never_gets_the_share(attach, specs, sysmeta):
    assert not driver.wants_share(attach, specs, sysmeta,
                                  honor_image_property=True)


def test_memory_encryption_false_changes_nothing():
    specs = dict(ON, **{driver.MEM_ENCRYPTION_SPEC: 'false',
                        'hw:mem_encryption_model': 'amd-sev-snp'})
    assert driver.wants_share('opt-in', specs, {})


def test_invalid_values_are_ignored_with_a_warning():
    with mock.patch.object(driver.LOG, 'warning') as warning:
        assert driver.share_requested(
            {scaph_conf.FLAVOR_SPEC: 'maybe'}, IMAGE_ON,
            honor_image_property=True) is True
        assert driver.share_requested(
            {}, {driver.SYSMETA_IMAGE_KEY: 'perhaps'}) is None
    assert warning.call_count == 2


# -- the XML pieces --

def test_filesystem_xml(conf):
    fs = guest_with_share(conf).devices[0].format_dom()
    assert fs.get('type') == 'mount'
    assert fs.get('accessmode') == 'passthrough'
    assert fs.find('driver').get('type') == 'virtiofs'
    assert fs.find('source').get('dir') == os.path.join(
        conf.conf.scaphandre.export_dir, UUID)
    assert fs.find('target').get('dir') == 'scaphandre'
    assert fs.find('readonly') is None and fs.find('binary') is None


def test_filesystem_xml_readonly_and_binary(conf):
    fs = guest_with_share(conf, readonly=True,
                          binary='/usr/libexec/virtiofsd').devices[0]
    dom = fs.format_dom()
    assert dom.find('readonly') is not None
    assert dom.find('binary').get('path') == '/usr/libexec/virtiofsd'


def test_memfd_backing_alone():
    guest = vconfig.LibvirtConfigGuest()
    driver.ensure_shared_memory(guest)
    xml = etree.tostring(guest.membacking.format_dom()).decode()
    assert xml == ('<memoryBacking><source type="memfd"/>'
                   '<access mode="shared"/></memoryBacking>')


def test_memfd_backing_keeps_nova_settings():
    guest = vconfig.LibvirtConfigGuest()
    guest.membacking = vconfig.LibvirtConfigGuestMemoryBacking()
    guest.membacking.locked = True
    guest.membacking.sharedpages = False
    driver.ensure_shared_memory(guest)
    dom = guest.membacking.format_dom()
    assert [e.tag for e in dom] == ['nosharepages', 'locked', 'source',
                                    'access']
    assert dom.find('source').get('type') == 'memfd'


def test_file_backed_memory_is_left_alone():
    guest = vconfig.LibvirtConfigGuest()
    backing = guest.membacking = vconfig.LibvirtConfigGuestMemoryBacking()
    backing.filesource = backing.sharedaccess = True
    driver.ensure_shared_memory(guest)
    assert guest.membacking is backing
    assert [e.get('type') for e in backing.format_dom().iter('source')] == [
        'file']


def test_hugepages_only_become_shared():
    guest = vconfig.LibvirtConfigGuest()
    backing = guest.membacking = vconfig.LibvirtConfigGuestMemoryBacking()
    page = vconfig.LibvirtConfigGuestMemoryBackingPage()
    page.size_kb, page.nodeset = 2048, [0]
    backing.hugepages = [page]
    driver.ensure_shared_memory(guest)
    assert guest.membacking is backing and backing.sharedaccess
    assert backing.format_dom().find('source') is None


def test_shared_numa_cells_are_enough():
    guest = vconfig.LibvirtConfigGuest()
    guest.cpu = vconfig.LibvirtConfigGuestCPU()
    guest.cpu.numa = vconfig.LibvirtConfigGuestCPUNUMA()
    for cell_id in (0, 1):
        cell = vconfig.LibvirtConfigGuestCPUNUMACell()
        cell.id, cell.memAccess = cell_id, 'shared'
        guest.cpu.numa.cells.append(cell)
    assert driver.has_shared_memory(guest)
    driver.ensure_shared_memory(guest)
    assert guest.membacking is None
    guest.cpu.numa.cells[1].memAccess = None
    assert not driver.has_shared_memory(guest)


def test_share_devices(conf):
    path = driver.export_path(UUID)
    assert len(driver.share_devices(domain_xml(share_fs_xml(path)),
                                    UUID)) == 1
    assert len(driver.share_devices(
        ('<?xml version="1.0" encoding="utf-8"?>' +
         domain_xml(share_fs_xml(path))), UUID)) == 1
    for other in (share_fs_xml('/elsewhere'), share_fs_xml(path, 'path'),
                  ''):
        assert driver.share_devices(domain_xml(other), UUID) == []
    assert driver.share_devices('not xml', UUID) == []


# -- _get_guest_config --

def get_guest_config(drv, inst, guest=None):
    guest = guest or vconfig.LibvirtConfigGuest()
    with mock.patch(PARENT + '_get_guest_config',
                    return_value=guest) as parent:
        result = drv._get_guest_config(inst, 'network_info', 'image_meta',
                                       {'mapping': {}}, share_info=None,
                                       old_guest='old')
    parent.assert_called_once_with(inst, 'network_info', 'image_meta',
                                   {'mapping': {}}, share_info=None,
                                   old_guest='old')
    return result


def filesystems(guest):
    return [d for d in guest.devices
            if isinstance(d, vconfig.LibvirtConfigGuestFilesys)]


def test_guest_config_opt_in(conf):
    guest = get_guest_config(libvirt_driver_instance(), instance(ON))
    [fs] = filesystems(guest)
    assert fs.source_dir == driver.export_path(UUID)
    assert fs.target_dir == layout.DEFAULT_TAG
    assert not fs.readonly and fs.binary_path is None
    assert guest.membacking.sharedaccess


def test_guest_config_not_asked(conf):
    guest = get_guest_config(libvirt_driver_instance(), instance())
    assert filesystems(guest) == [] and guest.membacking is None


def test_guest_config_options(conf):
    conf.config(group='scaphandre', attach='all', tag='energy',
                virtiofsd_path='/usr/libexec/virtiofsd')
    drv = libvirt_driver_instance(lv_ver_ok=True)
    [fs] = filesystems(get_guest_config(drv, instance()))
    assert fs.target_dir == 'energy' and fs.readonly
    assert fs.binary_path == '/usr/libexec/virtiofsd'
    drv._host.has_min_version.assert_called_with(lv_ver=(11, 0, 0))
    conf.config(group='scaphandre', readonly='never')
    [fs] = filesystems(get_guest_config(drv, instance()))
    assert not fs.readonly


def test_guest_config_lxc_never(conf):
    conf.config(group='libvirt', virt_type='lxc')
    guest = get_guest_config(libvirt_driver_instance(), instance(ON))
    assert filesystems(guest) == []


def test_guest_config_tag_taken(conf):
    guest = vconfig.LibvirtConfigGuest()
    other = vconfig.LibvirtConfigGuestFilesys()
    other.target_dir = layout.DEFAULT_TAG
    guest.add_device(other)
    with mock.patch.object(driver.LOG, 'warning') as warning:
        guest = get_guest_config(libvirt_driver_instance(), instance(ON),
                                 guest)
    assert filesystems(guest) == [other] and guest.membacking is None
    warning.assert_called_once()


def test_guest_config_image_opt_in_needs_honor(conf):
    inst = instance(system_metadata=dict(IMAGE_ON))
    guest = get_guest_config(libvirt_driver_instance(), inst)
    assert filesystems(guest) == [] and guest.membacking is None
    conf.config(group='scaphandre', honor_image_property=True)
    guest = get_guest_config(libvirt_driver_instance(), inst)
    assert len(filesystems(guest)) == 1


@pytest.mark.parametrize('attach', ['opt-in', 'all'])
def test_guest_config_encrypted_memory_requested(conf, attach):
    conf.config(group='scaphandre', attach=attach)
    guest = get_guest_config(libvirt_driver_instance(),
                             instance(dict(ON, **ENCRYPTED)))
    assert filesystems(guest) == [] and guest.membacking is None


@pytest.mark.parametrize('security', [
    vconfig.LibvirtConfigGuestSEVLaunchSecurity,
    vconfig.LibvirtConfigGuestSEVSNPLaunchSecurity,
    vconfig.LibvirtConfigGuestTDXLaunchSecurity])
def test_guest_config_encrypted_memory_generated(conf, security):
    # Whatever made Nova encrypt the memory, the XML has
    # <launchSecurity>: no share, no shared memory.
    guest = vconfig.LibvirtConfigGuest()
    guest.launch_security = security()
    inst = instance(ON)
    guest = get_guest_config(libvirt_driver_instance(), inst, guest)
    assert filesystems(guest) == [] and guest.membacking is None
    assert inst.system_metadata[driver.SYSMETA_ATTACHED_KEY] == 'False'


def test_guest_config_records_the_share(conf):
    inst = instance(ON)
    get_guest_config(libvirt_driver_instance(), inst)
    assert inst.system_metadata[driver.SYSMETA_ATTACHED_KEY] == 'True'
    inst.flavor.extra_specs = OFF
    get_guest_config(libvirt_driver_instance(), inst)
    assert inst.system_metadata[driver.SYSMETA_ATTACHED_KEY] == 'False'


# -- _create_guest: the share exists before the domain starts --

def create_guest(drv, xml, check=None):
    def parent(_self, context, xml, inst, *args, **kwargs):
        if check:
            check()
        return 'guest'
    with mock.patch(PARENT + '_create_guest', autospec=True,
                    side_effect=parent) as mocked:
        result = drv._create_guest('ctxt', xml, instance(ON), power_on=True,
                                   pause=False)
    return result, mocked


def test_create_guest_makes_the_share_first(conf):
    export = driver.export_path(UUID)

    def share_is_ready():
        for (subdir, name), data in layout.initial_files(UUID).items():
            with open(os.path.join(export, subdir, name), 'rb') as f:
                assert f.read() == data

    result, parent = create_guest(libvirt_driver_instance(),
                                  domain_xml(share_fs_xml(export)),
                                  check=share_is_ready)
    assert result == 'guest'
    parent.assert_called_once()
    assert parent.call_args.kwargs == {'power_on': True, 'pause': False}


def test_create_guest_keeps_agent_counters(conf):
    tree.ShareTree(conf.conf.scaphandre.work_dir).write_instance(
        UUID, layout.zone_files(5000000))
    export = driver.export_path(UUID)
    create_guest(libvirt_driver_instance(), domain_xml(share_fs_xml(export)))
    with open(os.path.join(export, layout.PACKAGE_DIR, 'energy_uj')) as f:
        assert f.read() == '5000000\n'


def test_create_guest_without_share_touches_nothing(conf):
    with mock.patch.object(driver.mounts, 'create_instance_share') as create:
        create_guest(libvirt_driver_instance(), domain_xml())
    create.assert_not_called()


def test_create_guest_mounts_when_managed(conf):
    conf.config(group='scaphandre', manage_mounts=True, tmpfs_size='8m')
    with mock.patch.object(driver.mounts, 'ensure_share_mounts') as ensure:
        create_guest(libvirt_driver_instance(),
                     domain_xml(share_fs_xml(driver.export_path(UUID))))
    ensure.assert_called_once_with()   # the daemon reads [scaphandre]


def test_create_guest_failure_without_share_dir(conf):
    xml = domain_xml(share_fs_xml(driver.export_path(UUID)))
    with mock.patch.object(driver.mounts, 'create_instance_share',
                           side_effect=OSError('no privsep')):
        with pytest.raises(driver.ShareUnavailable, match='no privsep'):
            create_guest(libvirt_driver_instance(), xml,
                         check=lambda: pytest.fail('domain started'))


def test_create_guest_failure_with_share_dir(conf):
    os.mkdir(os.path.join(conf.conf.scaphandre.work_dir, UUID))
    xml = domain_xml(share_fs_xml(driver.export_path(UUID)))
    with mock.patch.object(driver.mounts, 'create_instance_share',
                           side_effect=OSError('no privsep')), \
            mock.patch.object(driver.LOG, 'warning') as warning:
        result, _ = create_guest(libvirt_driver_instance(), xml)
    assert result == 'guest'
    warning.assert_called_once()


def test_create_guest_export_not_bound(conf, tmp_path):
    empty = tmp_path / 'not-a-view'
    empty.mkdir()
    conf.config(group='scaphandre', export_dir=str(empty))
    xml = domain_xml(share_fs_xml(driver.export_path(UUID)))
    with pytest.raises(driver.ShareUnavailable, match='bind mount'):
        create_guest(libvirt_driver_instance(), xml)


# -- live migration and suspend --

def test_live_migration_refused_with_share(conf):
    drv = libvirt_driver_instance(
        domain_xml(share_fs_xml(driver.export_path(UUID))))
    with mock.patch(PARENT + 'check_can_live_migrate_source') as parent:
        with pytest.raises(exception.MigrationPreCheckError,
                           match='cannot be live migrated here'):
            drv.check_can_live_migrate_source('ctxt', instance(), 'data')
    parent.assert_not_called()


@pytest.mark.parametrize('xml', [None, domain_xml()])
def test_live_migration_checks_go_on_without_share(conf, xml):
    drv = libvirt_driver_instance(xml)
    with mock.patch(PARENT + 'check_can_live_migrate_source',
                    return_value='checked') as parent:
        assert drv.check_can_live_migrate_source(
            'ctxt', instance(), 'data', block_device_info=None) == 'checked'
    parent.assert_called_once_with('ctxt', instance(), 'data',
                                   block_device_info=None)


def check_destination(drv, inst):
    with mock.patch(PARENT + 'check_can_live_migrate_destination',
                    return_value='dest data') as parent:
        try:
            return drv.check_can_live_migrate_destination(
                'ctxt', inst, 'src info', 'dst info', block_migration=None,
                disk_over_commit=None), parent
        except exception.NoValidHost:
            parent.assert_not_called()
            raise


def conductor_retries(exc):
    # LiveMigrationTask._find_destination: the host is skipped and the
    # next one tried on these; anything else ends the request.
    return isinstance(exc, (exception.Invalid,
                            exception.MigrationPreCheckError))


@pytest.mark.parametrize('inst', [
    instance(system_metadata={driver.SYSMETA_ATTACHED_KEY: 'True'}),
    instance(ON),     # no record (an XML of an older driver): the options
])
def test_live_migration_destination_refuses_for_good(conf, inst):
    with pytest.raises(exception.NoValidHost,
                       match='cannot be live migrated here') as raised:
        check_destination(libvirt_driver_instance(), inst)
    assert not conductor_retries(raised.value)


@pytest.mark.parametrize('inst', [
    instance(system_metadata={driver.SYSMETA_ATTACHED_KEY: 'False'}),
    # The record wins over the options: booted before the share existed.
    instance(ON, {driver.SYSMETA_ATTACHED_KEY: 'False'}),
    instance(),
])
def test_live_migration_destination_checks_go_on(conf, inst):
    result, parent = check_destination(libvirt_driver_instance(), inst)
    assert result == 'dest data'
    parent.assert_called_once_with('ctxt', inst, 'src info', 'dst info',
                                   block_migration=None,
                                   disk_over_commit=None)


def test_source_refusal_is_only_a_backstop():
    # Whatever the source raises reaches the conductor as a
    # MigrationPreCheckError (ComputeManager.check_can_live_migrate_
    # destination wraps it), so the destination has to be the one.
    assert conductor_retries(exception.MigrationPreCheckError(reason='x'))


def test_suspend_refused_with_share(conf):
    drv = libvirt_driver_instance(
        domain_xml(share_fs_xml(driver.export_path(UUID))))
    with mock.patch(PARENT + 'suspend') as parent:
        with pytest.raises(exception.InstanceFaultRollback) as raised:
            drv.suspend('ctxt', instance())
    assert isinstance(raised.value.inner_exception,
                      exception.InstanceSuspendFailure)
    assert 'cannot save' in str(raised.value.inner_exception)
    parent.assert_not_called()


def test_suspend_without_share(conf):
    drv = libvirt_driver_instance(domain_xml())
    with mock.patch(PARENT + 'suspend') as parent:
        drv.suspend('ctxt', instance())
    parent.assert_called_once_with('ctxt', instance())


# -- Nova's device metadata --

def parsed_filesystem(xml):
    dev = vconfig.LibvirtConfigGuestFilesys()
    dev.parse_dom(etree.fromstring(xml))
    return dev


def test_device_metadata_skips_the_energy_share_quietly(conf):
    dev = parsed_filesystem(share_fs_xml(driver.export_path(UUID)))
    with mock.patch.object(libvirt_driver.LOG, 'warning') as warning:
        assert libvirt_driver_instance()._build_share_metadata(
            dev, []) is None
    warning.assert_not_called()


@pytest.mark.parametrize('xml', [
    share_fs_xml('/elsewhere/%s' % UUID),
    share_fs_xml(driver.export_path(UUID)).replace(
        "'scaphandre'", "'other-tag'"),
])
def test_device_metadata_other_filesystems_still_warn(conf, xml):
    with mock.patch.object(libvirt_driver.LOG, 'warning') as warning:
        assert libvirt_driver_instance()._build_share_metadata(
            parsed_filesystem(xml), []) is None
    warning.assert_called_once()


def test_device_metadata_of_a_manila_share_with_our_tag(conf):
    from nova import objects
    objects.register_all()
    dev = parsed_filesystem(share_fs_xml(driver.export_path(UUID)))
    share = types.SimpleNamespace(tag='scaphandre', share_id='manila-id')
    metadata = libvirt_driver_instance()._build_share_metadata(dev, [share])
    assert metadata.share_id == 'manila-id'


# -- what Nova loads --

def test_subclass_of_nova_driver():
    assert issubclass(driver.LibvirtDriver, libvirt_driver.LibvirtDriver)


def test_shim_reexports_the_driver():
    from nova.virt import scaphandre
    assert scaphandre.LibvirtDriver is driver.LibvirtDriver


def test_extra_spec_validator():
    [validator] = extra_specs.register()
    assert validator.name == 'scaphandre:share'
    for value in ('true', 'False', '1', 'no'):
        validator.validate('scaphandre:share', value)
    with pytest.raises(exception.ValidationError):
        validator.validate('scaphandre:share', 'maybe')


def test_nova_api_knows_the_namespace():
    from nova.api.validation.extra_specs import validators
    validators.validate('scaphandre:share', 'true')
    with pytest.raises(exception.ValidationError):
        validators.validate('scaphandre:unknown', 'true')


# -- whether this host can migrate the share (Debian 12 vs 13) --

def fake_virtiofsd(tmp_path, output, name='virtiofsd'):
    """An executable that prints ``output`` for --print-capabilities."""
    path = tmp_path / name
    path.write_text('#!/bin/sh\n[ "$1" = --print-capabilities ] || exit 2\n'
                    "printf '%%s' '%s'\n" % output)
    path.chmod(0o755)
    return str(path)


def test_virtiofsd_from_descriptors_in_libvirts_order(tmp_path):
    usr, etc = tmp_path / 'usr', tmp_path / 'etc'
    usr.mkdir()
    etc.mkdir()
    (usr / '50-virtiofsd.json').write_text(
        '{"type": "fs", "binary": "/usr/libexec/virtiofsd"}')
    (usr / '40-gpu.json').write_text(
        '{"type": "gpu", "binary": "/usr/libexec/vhost-user-gpu"}')
    (usr / '60-other.json').write_text(
        '{"type": "fs", "binary": "/opt/other"}')
    (etc / '60-other.json').write_text('')          # masks it
    (etc / '10-local.json').write_text(
        '{"type": "fs", "binary": "/usr/local/virtiofsd"}')
    assert driver.virtiofsd_from_descriptors((str(usr), str(etc))) == [
        '/usr/local/virtiofsd', '/usr/libexec/virtiofsd']


@pytest.mark.parametrize('output, features', [
    ('{"type":"fs","features":["migrate-precopy","separate-options"]}',
     {'migrate-precopy', 'separate-options'}),
    ('{"type":"fs"}', set()),
    ('not json', set()),                # Debian 12's C virtiofsd
])
def test_virtiofsd_features(tmp_path, output, features):
    assert driver.virtiofsd_features(
        fake_virtiofsd(tmp_path, output)) == features


def test_virtiofsd_features_of_a_missing_binary(tmp_path):
    assert driver.virtiofsd_features(str(tmp_path / 'none')) == frozenset()


MIGRATES = '{"type":"fs","features":["migrate-precopy"]}'


@pytest.mark.parametrize('lv_ok, output, allowed, why', [
    (False, MIGRATES, False, 'older than 10.5.0'),
    (True, '{"type":"fs","features":[]}', False, 'does not say'),
    (True, MIGRATES, True, ''),
])
def test_share_migration_probe(conf, tmp_path, lv_ok, output, allowed,
                               why):
    conf.config(group='scaphandre',
                virtiofsd_path=fake_virtiofsd(tmp_path, output))
    got, reason = libvirt_driver_instance(
        lv_ver_ok=lv_ok)._probe_share_migration()
    assert got is allowed and why in reason


def migratable_driver(xml=None):
    drv = libvirt_driver_instance(xml, lv_ver_ok=True)
    drv._share_migration = (True, '')
    return drv


def test_live_migration_allowed_where_the_host_can(conf):
    inst = instance(system_metadata={driver.SYSMETA_ATTACHED_KEY: 'True'})
    result, parent = check_destination(migratable_driver(), inst)
    assert result == 'dest data'
    parent.assert_called_once()


def test_suspend_allowed_where_the_host_can(conf):
    drv = migratable_driver(domain_xml(share_fs_xml(
        driver.export_path(UUID))))
    with mock.patch(PARENT + 'suspend', return_value='saved') as parent:
        assert drv.suspend('ctxt', instance()) == 'saved'
    parent.assert_called_once()


# -- counters that follow the instance --

def write_meta(updated, interval=10.0):
    tree.ShareTree(driver.CONF.scaphandre.work_dir).write_instance(
        UUID, {('', layout.META_FILE): layout.meta_file(
            layout.meta_document(UUID, updated, interval, 'rapl', 'cputime',
                                 10 ** 6))})


@pytest.mark.parametrize('age, alive', [(5, True), (29, True), (60, False)])
def test_agent_publishes_by_the_meta_files_age(conf, age, alive):
    write_meta(1000.0)
    assert driver.agent_publishes(UUID, now=1000.0 + age) is alive


def test_agent_publishes_not_before_the_first_update(conf):
    write_meta(None, None)
    assert not driver.agent_publishes(UUID)
    assert not driver.agent_publishes('0' * 8 + UUID[8:])   # no share


class FakeAgent:
    """Answers holds as the agent's HandoffDesk would, from a thread."""

    def __init__(self, energy_uj):
        self.energy_uj = energy_uj
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        work_dir = driver.CONF.scaphandre.work_dir
        while not self.stop.wait(0.05):
            fd = handoff.open_directory(work_dir)
            if fd is None:
                continue
            try:
                hold = handoff.read(fd, UUID, handoff.HOLD)
                if hold:
                    handoff.write(fd, UUID, handoff.HELD, handoff.Counters(
                        hold['token'], self.energy_uj,
                        {k: v - v % 10 ** 6 for k, v in
                         self.energy_uj.items()}).as_dict())
            finally:
                os.close(fd)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def test_record_counters_keeps_the_larger_of_each_kind(conf):
    write_meta(time.time())
    before = handoff.Counters('old', {'package': 9_000_000_000, 'dram': 1},
                              {'package': 9_000_000_000, 'dram': 0})
    inst = instance(system_metadata={
        driver.SYSMETA_COUNTERS_KEY: json.dumps(before.as_dict())})
    with FakeAgent({'package': 5_500_000, 'dram': 2_700_000}):
        counters = migratable_driver()._record_counters(inst)
    assert counters.energy_uj == {'package': 9_000_000_000,
                                  'dram': 2_700_000}
    assert counters.shown_uj == {'package': 9_000_000_000,
                                 'dram': 2_000_000}
    assert json.loads(inst.system_metadata[driver.SYSMETA_COUNTERS_KEY]) \
        == counters.as_dict()


def test_record_counters_does_not_wait_without_an_agent(conf):
    conf.config(group='scaphandre', handoff_timeout=30)
    inst = instance()
    started = time.monotonic()
    assert migratable_driver()._record_counters(inst) is None
    assert time.monotonic() - started < 5
    assert driver.SYSMETA_COUNTERS_KEY not in inst.system_metadata


def test_a_start_raises_the_share_never_lowers_it(conf):
    work = driver.CONF.scaphandre.work_dir
    carried = handoff.Counters('t1', {'package': 7_400_000, 'dram': 10},
                               {'package': 7_000_000, 'dram': 0})
    inst = instance(ON, {driver.SYSMETA_COUNTERS_KEY: json.dumps(
        carried.as_dict())})
    xml = domain_xml(share_fs_xml(driver.export_path(UUID)))
    drv = libvirt_driver_instance()
    with mock.patch(PARENT + '_create_guest', return_value='guest'):
        drv._create_guest('ctxt', xml, inst)
    energy = os.path.join(work, UUID, layout.PACKAGE_DIR, 'energy_uj')
    with open(energy) as f:
        assert f.read() == '7000000\n'
    fd = handoff.open_directory(work)
    try:
        assert handoff.read(fd, UUID, handoff.START) == carried.as_dict()
    finally:
        os.close(fd)
    # The agent here has written more since: a second start keeps it.
    tree.ShareTree(work).write_instance(
        UUID, {(layout.PACKAGE_DIR, 'energy_uj'): b'9000000\n'})
    with mock.patch(PARENT + '_create_guest', return_value='guest'):
        drv._create_guest('ctxt', xml, inst)
    with open(energy) as f:
        assert f.read() == '9000000\n'


def held_doc():
    fd = handoff.open_directory(driver.CONF.scaphandre.work_dir)
    try:
        return handoff.read(fd, UUID, handoff.HOLD)
    finally:
        os.close(fd)


def test_the_live_migration_hold_has_a_deadline_until_it_runs(conf):
    # Nova does not tell the source when the destination fails to
    # prepare: the check's hold expires; live_migration makes it last.
    write_meta(time.time())
    inst = instance(system_metadata={})
    inst.save = mock.Mock()
    drv = migratable_driver(domain_xml(share_fs_xml(
        driver.export_path(UUID))))
    with FakeAgent({'package': 3_000_000, 'dram': 1_000_000}), \
            mock.patch(PARENT + 'check_can_live_migrate_source',
                       return_value='data'):
        assert drv.check_can_live_migrate_source('ctxt', inst, 'd') == 'data'
    inst.save.assert_called_once()
    hold = held_doc()
    assert 0 < hold['expires'] - time.time() <= driver.LIVE_MIGRATION_HOLD_S
    # The conductor's copy of the instance predates the check's record:
    # live_migration reads it from the database.
    conductors = instance(system_metadata={})
    with mock.patch(PARENT + 'live_migration', return_value=None), \
            mock.patch.object(driver.objects.Instance, 'get_by_uuid',
                              return_value=inst):
        drv.live_migration('ctxt', conductors, 'dest', None, None)
    assert held_doc() == {'token': hold['token'], 'expires': None}


@pytest.mark.parametrize('task_state, records', [
    ('resize_reverting', True),
    ('deleting', False),
    ('rebooting_hard', False),
    ('powering-on', False),
    (None, False),
])
def test_destroy_records_only_for_a_reverted_resize(conf, task_state,
                                                     records):
    inst = instance()
    inst.task_state = task_state
    drv = migratable_driver(domain_xml(share_fs_xml(
        driver.export_path(UUID))))
    with mock.patch.object(driver.LibvirtDriver, '_record_counters') as rec, \
            mock.patch(PARENT + 'destroy', return_value=None):
        drv.destroy('ctxt', inst, None)
    assert rec.called is records


@pytest.mark.parametrize('hv_version, allowed', [
    (7002000, False),       # Debian 12's QEMU 7.2
    (8002000, True),
    (10000000, True),       # Debian 13's QEMU 10.0
    (None, True),           # unknown: the source's own check decides
])
def test_the_destination_refuses_a_source_that_cannot(conf, hv_version,
                                                      allowed):
    inst = instance(system_metadata={driver.SYSMETA_ATTACHED_KEY: 'True'})
    drv = migratable_driver()
    src = {'hypervisor_version': hv_version} if hv_version else {}
    with mock.patch(PARENT + 'check_can_live_migrate_destination',
                    return_value='dest data') as parent:
        if allowed:
            assert drv.check_can_live_migrate_destination(
                'ctxt', inst, src, 'dst info') == 'dest data'
        else:
            with pytest.raises(exception.NoValidHost,
                               match="source host's QEMU 7.2.0"):
                drv.check_can_live_migrate_destination(
                    'ctxt', inst, src, 'dst info')
            parent.assert_not_called()
