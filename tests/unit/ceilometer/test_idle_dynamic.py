"""energy.instance.dynamic and .idle, idle estimates and epochs (issue 9).

Exact values from a known snapshot (snapshots.IDLE_UJ: web has 6 J of
package and 1 J of DRAM idle in its 30 + 4 J, db 3 + 0.5 J in 13 + 2 J),
and snapshots of an agent that did not write these fields yet.
"""

from ceilometer.publisher import utils as publisher_utils
from ceilometer.polling import prom_exporter
import pytest

from scaph_openstack.ceilometer import discovery
from scaph_openstack.ceilometer import pollsters
from scaph_openstack import ledger as ledger_mod
from scaph_openstack.publishers import snapshot
from tests.unit.ceilometer import snapshots
from tests.unit.ceilometer import test_pollsters

A, B = snapshots.UUID_A, snapshots.UUID_B
ENERGY_POLLSTERS = (pollsters.InstanceEnergyPollster,
                    pollsters.InstanceDynamicEnergyPollster,
                    pollsters.InstanceIdleEnergyPollster)
PARTS = (pollsters.InstanceDynamicEnergyPollster,
         pollsters.InstanceIdleEnergyPollster)


def instance_samples(conf, cls, resources=None):
    if resources is None:
        resources = discovery.SnapshotInstanceDiscovery(conf).discover(None)
    return test_pollsters.by_resource(test_pollsters.poll(conf, cls,
                                                          resources))


def zone_samples(conf, cls=pollsters.HostZoneEnergyPollster):
    return test_pollsters.by_resource(test_pollsters.poll(conf, cls,
                                                          [conf.host]))


def volumes(conf, **kwargs):
    """{(meter, uuid): J} of the three instance energy meters."""
    snapshots.write(conf.scaphandre.snapshot_path, **kwargs)
    return {(cls.meter_name, uuid): s.volume for cls in ENERGY_POLLSTERS
            for uuid, s in instance_samples(conf, cls).items()}


# -- the known snapshot ------------------------------------------------------

def test_the_known_snapshot_is_what_the_agent_writes():
    # The fields these tests read, as snapshot.build writes them from the
    # ledger (doc/snapshot.md): if their meaning changes, so must we.
    doc = snapshots.document()
    assert (doc['epoch'], doc['epoch_started']) == (
        snapshots.EPOCH, snapshots.EPOCH_STARTED)
    web = next(i for i in doc['instances'] if i['uuid'] == A)
    assert {k: web[k] for k in ('total_uj', 'dynamic_uj', 'idle_uj',
                                'dynamic_energy_uj', 'idle_energy_uj',
                                'placement')} == {
        'total_uj': 34_000_000, 'dynamic_uj': 27_000_000,
        'idle_uj': 7_000_000,
        'dynamic_energy_uj': {'dram-0': 3_000_000, 'package-0': 24_000_000},
        'idle_energy_uj': {'dram-0': 1_000_000, 'package-0': 6_000_000},
        'placement': 'socket'}
    assert {z['name']: (z['idle_estimate'], z['source'])
            for z in doc['zones']} == {
        'package-0': ({'state': 'learned', 'watts': 12.5}, 'simulated'),
        'dram-0': ({'state': 'configured', 'watts': 2.25}, 'simulated')}


# -- the two meters -----------------------------------------------------------

def test_dynamic_and_idle_values(conf):
    assert volumes(conf) == {
        ('energy.instance', A): 34.0,
        ('energy.instance.dynamic', A): 27.0,   # 24 J package + 3 J DRAM
        ('energy.instance.idle', A): 7.0,       # 6 J package + 1 J DRAM
        ('energy.instance', B): 15.0,
        ('energy.instance.dynamic', B): 11.5,
        ('energy.instance.idle', B): 3.5,
    }


def test_dynamic_plus_idle_is_energy_instance_at_scale(conf):
    # Counters of a long-running host: tens of MJ, still exact in J.
    got = volumes(conf, scale=10 ** 6)
    for uuid in (A, B):
        assert got[('energy.instance.dynamic', uuid)] + \
            got[('energy.instance.idle', uuid)] == \
            got[('energy.instance', uuid)]
    assert got[('energy.instance.idle', A)] == 7_000_000.0
    assert got[('energy.instance.dynamic', B)] == 11_500_000.0


def test_idle_policy_none_gives_zero_idle_not_no_sample(conf):
    # idle_policy = none: idle stays with the host, every instance's idle
    # counter is 0 and its dynamic counter is all of energy.instance.
    assert volumes(conf, idle_policy='none',
                   led=snapshots.make_ledger(idle={})) == {
        ('energy.instance', A): 34.0,
        ('energy.instance.dynamic', A): 34.0,
        ('energy.instance.idle', A): 0.0,
        ('energy.instance', B): 15.0,
        ('energy.instance.dynamic', B): 15.0,
        ('energy.instance.idle', B): 0.0,
    }


@pytest.mark.parametrize('cls', PARTS)
def test_part_samples_are_like_energy_instance(conf, cls):
    snapshots.write(conf.scaphandre.snapshot_path, source='rapl')
    energy = instance_samples(conf, pollsters.InstanceEnergyPollster)
    parts = instance_samples(conf, cls)
    assert set(parts) == {A, B}
    for uuid, part in parts.items():
        assert (part.name, part.type, part.unit) == (
            cls.meter_name, 'cumulative', 'J')
        assert part.resource_id == uuid
        assert (part.project_id, part.user_id) == (snapshots.PROJECT,
                                                   snapshots.USER)
        assert part.resource_metadata == energy[uuid].resource_metadata


@pytest.mark.parametrize('cls', PARTS)
def test_parts_with_ceilometer_local_instances(conf, cls):
    snapshots.write(conf.scaphandre.snapshot_path)
    resources = [test_pollsters.nova_like_server(A),
                 test_pollsters.nova_like_server(snapshots.UUID_STOPPED)]
    (part,) = test_pollsters.poll(conf, cls, resources)
    assert part.resource_id == A
    assert part.volume == {'energy.instance.dynamic': 27.0,
                           'energy.instance.idle': 7.0}[cls.meter_name]
    assert part.project_id == 'p-nova'
    assert part.resource_metadata['flavor']['id'] == 'f1'
    assert part.resource_metadata['idle_estimate'] == 'learned'


@pytest.mark.parametrize('meter,value', [
    ('energy.instance.dynamic', 'dynamic'), ('energy.instance.idle', 'idle')])
def test_exporter_labels(conf, meter, value):
    # What ceilometer-polling's Prometheus exporter makes of a sample.
    snapshots.write(conf.scaphandre.snapshot_path)
    cls = {c.meter_name: c for c in PARTS}[meter]
    part = instance_samples(conf, cls)[A]
    labels = prom_exporter._gen_labels(
        publisher_utils.meter_message_from_counter(part, 'secret'))
    assert dict(zip(labels['keys'], labels['values'], strict=True)) == {
        'energy': value, 'publisher': 'ceilometer', 'type': 'instance',
        'counter': meter, 'project': snapshots.PROJECT,
        'user': snapshots.USER, 'unit': 'J', 'resource': A,
        'vm_instance': discovery.host_id(snapshots.PROJECT, snapshots.HOST),
        'resource_name': 'web:instance-00000001', 'server_group': 'none',
        'flavor_name': 'm1.small'}


# -- idle_estimate and epoch in the metadata ---------------------------------

@pytest.mark.parametrize('cls', test_pollsters.INSTANCE_POLLSTERS)
def test_instance_metadata(conf, cls):
    # Second polls: power.instance has no sample on a first one.
    samples = test_pollsters.polled_twice(conf, cls)
    assert len(samples) == 2
    for sample in samples:
        md = sample.resource_metadata
        # package-0 learned 12.5 W, dram-0 configured 2.25 W
        assert (md['idle_estimate'], md['idle_estimate_w'], md['epoch']) \
            == ('learned', 14.75, snapshots.EPOCH)
        assert (md['source'], md['model'], md['idle_policy']) == (
            'simulated', 'cputime', 'vcpus')


@pytest.mark.parametrize('states,expected', [
    (('configured', 'configured'), 'configured'),
    (('configured', 'learned'), 'learned'),
    (('learned', 'configured'), 'learned'),
    (('learned', 'learned'), 'learned'),
    (('calibrating', 'configured'), 'calibrating'),
    (('learned', 'calibrating'), 'calibrating'),
    # A state this reader does not know is never reported as better.
    (('configured', 'estimated'), 'estimated'),
])
def test_instance_idle_estimate_is_the_least_converged(conf, states,
                                                        expected):
    estimates = {'package-0': (states[0], 10.0), 'dram-0': (states[1], 1.5)}
    snapshots.write(conf.scaphandre.snapshot_path,
                    led=snapshots.make_ledger(idle_estimates=estimates))
    md = instance_samples(conf, pollsters.InstanceEnergyPollster)[
        A].resource_metadata
    assert (md['idle_estimate'], md['idle_estimate_w']) == (expected, 11.5)


def ledger_with_more_zones():
    """Two sockets, with core and psys zones that are not additive."""
    led = snapshots.make_ledger()
    for name, kind, socket in (('package-1', 'package', 1),
                               ('dram-1', 'dram', 1),
                               ('core-0', 'core', 0), ('psys', 'psys', 0)):
        led.zones[name] = ledger_mod.ZoneRecord(name, kind, socket,
                                                measured_uj=1_000_000)
    snapshots.set_idle_estimates(led, {
        'package-0': ('configured', 10.0), 'dram-0': ('configured', 1.5),
        'package-1': ('learned', 11.25), 'dram-1': ('configured', 1.5),
        'core-0': ('calibrating', 4.0), 'psys': ('calibrating', 30.0)})
    return led


def test_instance_idle_estimate_counts_package_and_dram_only(conf):
    md = test_pollsters.by_resource(test_pollsters.polled_twice(
        conf, pollsters.InstancePowerPollster,
        led=ledger_with_more_zones()))[B].resource_metadata
    # core-0 and psys are calibrating, but are parts of (or contain) the
    # package and DRAM zones: neither their state nor their watts count.
    assert (md['idle_estimate'], md['idle_estimate_w']) == (
        'learned', 24.25)


def test_host_zone_metadata(conf):
    snapshots.write(conf.scaphandre.snapshot_path,
                    led=ledger_with_more_zones())
    common = {'node': snapshots.HOST, 'source': 'simulated',
              'model': 'cputime', 'idle_policy': 'vcpus',
              'epoch': snapshots.EPOCH}
    for cls in test_pollsters.HOST_POLLSTERS:
        got = {rid: s.resource_metadata
               for rid, s in zone_samples(conf, cls).items()}
        assert got == {
            'compute-1-' + name: dict(
                common, name=name, zone=name, kind=kind, socket=socket,
                idle_estimate=state, idle_estimate_w=watts)
            for name, kind, socket, state, watts in (
                ('package-0', 'package', 0, 'configured', 10.0),
                ('dram-0', 'dram', 0, 'configured', 1.5),
                ('package-1', 'package', 1, 'learned', 11.25),
                ('dram-1', 'dram', 1, 'configured', 1.5),
                ('core-0', 'core', 0, 'calibrating', 4.0),
                ('psys', 'psys', 0, 'calibrating', 30.0))}


def test_zone_source_is_the_zones_own(conf):
    doc = snapshots.document(source='rapl')
    doc['zones'][1]['source'] = 'simulated'   # e.g. no DRAM RAPL domain
    snapshot.write(conf.scaphandre.snapshot_path, doc)
    got = zone_samples(conf)
    assert got['compute-1-package-0'].resource_metadata['source'] == 'rapl'
    assert got['compute-1-dram-0'].resource_metadata['source'] == \
        'simulated'
    # Instance samples keep the snapshot's.
    assert instance_samples(conf, pollsters.InstanceEnergyPollster)[
        A].resource_metadata['source'] == 'rapl'


def test_epoch_is_the_snapshots(conf):
    doc = snapshots.document()
    doc['epoch'] = 3
    snapshot.write(conf.scaphandre.snapshot_path, doc)
    assert instance_samples(conf, pollsters.InstanceIdleEnergyPollster)[
        A].resource_metadata['epoch'] == 3
    assert zone_samples(conf)['compute-1-dram-0'].resource_metadata[
        'epoch'] == 3


# -- snapshots of an older agent ---------------------------------------------

def test_old_snapshot_gives_no_dynamic_or_idle_samples(conf):
    assert volumes(conf, old=True) == {('energy.instance', A): 34.0,
                                       ('energy.instance', B): 15.0}


@pytest.mark.parametrize('cls', PARTS)
def test_old_snapshot_with_local_instances(conf, cls):
    snapshots.write(conf.scaphandre.snapshot_path, old=True)
    assert test_pollsters.poll(
        conf, cls, [test_pollsters.nova_like_server(A)]) == []


def test_old_snapshot_metadata(conf):
    for cls in (pollsters.InstanceEnergyPollster,
                pollsters.InstancePowerPollster):
        md = test_pollsters.by_resource(test_pollsters.polled_twice(
            conf, cls, old=True))[A].resource_metadata
        assert not {'idle_estimate', 'idle_estimate_w', 'epoch'} & set(md)
        assert md['source'] == 'simulated'
    snapshots.write(conf.scaphandre.snapshot_path, old=True)
    pkg = zone_samples(conf)['compute-1-package-0']
    assert pkg.resource_metadata == {
        'node': 'compute-1', 'name': 'package-0', 'zone': 'package-0',
        'kind': 'package', 'socket': 0, 'source': 'simulated',
        'model': 'cputime', 'idle_policy': 'vcpus'}
    assert pkg.volume == 90.0


def test_old_snapshot_one_cycle(conf):
    # The meters an old snapshot can give are all there, the others are
    # silently absent (no warning: an older agent is not an error).
    snapshots.write(conf.scaphandre.snapshot_path, old=True)
    resources = discovery.SnapshotInstanceDiscovery(conf).discover(None)
    cache = {}
    got = {}
    for cls in test_pollsters.ALL_POLLSTERS:
        got[cls.meter_name] = len(cls(conf).get_samples(None, cache,
                                                        resources))
    # (power.instance: none on a first poll, whatever the snapshot.)
    assert got == {'energy.instance': 2, 'energy.instance.dynamic': 0,
                   'energy.instance.idle': 0, 'power.instance': 0,
                   'energy.host.zone': 2, 'energy.host.unattributed': 2,
                   'carbon.instance': 0}


@pytest.mark.parametrize('estimate', [
    None, 'learned', {'state': 'learned'}, {'watts': 2.0},
    {'state': 'learned', 'watts': 'many'}, {'state': 7, 'watts': 2.0},
    {'state': 'learned', 'watts': True}])
def test_malformed_or_missing_zone_estimate(conf, estimate):
    doc = snapshots.document()
    (dram,) = [z for z in doc['zones'] if z['name'] == 'dram-0']
    if estimate is None:
        del dram['idle_estimate']
    else:
        dram['idle_estimate'] = estimate
    snapshot.write(conf.scaphandre.snapshot_path, doc)
    md = instance_samples(conf, pollsters.InstanceEnergyPollster)[
        A].resource_metadata
    # A partial sum would understate the idle power: nothing is said.
    assert not {'idle_estimate', 'idle_estimate_w'} & set(md)
    assert md['epoch'] == snapshots.EPOCH
    zones = zone_samples(conf)
    assert 'idle_estimate' not in zones['compute-1-dram-0'].resource_metadata
    assert zones['compute-1-package-0'].resource_metadata[
        'idle_estimate'] == 'learned'


def test_zone_without_an_estimate_yet_is_calibrating(conf):
    # The agent writes state null for a zone it has no estimate for.
    doc = snapshots.document()
    doc['zones'][0]['idle_estimate'] = {'state': None, 'watts': 0.0}
    snapshot.write(conf.scaphandre.snapshot_path, doc)
    md = instance_samples(conf, pollsters.InstanceEnergyPollster)[
        A].resource_metadata
    assert (md['idle_estimate'], md['idle_estimate_w']) == (
        'calibrating', 2.25)
    pkg = zone_samples(conf)['compute-1-package-0'].resource_metadata
    assert (pkg['idle_estimate'], pkg['idle_estimate_w']) == (
        'calibrating', 0.0)


@pytest.mark.parametrize('key', ['dynamic_uj', 'idle_uj'])
def test_one_part_missing(conf, key):
    doc = snapshots.document()
    for inst in doc['instances']:
        del inst[key]
    snapshot.write(conf.scaphandre.snapshot_path, doc)
    got = {cls.meter_name: len(instance_samples(conf, cls))
           for cls in PARTS}
    assert got == {'energy.instance.dynamic': 0 if key == 'dynamic_uj'
                   else 2, 'energy.instance.idle': 0 if key == 'idle_uj'
                   else 2}
