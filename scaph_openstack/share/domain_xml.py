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


def _shared(element, attribute):
    return element is not None and element.get(attribute) == 'shared'


def has_shared_memory(root):
    """What libvirt (9.0, qemuValidateDomainDefVhostUserRequireSharedMemory)
    checks for virtiofs: without guest NUMA cells, ``<access
    mode='shared'/>`` in ``<memoryBacking>``; with cells, every cell
    shared, by its own ``memAccess='shared'`` or, when it has none, by
    that access. Huge pages alone are not shared memory: QEMU maps them
    private unless libvirt is told otherwise."""
    default_shared = _shared(root.find('memoryBacking/access'), 'mode')
    cells = root.findall('cpu/numa/cell')
    if not cells:
        return default_shared
    return all(_shared(cell, 'memAccess') or
               (cell.get('memAccess') is None and default_shared)
               for cell in cells)


def _ensure_shared_memory(root):
    """Shared access for the whole guest memory and each NUMA cell that
    says otherwise (``memAccess='private'``: libvirt would refuse the
    share). A new memfd source only where memory has no backing of its
    own: huge pages (hugetlbfs) and a file source are shared by their
    access mode alone."""
    if has_shared_memory(root):
        return
    backing = root.find('memoryBacking')
    if backing is None:
        backing = ET.SubElement(root, 'memoryBacking')
    if backing.find('hugepages') is None and backing.find('source') is None:
        ET.SubElement(backing, 'source', type='memfd')
    access = backing.find('access')
    if access is None:
        access = ET.SubElement(backing, 'access')
    access.set('mode', 'shared')
    for cell in root.findall('cpu/numa/cell'):
        if cell.get('memAccess') not in (None, 'shared'):
            cell.set('memAccess', 'shared')


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
