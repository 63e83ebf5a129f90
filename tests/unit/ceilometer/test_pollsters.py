import importlib.metadata
import time

from ceilometer.compute import discovery as compute_discovery
from ceilometer.polling import plugin_base
from ceilometer.polling import prom_exporter
from ceilometer.publisher import utils as publisher_utils
import pytest

from scaph_openstack.ceilometer import discovery
from scaph_openstack.ceilometer import pollsters
from scaph_openstack.conf import ceilometer as scaph_conf
from tests.unit.ceilometer import snapshots

INSTANCE_POLLSTERS = (pollsters.InstanceEnergyPollster,
                      pollsters.InstanceDynamicEnergyPollster,
                      pollsters.InstanceIdleEnergyPollster,
                      pollsters.InstancePowerPollster,
                      pollsters.InstanceCarbonPollster)
HOST_POLLSTERS = (pollsters.HostZoneEnergyPollster,
                  pollsters.HostUnattributedEnergyPollster)
ALL_POLLSTERS = INSTANCE_POLLSTERS + HOST_POLLSTERS


def by_resource(samples):
    return {s.resource_id: s for s in samples}


def poll(conf, cls, resources, cache=None):
    return cls(conf).get_samples(manager=None, cache={} if cache is None
                                 else cache, resources=resources)


def polled_twice(conf, cls, resources=None, **write):
    """``cls``'s samples on its second poll, as ceilometer-polling gets
    them: one pollster object polled on a snapshot, then on the agent's
    next one 2 s later with every counter doubled (power.instance gives
    no sample on a first poll). ``write``: snapshots.write arguments."""
    pollster = cls(conf)
    now = time.time()
    for at, scale in ((now - 2, 1), (now, 2)):
        snapshots.write(conf.scaphandre.snapshot_path, at=at, scale=scale,
                        **write)
        found = resources
        if found is None:
            found = discovery.SnapshotInstanceDiscovery(conf).discover(None)
        samples = pollster.get_samples(None, {}, found)
    return samples


def nova_like_server(uuid):
    """What Ceilometer's local_instances discovery (libvirt_metadata
    method) makes of a Nova instance."""
    return compute_discovery.NovaLikeServer(**{
        'id': uuid, 'name': 'from-nova',
        'flavor': {'id': 'f1', 'name': 'm1.nova', 'vcpus': 1, 'ram': 512,
                   'disk': 1, 'ephemeral': 0, 'swap': 0},
        'image': {'id': 'i1'}, 'metadata': {}, 'tenant_id': 'p-nova',
        'user_id': 'u-nova', 'hostId': 'h', 'status': 'active',
        'OS-EXT-SRV-ATTR:instance_name': 'instance-00000001',
        'OS-EXT-SRV-ATTR:host': 'compute-1',
        'OS-EXT-STS:vm_state': 'active'})


# -- registration -----------------------------------------------------------

def entry_points(group):
    return {ep.name: ep for ep in importlib.metadata.entry_points(
        group=group) if ep.value.startswith('scaph_openstack.')}


def test_meter_names_are_the_entry_point_names():
    # polling.yaml selects by entry point name and the Prometheus exporter
    # purges series by it: a different sample name would never be purged.
    eps = entry_points('ceilometer.poll.compute')
    assert {name: ep.load() for name, ep in eps.items()} == {
        cls.meter_name: cls for cls in ALL_POLLSTERS}


def test_discovery_entry_point():
    eps = entry_points('ceilometer.discover.compute')
    assert eps['scaph_instances'].load() is \
        discovery.SnapshotInstanceDiscovery


def test_no_meter_collides_with_ceilometer():
    ours = set(entry_points('ceilometer.poll.compute'))
    theirs = {ep.name for dist in importlib.metadata.distributions()
              for ep in dist.entry_points
              if ep.group.startswith('ceilometer.poll.')
              and not ep.value.startswith('scaph_openstack.')}
    assert 'power.state' in theirs
    assert not ours & theirs


def test_options_entry_point():
    (ep,) = [ep for ep in importlib.metadata.entry_points(
        group='oslo.config.opts') if ep.name == 'scaph_openstack.ceilometer']
    ((group, opts),) = ep.load()()
    assert group.name == 'scaphandre'
    assert [o.name for o in opts] == ['snapshot_path', 'stale_after_min']
    assert opts[0].default == '/run/scaph-openstack/snapshot.json'
    assert opts[1].default == 30.0
    assert scaph_conf.list_opts() == [(group, opts)]


@pytest.mark.parametrize('cls', ALL_POLLSTERS)
def test_pollsters_are_ceilometer_pollsters(conf, cls):
    pollster = cls(conf)
    assert isinstance(pollster, plugin_base.PollsterBase)
    expected = ('scaph_instances' if cls in INSTANCE_POLLSTERS
                else 'local_node')
    assert pollster.default_discovery == expected


# -- per-instance meters ------------------------------------------------------

def test_instance_energy(conf):
    snapshots.write(conf.scaphandre.snapshot_path)
    resources = discovery.SnapshotInstanceDiscovery(conf).discover(None)
    samples = by_resource(poll(conf, pollsters.InstanceEnergyPollster,
                               resources))
    assert set(samples) == {snapshots.UUID_A, snapshots.UUID_B}
    web = samples[snapshots.UUID_A]
    assert web.name == 'energy.instance'
    assert web.type == 'cumulative'
    assert web.unit == 'J'
    assert web.volume == 34.0  # 30 J package + 4 J DRAM
    assert web.project_id == snapshots.PROJECT
    assert web.user_id == snapshots.USER


def test_instance_power(conf):
    samples = by_resource(polled_twice(conf, pollsters.InstancePowerPollster))
    web = samples[snapshots.UUID_A]
    # The average over the 2 s between the two polls' snapshots (34 J and
    # 15 J more), not the agent's last-tick power_w (12.25 W, 3.5 W).
    assert (web.name, web.type, web.unit, web.volume) == (
        'power.instance', 'gauge', 'W', pytest.approx(17.0))
    assert web.resource_metadata['period_s'] == 2.0
    assert samples[snapshots.UUID_B].volume == pytest.approx(7.5)


def test_instance_power_first_poll_has_no_sample(conf):
    snapshots.write(conf.scaphandre.snapshot_path)
    resources = discovery.SnapshotInstanceDiscovery(conf).discover(None)
    assert poll(conf, pollsters.InstancePowerPollster, resources) == []


def test_instance_metadata_like_ceilometer_compute_samples(conf):
    snapshots.write(conf.scaphandre.snapshot_path, source='rapl')
    resources = discovery.SnapshotInstanceDiscovery(conf).discover(None)
    web = by_resource(poll(conf, pollsters.InstanceEnergyPollster,
                           resources))[snapshots.UUID_A]
    md = web.resource_metadata
    assert md['display_name'] == 'web'
    assert md['name'] == 'instance-00000001'
    assert md['instance_id'] == snapshots.UUID_A
    assert md['instance_type'] == 'm1.small'
    assert md['flavor']['name'] == 'm1.small'
    assert md['vcpus'] == 2 and md['memory_mb'] == 2048
    assert md['host'] == discovery.host_id(snapshots.PROJECT,
                                           snapshots.HOST)
    assert md['instance_host'] == snapshots.HOST
    assert md['status'] == 'active'
    assert (md['source'], md['model'], md['idle_policy']) == (
        'rapl', 'cputime', 'vcpus')


def test_works_with_ceilometer_local_instances(conf):
    snapshots.write(conf.scaphandre.snapshot_path)
    unknown = nova_like_server('00000000-0000-0000-0000-00000000dead')
    resources = [nova_like_server(snapshots.UUID_A), unknown,
                 nova_like_server(snapshots.UUID_STOPPED)]
    (sample,) = poll(conf, pollsters.InstanceEnergyPollster, resources)
    assert sample.resource_id == snapshots.UUID_A
    assert sample.volume == 34.0
    # Identity and metadata are Ceilometer's, the numbers are ours.
    assert sample.project_id == 'p-nova'
    assert sample.resource_metadata['flavor']['id'] == 'f1'
    assert sample.resource_metadata['image_ref'] == 'i1'
    assert sample.resource_metadata['source'] == 'simulated'


# -- host meters --------------------------------------------------------------

def test_host_zone_energy(conf):
    snapshots.write(conf.scaphandre.snapshot_path)
    samples = by_resource(poll(conf, pollsters.HostZoneEnergyPollster,
                               [conf.host]))
    assert set(samples) == {'compute-1-package-0', 'compute-1-dram-0'}
    pkg = samples['compute-1-package-0']
    assert (pkg.name, pkg.type, pkg.unit, pkg.volume) == (
        'energy.host.zone', 'cumulative', 'J', 90.0)
    assert pkg.project_id is None and pkg.user_id is None
    assert pkg.resource_metadata == {
        'node': 'compute-1', 'name': 'package-0', 'zone': 'package-0',
        'kind': 'package', 'socket': 0, 'source': 'simulated',
        'model': 'cputime', 'idle_policy': 'vcpus',
        'epoch': snapshots.EPOCH, 'idle_estimate': 'learned',
        'idle_estimate_w': 12.5}


def test_host_unattributed_energy(conf):
    snapshots.write(conf.scaphandre.snapshot_path)
    samples = by_resource(poll(
        conf, pollsters.HostUnattributedEnergyPollster, [conf.host]))
    # residual + unallocated idle: 7 + 40 J, and 1 + 2 J for DRAM
    assert samples['compute-1-package-0'].volume == 47.0
    assert samples['compute-1-dram-0'].volume == 3.0
    assert samples['compute-1-dram-0'].name == 'energy.host.unattributed'


def test_host_meters_without_any_instance(conf):
    empty = snapshots.make_ledger()
    empty.instances.clear()
    snapshots.write(conf.scaphandre.snapshot_path, led=empty)
    assert discovery.SnapshotInstanceDiscovery(conf).discover(None) == []
    assert len(poll(conf, pollsters.HostZoneEnergyPollster,
                    [conf.host])) == 2


def test_host_meters_ignore_what_the_resources_are(conf):
    snapshots.write(conf.scaphandre.snapshot_path)
    resources = discovery.SnapshotInstanceDiscovery(conf).discover(None)
    # Put in a source with instance discovery, still one sample per zone.
    assert len(poll(conf, pollsters.HostZoneEnergyPollster,
                    resources)) == 2


@pytest.mark.parametrize('cls', ALL_POLLSTERS)
def test_exporter_labels_are_the_same_for_every_sample(conf, cls):
    # Ceilometer's exporter makes one Gauge per meter with the labels of
    # the first sample; a sample with other labels raises and the rest of
    # the batch is lost.
    samples = polled_twice(conf, cls)
    assert len(samples) == 2
    keys = {tuple(prom_exporter._gen_labels(
        publisher_utils.meter_message_from_counter(s, 'secret'))['keys'])
        for s in samples}
    assert len(keys) == 1
