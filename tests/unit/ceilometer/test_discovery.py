import logging

from ceilometer.compute import discovery as compute_discovery

from scaph_openstack.ceilometer import discovery
from tests.unit.ceilometer import snapshots


def discover(conf):
    return discovery.SnapshotInstanceDiscovery(conf).discover(manager=None)


def test_needs_no_keystone(conf):
    assert discovery.SnapshotInstanceDiscovery \
        .KEYSTONE_REQUIRED_FOR_SERVICE is None


def test_lists_running_nova_instances(conf):
    snapshots.write(conf.scaphandre.snapshot_path)
    found = discover(conf)
    # Stopped instances and domains without Nova's owner metadata are
    # left out, as Ceilometer's own libvirt discovery does.
    assert sorted(r.id for r in found) == [snapshots.UUID_A,
                                           snapshots.UUID_B]


def test_resource_looks_like_ceilometer_libvirt_discovery(conf):
    snapshots.write(conf.scaphandre.snapshot_path)
    web = next(r for r in discover(conf) if r.id == snapshots.UUID_A)
    assert isinstance(web, compute_discovery.NovaLikeServer)
    assert web.name == 'web'
    assert web.tenant_id == snapshots.PROJECT
    assert web.user_id == snapshots.USER
    assert web.flavor['name'] == 'm1.small'
    assert web.flavor['vcpus'] == 2 and web.flavor['ram'] == 2048
    assert getattr(web, 'OS-EXT-SRV-ATTR:instance_name') == \
        'instance-00000001'
    assert getattr(web, 'OS-EXT-SRV-ATTR:host') == snapshots.HOST
    assert web.hostId == discovery.host_id(snapshots.PROJECT,
                                           snapshots.HOST)
    assert web.status == 'active'


def test_resources_equal_by_uuid(conf):
    path = conf.scaphandre.snapshot_path
    snapshots.write(path)
    first = {r.id: r for r in discover(conf)}
    snapshots.write(path, scale=2)
    second = {r.id: r for r in discover(conf)}
    a1, a2 = first[snapshots.UUID_A], second[snapshots.UUID_A]
    assert a1 is not a2 and a1 == a2 and hash(a1) == hash(a2)
    assert a1 != first[snapshots.UUID_B]
    # Ceilometer's own resources for the same instance compare equal too.
    assert a1 == compute_discovery.NovaLikeServer(id=snapshots.UUID_A)
    assert a1 != 'not a resource'
    assert len({a1, a2, first[snapshots.UUID_B]}) == 2


def test_group_id_is_the_host(conf):
    assert discovery.SnapshotInstanceDiscovery(conf).group_id == \
        conf.host


def test_missing_snapshot_discovers_nothing(conf, caplog):
    caplog.set_level(logging.WARNING)
    assert discover(conf) == []
    assert 'is scaph-openstack-agent running' in caplog.text


def test_stale_snapshot_discovers_nothing(conf):
    snapshots.write(conf.scaphandre.snapshot_path, age=60)
    assert discover(conf) == []


def test_invalid_snapshot_discovers_nothing(conf):
    with open(conf.scaphandre.snapshot_path, 'w') as f:
        f.write('{"format": "something else"}')
    assert discover(conf) == []


def _with_flavor_ids(conf, ids):
    """A snapshot whose Nova instances carry these flavor ids (None: the
    key absent, as from older Nova)."""
    doc = snapshots.document()
    nova = [i for i in doc['instances'] if i.get('nova')]
    for instance, flavor_id in zip(nova, ids, strict=False):
        if flavor_id is not None:
            instance['flavor_id'] = flavor_id
    snapshots.write_document(conf.scaphandre.snapshot_path, doc)
    return {r.id: r.flavor for r in discover(conf)}


def test_flavor_id_when_every_instance_has_one(conf):
    # Gnocchi needs it to create an instance resource.
    flavors = _with_flavor_ids(conf, ['1', '2', '3'])
    assert sorted(f['id'] for f in flavors.values()) == ['1', '2']


def test_no_flavor_id_unless_every_instance_has_one(conf):
    # The same exporter labels on every sample of a cycle.
    flavors = _with_flavor_ids(conf, ['1', None, None])
    assert flavors and all('id' not in f for f in flavors.values())
