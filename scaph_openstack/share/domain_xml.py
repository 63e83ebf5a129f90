"""Edits a libvirt domain XML to attach or detach the guest share.

What the Nova hook does through Nova's config objects, done on plain XML
for hosts without Nova (``scaph-openstack attach``): a virtiofs
filesystem exporting ``<export_dir>/<uuid>`` under a tag, and shared
memory backing, which virtiofs requires.
"""

import xml.etree.ElementTree as ET


class DomainXmlError(ValueError):
    pass


def _parse(xml_text):
    try:
        return ET.fromstring(xml_text)
    except ET.ParseError as exc:
        raise DomainXmlError('domain XML does not parse: %s' % exc)


def domain_uuid(xml_text):
    uuid = (_parse(xml_text).findtext('uuid') or '').strip()
    if not uuid:
        raise DomainXmlError('domain has no <uuid>')
    return uuid


def _share_filesystems(root, tag):
    devices = root.find('devices')
    if devices is None:
        return None, []
    return devices, [fs for fs in devices.findall('filesystem')
                     if fs.find('target') is not None
                     and fs.find('target').get('dir') == tag]


def has_shared_memory(root):
    """True when memory is already shared: hugepages or a file/memfd
    source with shared access both satisfy virtiofs."""
    backing = root.find('memoryBacking')
    if backing is None:
        return False
    if backing.find('hugepages') is not None:
        return True
    access = backing.find('access')
    return access is not None and access.get('mode') == 'shared'


def _ensure_shared_memory(root):
    if has_shared_memory(root):
        return
    backing = root.find('memoryBacking')
    if backing is None:
        backing = ET.SubElement(root, 'memoryBacking')
    if backing.find('source') is None:
        ET.SubElement(backing, 'source', type='memfd')
    access = backing.find('access')
    if access is None:
        access = ET.SubElement(backing, 'access')
    access.set('mode', 'shared')


def filesystem_element(source_dir, tag, virtiofsd=None):
    fs = ET.Element('filesystem', type='mount', accessmode='passthrough')
    ET.SubElement(fs, 'driver', type='virtiofs')
    if virtiofsd:
        ET.SubElement(fs, 'binary', path=virtiofsd)
    ET.SubElement(fs, 'source', dir=source_dir)
    ET.SubElement(fs, 'target', dir=tag)
    return fs


def attach(xml_text, source_dir, tag, virtiofsd=None):
    """(new XML, changed?) with the share filesystem and shared memory."""
    root = _parse(xml_text)
    devices, existing = _share_filesystems(root, tag)
    if devices is None:
        devices = ET.SubElement(root, 'devices')
    for fs in existing:
        source = fs.find('source')
        if source is not None and source.get('dir') == source_dir \
                and has_shared_memory(root):
            return xml_text, False
        devices.remove(fs)
    devices.append(filesystem_element(source_dir, tag, virtiofsd))
    _ensure_shared_memory(root)
    return ET.tostring(root, encoding='unicode'), True


def detach(xml_text, tag):
    """(new XML, changed?) without the share filesystem. Shared memory
    stays: other devices may rely on it and it does no harm."""
    root = _parse(xml_text)
    devices, existing = _share_filesystems(root, tag)
    for fs in existing:
        devices.remove(fs)
    if not existing:
        return xml_text, False
    return ET.tostring(root, encoding='unicode'), True
