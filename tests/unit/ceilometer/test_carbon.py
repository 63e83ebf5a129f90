"""carbon.instance: the agent's per-instance carbon counter, in g."""

import pytest

from scaph_openstack.accounting import carbon as carbon_mod
from scaph_openstack.ceilometer import discovery
from scaph_openstack.ceilometer import pollsters
from tests.unit.ceilometer import snapshots
from tests.unit.ceilometer import test_pollsters

CARBON = pollsters.InstanceCarbonPollster


def carbon_samples(conf, **write):
    snapshots.write(conf.scaphandre.snapshot_path, **write)
    resources = discovery.SnapshotInstanceDiscovery(conf).discover(None)
    return test_pollsters.by_resource(
        test_pollsters.poll(conf, CARBON, resources))


def test_carbon_instance(conf):
    samples = carbon_samples(conf, scale=3)
    assert set(samples) == {snapshots.UUID_A, snapshots.UUID_B}
    web = samples[snapshots.UUID_A]
    assert (web.name, web.type, web.unit) == ('carbon.instance',
                                              'cumulative', 'g')
    assert web.volume == 15.0      # 5 000 000 µg x 3
    assert samples[snapshots.UUID_B].volume == 7.5
    assert (web.project_id, web.user_id) == (snapshots.PROJECT,
                                             snapshots.USER)
    md = web.resource_metadata
    assert (md['pue'], md['carbon_intensity'],
            md['carbon_intensity_source']) == (1.2, 250.5, 'file')
    # The same metadata as the energy meters besides.
    energy = test_pollsters.by_resource(test_pollsters.poll(
        conf, pollsters.InstanceEnergyPollster,
        discovery.SnapshotInstanceDiscovery(conf).discover(None)))
    energy_md = energy[snapshots.UUID_A].resource_metadata
    assert {k: v for k, v in md.items() if not k.startswith(
        ('pue', 'carbon_'))} == energy_md


def test_unknown_intensity_still_publishes_the_counter(conf):
    # The counter stood still while no intensity was known; what it
    # counted before is still the instance's carbon.
    samples = carbon_samples(conf, intensity=carbon_mod.UNKNOWN)
    md = samples[snapshots.UUID_A].resource_metadata
    assert samples[snapshots.UUID_A].volume == 5.0
    assert (md['carbon_intensity'], md['carbon_intensity_source']) == (
        None, 'unknown')


def test_no_sample_from_a_snapshot_of_an_older_agent(conf):
    assert carbon_samples(conf, old=True) == {}


def test_no_sample_when_the_agent_counts_no_carbon(conf):
    # [accounting] without an intensity: no carbon_ug, never a made-up 0.
    snapshots.write(conf.scaphandre.snapshot_path, carbon=False)
    doc = snapshots.document(carbon=False)
    assert all('carbon_ug' not in i for i in doc['instances'])
    assert doc['carbon_intensity_g_per_kwh'] is None
    assert carbon_samples(conf, carbon=False) == {}
    # The energy meters are there all the same.
    resources = discovery.SnapshotInstanceDiscovery(conf).discover(None)
    assert len(test_pollsters.poll(conf, pollsters.InstanceEnergyPollster,
                                   resources)) == 2


@pytest.mark.parametrize('value', [True, '5', 1.5, -1, None])
def test_no_sample_from_a_malformed_counter(conf, value):
    doc = snapshots.document()
    for instance in doc['instances']:
        instance['carbon_ug'] = value
    snapshots.write_document(conf.scaphandre.snapshot_path, doc)
    resources = discovery.SnapshotInstanceDiscovery(conf).discover(None)
    assert test_pollsters.poll(conf, CARBON, resources) == []


@pytest.mark.parametrize('key,value', [
    ('pue', None), ('pue', 'high'), ('carbon_intensity_g_per_kwh', 'x'),
    ('carbon_intensity_source', 'guess'), ('carbon_intensity_source', None)])
def test_no_sample_without_what_the_carbon_means(conf, key, value):
    doc = snapshots.document()
    doc[key] = value
    snapshots.write_document(conf.scaphandre.snapshot_path, doc)
    resources = discovery.SnapshotInstanceDiscovery(conf).discover(None)
    assert test_pollsters.poll(conf, CARBON, resources) == []


def test_snapshot_carbon_fields():
    doc = snapshots.document(scale=2)
    assert (doc['pue'], doc['carbon_intensity_g_per_kwh'],
            doc['carbon_intensity_source'], doc['carbon_intensity_since']) \
        == (1.2, 250.5, 'file', 1795290000.0)
    carbon = {i['uuid']: i['carbon_ug'] for i in doc['instances']}
    assert carbon[snapshots.UUID_A] == 10_000_000
    assert carbon[snapshots.UUID_STOPPED] == 0
    assert doc['host_totals']['carbon_ug'] == 0   # zones counted none
    assert all(z['carbon_ug'] == 0 and z['carbon_unknown_uj'] == 0
               for z in doc['zones'])
