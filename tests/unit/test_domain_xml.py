import xml.etree.ElementTree as ET

import pytest

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


def with_memory(backing='', cells=None):
    """DOMAIN with a <memoryBacking> body and guest NUMA cells, each a
    memAccess value (None: no attribute)."""
    parts = []
    if backing is not None:
        parts.append('<memoryBacking>%s</memoryBacking>' % backing)
    if cells is not None:
        parts.append('<cpu><numa>%s</numa></cpu>' % ''.join(
            "<cell id='%d' cpus='%d' memory='65536'%s/>" % (
                i, i, '' if access is None else " memAccess='%s'" % access)
            for i, access in enumerate(cells)))
    return DOMAIN.replace('<devices>', ''.join(parts) + '<devices>')


def attached(domain):
    xml, changed = domain_xml.attach(domain, '/exp/u', 'scaphandre')
    assert changed
    again, changed_again = domain_xml.attach(xml, '/exp/u', 'scaphandre')
    assert not changed_again and again == xml
    return ET.fromstring(xml)


def test_hugepages_get_shared_access_and_keep_their_backing():
    # Huge pages are mapped private unless told otherwise: libvirt refuses
    # virtiofs on them ("'virtiofs' requires shared memory"). Their
    # hugetlbfs backing stays; memfd would replace it.
    root = attached(with_memory('<hugepages/>'))
    assert root.find('memoryBacking/hugepages') is not None
    assert root.find('memoryBacking/source') is None
    assert root.find('memoryBacking/access').get('mode') == 'shared'


def test_file_backed_memory_gets_shared_access_only():
    root = attached(with_memory("<source type='file'/>"))
    assert [s.get('type') for s in root.iterfind('memoryBacking/source')] \
        == ['file']
    assert root.find('memoryBacking/access').get('mode') == 'shared'


def test_private_access_becomes_shared():
    root = attached(with_memory("<access mode='private'/>"))
    assert root.find('memoryBacking/access').get('mode') == 'shared'
    assert len(root.findall('memoryBacking/access')) == 1


def test_numa_cells_inherit_the_shared_access():
    root = attached(with_memory(None, cells=[None, None]))
    assert root.find('memoryBacking/access').get('mode') == 'shared'
    assert [c.get('memAccess') for c in root.iterfind('cpu/numa/cell')] \
        == [None, None]


def test_private_numa_cells_become_shared():
    # A cell's own memAccess wins over <access>: a private one is refused
    # by libvirt even with shared access for the rest.
    for backing in ('<hugepages/>', "<access mode='shared'/>"):
        root = attached(with_memory(backing, cells=['private', None,
                                                    'shared']))
        assert [c.get('memAccess') for c in
                root.iterfind('cpu/numa/cell')] == ['shared', None,
                                                    'shared']
        assert root.find('memoryBacking/access').get('mode') == 'shared'


def test_shared_numa_cells_are_left_alone():
    # what Nova writes for huge pages: every cell shared, no <access>
    domain = with_memory('<hugepages/>', cells=['shared', 'shared'])
    xml, changed = domain_xml.attach(domain, '/exp/u', 'scaphandre')
    assert changed
    root = ET.fromstring(xml)
    assert root.find('memoryBacking/access') is None
    assert root.find('memoryBacking/source') is None


def test_has_shared_memory_is_what_libvirt_checks():
    def shared(backing='', cells=None):
        return domain_xml.has_shared_memory(ET.fromstring(
            with_memory(backing, cells)))
    assert not shared('<hugepages/>')
    assert not shared("<source type='memfd'/>")
    assert not shared(None)
    assert shared("<access mode='shared'/>")
    assert shared("<access mode='shared'/>", cells=[None, 'shared'])
    assert not shared("<access mode='shared'/>", cells=[None, 'private'])
    assert shared('<hugepages/>', cells=['shared', 'shared'])
    assert not shared('<hugepages/>', cells=['shared', None])


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
