"""Identity of an instance from its libvirt domain XML.

Nova writes ``<metadata><nova:instance>`` (namespace .../nova/1.1, older
releases 1.0). Domains without it (plain libvirt hosts) are named by their
domain name. Garbage metadata never hides an instance: it falls back to
the plain identity and the reason is logged by the caller.
"""

import xml.etree.ElementTree as ET

from scaph_openstack.inventory import base

NOVA_NAMESPACES = (
    'http://openstack.org/xmlns/libvirt/nova/1.1',
    'http://openstack.org/xmlns/libvirt/nova/1.0',
)


class MetadataError(ValueError):
    pass


def _text(element, path, ns):
    found = element.find(path, ns)
    if found is None or found.text is None:
        return None
    return found.text.strip() or None


def _int(value):
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _nova_instance(root):
    for namespace in NOVA_NAMESPACES:
        found = root.find('metadata/{%s}instance' % namespace)
        if found is not None:
            return found, {'nova': namespace}
    return None, None


def identity_from_xml(xml_text):
    """InstanceIdentity from a domain XML document; MetadataError if bad."""
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as exc:
        raise MetadataError('domain XML does not parse: %s' % exc)
    uuid = (root.findtext('uuid') or '').strip()
    name = (root.findtext('name') or '').strip()
    if not uuid:
        raise MetadataError('domain XML has no <uuid>')
    instance, ns = _nova_instance(root)
    if instance is None:
        return base.InstanceIdentity(uuid=uuid, name=name or uuid)
    flavor = instance.find('nova:flavor', ns)
    user = instance.find('nova:owner/nova:user', ns)
    project = instance.find('nova:owner/nova:project', ns)
    return base.InstanceIdentity(
        uuid=uuid,
        name=name or uuid,
        display_name=_text(instance, 'nova:name', ns),
        project_id=project.get('uuid') if project is not None else None,
        project_name=_text(instance, 'nova:owner/nova:project', ns),
        user_id=user.get('uuid') if user is not None else None,
        user_name=_text(instance, 'nova:owner/nova:user', ns),
        flavor=flavor.get('name') if flavor is not None else None,
        vcpus=_int(_text(flavor, 'nova:vcpus', ns))
        if flavor is not None else None,
        memory_mb=_int(_text(flavor, 'nova:memory', ns))
        if flavor is not None else None,
        flavor_id=(flavor.get('id') or None) if flavor is not None else None,
        nova=True)
