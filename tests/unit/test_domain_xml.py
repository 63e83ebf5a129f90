import xml.etree.ElementTree as ET

import pytest

from scaph_openstack import proxmox
from scaph_openstack.share import domain_xml

DOMAIN = """<domain type='qemu'><name>seed</name>
<uuid>11111111-2222-3333-4444-555555555555</uuid><memory>131072</memory>
<devices><serial type='pty'/></devices></domain>"""


def test_attach_adds_virtiofs_and_shared_memory():
    xml, changed = domain_xml.attach(DOMAIN, '/exp/u', 'scaphandre',
                                     '/usr/lib/qemu/virtiofsd')
    assert changed
    root = ET.fromstring(xml)
    (fs,) = root.findall('devices/filesystem')
    assert fs.get('type') == 'mount' and fs.get('accessmode') == \
        'passthrough'
    assert fs.find('driver').get('type') == 'virtiofs'
    assert fs.find('binary').get('path') == '/usr/lib/qemu/virtiofsd'
    assert fs.find('source').get('dir') == '/exp/u'
    assert fs.find('target').get('dir') == 'scaphandre'
    assert fs.find('readonly') is None   # libvirt 9.0 refuses it
    assert root.find('memoryBacking/source').get('type') == 'memfd'
    assert root.find('memoryBacking/access').get('mode') == 'shared'


def test_attach_is_idempotent():
    xml, _ = domain_xml.attach(DOMAIN, '/exp/u', 'scaphandre')
    again, changed = domain_xml.attach(xml, '/exp/u', 'scaphandre')
    assert not changed and again == xml


def test_hugepages_already_share_memory():
    domain = DOMAIN.replace('<devices>', '<memoryBacking><hugepages/>'
                            '</memoryBacking><devices>')
    xml, _ = domain_xml.attach(domain, '/exp/u', 'scaphandre')
    root = ET.fromstring(xml)
    assert root.find('memoryBacking/source') is None
    assert root.find('memoryBacking/access') is None


def test_detach_removes_only_our_tag():
    xml, _ = domain_xml.attach(DOMAIN, '/exp/u', 'scaphandre')
    xml, _ = domain_xml.attach(xml, '/other', 'data')
    detached, changed = domain_xml.detach(xml, 'scaphandre')
    assert changed
    tags = [t.get('dir') for t in
            ET.fromstring(detached).findall('devices/filesystem/target')]
    assert tags == ['data']
    assert domain_xml.detach(detached, 'scaphandre')[1] is False


def test_garbage_xml():
    with pytest.raises(domain_xml.DomainXmlError):
        domain_xml.attach('<domain', '/x', 't')
    with pytest.raises(domain_xml.DomainXmlError):
        domain_xml.domain_uuid('<domain/>')


def test_proxmox_args_and_mount():
    line = proxmox.args_line('105', '/var/lib/libvirt/scaphandre/')
    assert line.startswith('args: -fsdev local,')
    assert 'readonly=on' in line
    assert 'path=/var/lib/libvirt/scaphandre/proxmox-105 ' in line
    assert 'mount_tag=scaphandre' in line
    assert proxmox.guest_mount_command().endswith(
        'mount -t 9p -o ro,trans=virtio,version=9p2000.L scaphandre '
        '/var/scaphandre')
    with pytest.raises(ValueError):
        proxmox.args_line('../x', '/e')
