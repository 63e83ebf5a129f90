import pytest

from scaph_openstack.inventory import nova_metadata

NOVA_11 = """<domain type='kvm'>
  <name>instance-0000002a</name>
  <uuid>6f1c7a9e-2f4b-4f0e-9a55-3b5c1d2e8f01</uuid>
  <metadata>
    <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
      <nova:package version="34.0.0"/>
      <nova:name>web-1</nova:name>
      <nova:creationTime>2026-11-21 10:00:00</nova:creationTime>
      <nova:flavor name="m1.small">
        <nova:memory>2048</nova:memory>
        <nova:disk>20</nova:disk>
        <nova:swap>0</nova:swap>
        <nova:ephemeral>0</nova:ephemeral>
        <nova:vcpus>2</nova:vcpus>
      </nova:flavor>
      <nova:owner>
        <nova:user uuid="u-123">alice</nova:user>
        <nova:project uuid="p-456">webteam</nova:project>
      </nova:owner>
      <nova:root type="image" uuid="img-1"/>
    </nova:instance>
  </metadata>
</domain>"""


def test_nova_1_1():
    identity = nova_metadata.identity_from_xml(NOVA_11)
    assert identity.uuid == '6f1c7a9e-2f4b-4f0e-9a55-3b5c1d2e8f01'
    assert identity.name == 'instance-0000002a'
    assert identity.display_name == 'web-1'
    assert (identity.project_id, identity.project_name) == ('p-456',
                                                            'webteam')
    assert (identity.user_id, identity.user_name) == ('u-123', 'alice')
    assert identity.flavor == 'm1.small'
    assert (identity.vcpus, identity.memory_mb) == (2, 2048)
    assert identity.nova


def test_nova_1_0_namespace():
    xml = NOVA_11.replace('nova/1.1', 'nova/1.0')
    identity = nova_metadata.identity_from_xml(xml)
    assert identity.project_id == 'p-456' and identity.nova


def test_plain_libvirt_domain_is_named_by_domain_name():
    identity = nova_metadata.identity_from_xml(
        '<domain><name>seed-vm</name><uuid>abc</uuid></domain>')
    assert (identity.name, identity.uuid, identity.nova) == ('seed-vm',
                                                             'abc', False)
    assert identity.project_id is None


def test_partial_metadata_keeps_what_is_there():
    xml = NOVA_11.replace('<nova:vcpus>2</nova:vcpus>',
                          '<nova:vcpus>lots</nova:vcpus>')
    xml = xml.replace('<nova:user uuid="u-123">alice</nova:user>', '')
    identity = nova_metadata.identity_from_xml(xml)
    assert identity.vcpus is None
    assert identity.user_id is None
    assert identity.project_id == 'p-456'


@pytest.mark.parametrize('xml', ['', '<domain>', 'not xml at all',
                                 '<domain><name>x</name></domain>'])
def test_garbage_is_a_metadata_error(xml):
    with pytest.raises(nova_metadata.MetadataError):
        nova_metadata.identity_from_xml(xml)


def test_flavor_id_when_nova_writes_it():
    # Recent Nova (34): <nova:flavor name=... id=...>.
    xml = NOVA_11.replace('<nova:flavor name="m1.small">',
                          '<nova:flavor name="m1.small" id="42">')
    assert nova_metadata.identity_from_xml(xml).flavor_id == '42'
    # Before: none, never the name in its place.
    assert nova_metadata.identity_from_xml(NOVA_11).flavor_id is None
