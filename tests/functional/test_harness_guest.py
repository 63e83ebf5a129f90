"""Smoke test of the real-guest harness (tests/functional/helpers).

Boots a TCG guest under the real libvirtd with a read-only virtiofs share
and checks what the rest of the functional tests rely on: the guest mounts
the share, reads energy_uj, sees host-side updates made by write + rename,
and cannot write to the share. Skipped where it cannot run (not root, no
libvirtd); in CI (CI=true) that is a failure instead.
"""

import os
import uuid
import xml.etree.ElementTree as ET

import pytest

from .helpers import guest as guestlib
from .helpers import libvirtd
from .helpers import require

ENERGY = 'intel-rapl:0/energy_uj'
WRITE_PROBES = ('write-existing', 'append', 'truncate', 'chmod', 'create',
                'mkdir', 'symlink', 'hardlink', 'mkfifo', 'rename', 'fill',
                'rm', 'write-after-remount', 'create-after-remount')


@pytest.fixture(scope='module')
def image():
    reason = libvirtd.unavailable_reason()
    require(reason is None, 'cannot run real guests here: %s' % reason)
    try:
        libvirtd.ensure_libvirtd()
    except (libvirtd.LibvirtdError, OSError) as exc:
        require(False, 'libvirtd cannot be started: %s' % exc)
    try:
        return guestlib.build_image()
    except (guestlib.GuestError, OSError) as exc:
        require(False, 'the guest image cannot be built: %s' % exc)


def test_domain_xml_shape():
    meta = guestlib.nova_metadata_xml(
        'f5d5a1de-0000-4000-8000-000000000001', 'vm-1', 'p-id', 'proj',
        'u-id', 'alice')
    xml = guestlib.domain_xml(
        'scaph-test-x', 'f5d5a1de-0000-4000-8000-000000000001', '/k', '/i',
        '/tmp/log', {'tag': 'scaphandre', 'probes': 1, 'quiet': None},
        share_dir='/srv/ro', nova_metadata=meta)
    root = ET.fromstring(xml)
    assert root.get('type') == 'qemu'
    cmdline = root.findtext('os/cmdline').split()
    assert cmdline[:2] == ['console=ttyS0', 'panic=-1']
    assert 'scaph.tag=scaphandre' in cmdline
    assert 'scaph.probes=1' in cmdline
    assert 'scaph.quiet' in cmdline
    fs = root.find('devices/filesystem')
    assert fs.find('driver').get('type') == 'virtiofs'
    assert fs.find('source').get('dir') == '/srv/ro'
    assert fs.find('target').get('dir') == 'scaphandre'
    assert fs.find('readonly') is None
    assert root.find('memoryBacking/access').get('mode') == 'shared'
    ns = {'nova': 'http://openstack.org/xmlns/libvirt/nova/1.1'}
    inst = root.find('metadata/nova:instance', ns)
    assert inst.findtext('nova:name', namespaces=ns) == 'vm-1'
    assert inst.find('nova:owner/nova:project', ns).get('uuid') == 'p-id'
    assert inst.find('nova:owner/nova:user', ns).text == 'alice'
    assert inst.find('nova:flavor', ns).get('name') == 'm1.tiny'
    assert inst.findtext('nova:flavor/nova:vcpus', namespaces=ns) == '1'


def test_guest_reads_readonly_share(image):
    import libvirt  # present: the image fixture checked it

    instance_uuid = uuid.uuid4()
    meta = guestlib.nova_metadata_xml(
        instance_uuid, 'harness-smoke', 'a' * 32, 'demo', 'b' * 32, 'admin')
    with guestlib.ReadOnlyShare(tmpfs=True) as share:
        share.write('intel-rapl:0/name', 'package-0\n')
        share.write(ENERGY, '123\n')
        with guestlib.Guest(share_dir=share.ro, uuid=instance_uuid,
                            cmdline_params={'probes': 1}, label='harness',
                            nova_metadata=meta) as g:
            name = g.name
            assert g.wait_booted(timeout=120) == 'ok', g.tail()
            g.wait_for(r'SCAPH-BOOT ok', timeout=5)
            g.wait_for(r'SCAPH-LS ', timeout=30)
            assert ['intel-rapl:0/', 'intel-rapl:0/energy_uj',
                    'intel-rapl:0/name'] == g.listings()[0]
            first = g.wait_for_value(ENERGY, 123, timeout=120)
            assert first.int(ENERGY) == 123

            # Hostile probes run before the read loop: all done by now.
            probes = g.wait_probes(timeout=10)
            for probe in WRITE_PROBES:
                assert probes.get(probe, 0) != 0, (probe, g.tail(60))
            walks = g.walks()
            assert walks['ls-parent'].split() == ['.', '..', 'scaphandre']
            assert walks['cat-escape'] == 'scaph-guest'
            assert walks['cat-escape-deep'] == 'scaph-guest'

            # A host-side update by write + rename reaches the guest.
            mark = g.line_count()
            share.write(ENERGY, '456789\n')
            later = g.wait_for_value(ENERGY, 456789, timeout=60,
                                     start_line=mark)
            assert later.uptime > first.uptime

            # Nothing the guest tried changed the host side.
            with open(share.path(ENERGY)) as f:
                assert f.read() == '456789\n'
            assert sorted(os.listdir(share.rw)) == ['intel-rapl:0']
            assert sorted(os.listdir(share.path('intel-rapl:0'))) == [
                'energy_uj', 'name']

            # The Nova metadata is stored by libvirt as Nova writes it.
            ns = 'http://openstack.org/xmlns/libvirt/nova/1.1'
            stored = g.domain().metadata(
                libvirt.VIR_DOMAIN_METADATA_ELEMENT, ns)
            assert 'harness-smoke' in stored
            assert g.domain().UUIDString() == str(instance_uuid)

        # The domain is gone after the context manager.
        conn = libvirt.open(libvirtd.DEFAULT_URI)
        try:
            assert name not in [d.name() for d in conn.listAllDomains()]
        finally:
            conn.close()
