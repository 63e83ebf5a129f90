"""The Ceilometer snippets in etc/ceilometer/ load in Ceilometer's own code.

No Gnocchi here: what is checked is that Ceilometer's Gnocchi publisher,
given our gnocchi_resources.yaml addition, maps every meter to a resource
type and takes the right attributes from our samples.
"""

import os

from ceilometer.polling import manager
from ceilometer.publisher import gnocchi
import yaml

from scaph_openstack.ceilometer import discovery
from scaph_openstack.ceilometer import pollsters
from tests.unit.ceilometer import snapshots

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
ETC = os.path.join(ROOT, 'etc', 'ceilometer')
METERS = {'energy.instance', 'energy.instance.dynamic',
          'energy.instance.idle', 'power.instance', 'energy.host.zone',
          'energy.host.unattributed', 'carbon.instance'}


def load_yaml(name):
    with open(os.path.join(ETC, name)) as f:
        return yaml.safe_load(f)


def test_polling_snippet_selects_our_meters(conf):
    cfg = load_yaml('polling.yaml')
    (source,) = cfg['sources']
    assert set(source['meters']) == METERS
    conf.set_override('cfg_file', os.path.join(ETC, 'polling.yaml'),
                      group='polling')
    try:
        (loaded,) = manager.PollingManager(conf).sources
    finally:
        conf.clear_override('cfg_file', group='polling')
    assert all(loaded.support_meter(m) for m in METERS)
    assert not loaded.support_meter('power.state')


def gnocchi_definitions(conf, tmp_path):
    """Ceilometer's default gnocchi_resources.yaml plus our entries."""
    default = os.path.join(os.path.dirname(gnocchi.__file__), 'data',
                           'gnocchi_resources.yaml')
    with open(default) as f:
        merged = yaml.safe_load(f)
    merged['resources'].extend(load_yaml('gnocchi_resources.yaml')
                               ['resources'])
    path = tmp_path / 'gnocchi_resources.yaml'
    path.write_text(yaml.safe_dump(merged))
    definitions, _ = gnocchi.GnocchiPublisher._load_definitions(
        conf, None, str(path))
    return {metric: rd for rd in definitions for metric in rd.metrics}


def test_gnocchi_snippet_maps_every_meter(conf, tmp_path):
    metric_map = gnocchi_definitions(conf, tmp_path)
    assert {m: metric_map[m].cfg['resource_type'] for m in METERS} == {
        'energy.instance': 'instance', 'energy.instance.dynamic': 'instance',
        'energy.instance.idle': 'instance', 'power.instance': 'instance',
        'carbon.instance': 'instance', 'energy.host.zone': 'energy_zone',
        'energy.host.unattributed': 'energy_zone'}
    # The instance meters come from one entry: one resource, its metrics.
    assert metric_map['energy.instance'] is \
        metric_map['energy.instance.dynamic'] is \
        metric_map['energy.instance.idle'] is \
        metric_map['carbon.instance'] is metric_map['power.instance']
    # Counters get our policy with last and rate:sum, the gauge the one
    # with sum, count, mean and max.
    policies = {m: metric_map[m].metrics[m].get('archive_policy_name')
                for m in METERS}
    assert policies == {m: 'scaph-energy' for m in METERS
                        if m != 'power.instance'} | {
        'power.instance': 'scaph-power'}


def test_archive_policies_are_telemetry_setups(conf, tmp_path):
    """The snippet's archive_policies (which the publisher creates) are
    the ones scaph-openstack telemetry-setup creates."""
    # Gnocchi's own parser of these strings (a dependency of gnocchi).
    import pytimeparse

    from scaph_openstack.telemetry import gnocchi as setup

    def shape(policy):
        return (policy['name'], sorted(policy['aggregation_methods']),
                policy['back_window'],
                [(pytimeparse.parse(d['granularity']),
                  pytimeparse.parse(d['timespan']))
                 for d in policy['definition']])
    shipped = load_yaml('gnocchi_resources.yaml')['archive_policies']
    created = [dict(p, definition=[
        {'granularity': setup.seconds(d['granularity']),
         'timespan': setup.seconds(d['timespan'])}
        for d in p['definition']]) for p in setup.ARCHIVE_POLICIES]

    def seconds(policy):
        return (policy['name'], sorted(policy['aggregation_methods']),
                policy['back_window'],
                [(d['granularity'], d['timespan'])
                 for d in policy['definition']])
    assert [shape(p) for p in shipped] == [seconds(p) for p in created]


def test_gnocchi_attributes_from_our_samples(conf, tmp_path):
    metric_map = gnocchi_definitions(conf, tmp_path)
    snapshots.write(conf.scaphandre.snapshot_path)
    cache = {}
    resources = discovery.SnapshotInstanceDiscovery(conf).discover(None)
    (energy, _) = pollsters.InstanceEnergyPollster(conf).get_samples(
        None, cache, resources)
    (zone, _) = pollsters.HostZoneEnergyPollster(conf).get_samples(
        None, cache, [conf.host])
    attrs = metric_map['energy.instance'].sample_attributes(energy)
    # No flavor id in the snapshot: the attribute is left alone rather
    # than overwritten with something else.
    assert attrs == {'host': snapshots.HOST, 'display_name': 'web',
                     'flavor_name': 'm1.small',
                     'energy_source': 'simulated'}
    assert metric_map['energy.host.zone'].sample_attributes(zone) == {
        'node': snapshots.HOST, 'zone': 'package-0', 'kind': 'package'}


def test_power_policy_keeps_sum_and_count():
    """The power policy gives sum and count (the exact mean of the
    power.instance samples over a window: openstack server energy show's
    Average (W)) besides mean and max."""
    (power,) = [p for p in load_yaml('gnocchi_resources.yaml')
                ['archive_policies'] if p['name'] == 'scaph-power']
    assert set(power['aggregation_methods']) == {'sum', 'count', 'mean',
                                                  'max'}
