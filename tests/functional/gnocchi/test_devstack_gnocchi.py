"""The devstack plugin's test-config phase against a real, fresh Gnocchi.

A second Gnocchi stack (tools/gnocchi-stack, its own PostgreSQL cluster and
storage under /var/lib/scaph-openstack-test/gnocchi-devstack, the API on
127.0.0.1:8042), wiped first so that nothing of ours is in it. The real
ceilometer-upgrade creates Ceilometer's resource types, as devstack's
Ceilometer plugin does at its extra phase. Then the real plugin phase,
`tests/devstack/run-phase stack test-config`, over the fake devstack of
tests/unit/test_devstack_plugin.py, except that $SCAPH_OPENSTACK_BIN_DIR's
scaph-openstack is the real console script of the virtualenv and
$TOP_DIR/openrc gives the admin's identity for this Gnocchi (gnocchiclient's
gnocchi-noauth auth type: OS_AUTH_TYPE, read by keystoneauth, and its own
GNOCCHI_USER_ID, GNOCCHI_PROJECT_ID, GNOCCHI_ROLES and GNOCCHI_ENDPOINT,
read by gnocchiclient; it does not read OS_USER_ID and the like).

Checked through gnocchiclient: before, none of our archive policies
(scaph-energy, the power one), no energy_zone resource type, no
energy_source attribute on the instance type; after, all of them, with the
definitions of scaph_openstack/telemetry/gnocchi.py; a second run changes
nothing. Then
Ceilometer's gnocchi:// publisher, built from the URL the plugin gave our
meters in devstack's pipeline.yaml (whose archive_policy=ceilometer-low
would otherwise override ours) and reading the gnocchi_resources.yaml the
plugin merged, from /etc/ceilometer's stand-in as Ceilometer finds it,
creates an instance resource with our metrics on our archive policies, and
an energy_zone resource.

Root is needed (PostgreSQL runs as the postgres user): skipped otherwise,
a failure with CI=true.
"""

import datetime
import os
import subprocess
import urllib.parse
import uuid

import pytest

from scaph_openstack.telemetry import gnocchi as telemetry
from tests.functional.helpers import agent as agentlib
from tests.functional.helpers import gnocchi as gnocchilib
from tests.functional.helpers import require
from tests.unit import test_devstack_plugin as devstack_test

DIR = '/var/lib/scaph-openstack-test/gnocchi-devstack'
PORT = 8042
ENDPOINT = 'http://127.0.0.1:%d' % PORT
STACK_ENV = dict(os.environ, SCAPH_GNOCCHI_DIR=DIR,
                 SCAPH_GNOCCHI_PORT=str(PORT))
SERVICES = devstack_test.ALL_SERVICES + ',gnocchi-api,gnocchi-metricd'

# devstack's openrc for this Gnocchi: the admin, through gnocchiclient's
# gnocchi-noauth plugin (tools/gnocchi-stack trusts the identity headers).
OPENRC = '''# openrc [username] [projectname], for a Gnocchi without Keystone
export OS_AUTH_TYPE=gnocchi-noauth
export GNOCCHI_USER_ID=%(user_id)s
export GNOCCHI_PROJECT_ID=%(project_id)s
export GNOCCHI_ROLES=admin
export GNOCCHI_ENDPOINT=%(endpoint)s
''' % dict(gnocchilib.ADMIN, endpoint=ENDPOINT)


def gnocchi_stack(command, timeout=300):
    return subprocess.run(['bash', gnocchilib.STACK, command],
                          env=STACK_ENV, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope='module')
def fresh_gnocchi():
    require(os.geteuid() == 0, 'the Gnocchi stack runs PostgreSQL as root')
    require(agentlib.venv_bin('gnocchi-api') is not None,
            'gnocchi is not installed (tools/install-deps)')
    require(agentlib.venv_bin('ceilometer-upgrade') is not None,
            'ceilometer is not installed (tools/install-deps)')
    # A previous run's stack (left running by a killed test): stopped,
    # then wiped, so that nothing of ours is in this one.
    if os.path.isdir(DIR):
        gnocchi_stack('stop', timeout=120)
        subprocess.run(['rm', '-rf', '--one-file-system', DIR], check=True)
    proc = gnocchi_stack('start')
    try:
        require(proc.returncode == 0, 'tools/gnocchi-stack start failed:\n%s'
                % proc.stderr[-3000:])
        yield gnocchilib.Gnocchi(ENDPOINT, os.path.join(DIR, 'gnocchi.conf'))
    finally:
        gnocchi_stack('stop', timeout=120)


def state(client):
    """What telemetry-setup manages, as Gnocchi has it (None: missing)."""
    from gnocchiclient import exceptions as gnocchi_exc

    def get(manager, name):
        try:
            return manager.get(name)
        except gnocchi_exc.NotFound:
            return None

    policies = {p['name']: get(client.archive_policy, p['name'])
                for p in telemetry.ARCHIVE_POLICIES}
    zone = get(client.resource_type, telemetry.ZONE_RESOURCE_TYPE['name'])
    instance = get(client.resource_type, telemetry.INSTANCE_RESOURCE_TYPE)
    return policies, zone, instance


def policy_definition(policy):
    return {'name': policy['name'], 'back_window': policy['back_window'],
            'aggregation_methods': sorted(policy['aggregation_methods']),
            'definition': [{'granularity': d['granularity'],
                            'timespan': d['timespan']}
                           for d in policy['definition']]}


def devstack_host(tmp_path):
    ds = devstack_test.Devstack(tmp_path / 'devstack',
                                ENABLED_SERVICES=SERVICES)
    os.makedirs(ds.bin_dir, exist_ok=True)
    scaph_openstack = agentlib.venv_bin('scaph-openstack')
    assert scaph_openstack, 'no scaph-openstack console script'
    os.symlink(scaph_openstack, ds.scaph_openstack)
    with open(ds.openrc, 'w') as f:
        f.write(OPENRC)
    # devstack's pipeline.yaml (GNOCCHI_ARCHIVE_POLICY=ceilometer-low).
    devstack_test.write_yaml(ds.pipeline, devstack_test.CEILOMETER_PIPELINE)
    return ds


def test_test_config_creates_what_gnocchi_needs(fresh_gnocchi, tmp_path):
    stack = fresh_gnocchi
    stack.ceilometer_upgrade(tmp_path)
    client = stack.client()
    policies, zone, instance = state(client)
    assert policies == {p['name']: None for p in telemetry.ARCHIVE_POLICIES}
    assert zone is None
    assert instance is not None, 'ceilometer-upgrade made no instance type'
    assert 'energy_source' not in instance['attributes']
    ceilometer_types = {t['name'] for t in client.resource_type.list()}

    (tmp_path / 'devstack').mkdir()
    ds = devstack_host(tmp_path)
    for phase in ('pre-install', 'install', 'post-config', 'extra'):
        ds.run('stack', phase)
    result = ds.run('stack', 'test-config')
    assert not ds.calls('die') and not ds.calls('violation')
    assert 'created' in result.stdout, result.stdout

    policies, zone, instance = state(client)
    for expected in telemetry.ARCHIVE_POLICIES:
        assert policies[expected['name']] is not None, expected['name']
        assert policy_definition(policies[expected['name']]) == \
            policy_definition(expected)
    assert zone is not None
    assert zone['attributes'] == telemetry.ZONE_RESOURCE_TYPE['attributes']
    for name, definition in telemetry.INSTANCE_ATTRIBUTES.items():
        assert instance['attributes'][name] == definition
    # Ceilometer's own types are still there, one more (ours).
    assert {t['name'] for t in client.resource_type.list()} == \
        ceilometer_types | {'energy_zone'}
    after = state(client)

    # A second stack.sh: telemetry-setup finds everything present.
    result = ds.run('stack', 'test-config')
    assert 'created' not in result.stdout, result.stdout
    assert state(client) == after

    publish_through_ceilometer(stack, ds, tmp_path)


def our_publisher_url(ds):
    """The publisher of the pipeline's sink for our meters."""
    doc = devstack_test.yaml_load(ds.pipeline)
    source, = [s for s in doc['sources']
               if 'energy.instance' in s['meters']]
    sinks = {sink['name']: sink['publishers'] for sink in doc['sinks']}
    url, = [u for name in source['sinks'] for u in sinks[name]]
    return url


def publish_through_ceilometer(stack, ds, tmp_path):
    """Ceilometer's gnocchi:// publisher, as the pipeline the plugin
    edited builds it for our meters, with the plugin's merged
    gnocchi_resources.yaml: our meters land on our resources and
    policies."""
    from ceilometer import sample as sample_mod
    from ceilometer import service
    from ceilometer.publisher import gnocchi as gnocchi_publisher

    url = our_publisher_url(ds)
    assert url == 'gnocchi://?filter_project=service'
    # ceilometer.conf in the fake /etc/ceilometer: the publisher finds
    # gnocchi_resources.yaml next to it, as on a devstack host.
    agentlib.write_config(ds.ceilometer_conf, {
        'service_credentials': stack.ceilometer_credentials()})
    conf = service.prepare_service(argv=[],
                                   config_files=[ds.ceilometer_conf])

    def publisher_for(url):
        # No Keystone: the filter on the service project would ask it.
        return gnocchi_publisher.GnocchiPublisher(
            conf, urllib.parse.urlparse(url + '&enable_filter_project=false'))

    publisher = publisher_for(url)
    assert {m for rd in publisher.resources_definition
            for m in rd.metrics} >= devstack_test.our_meters()

    project, user = uuid.uuid4().hex, uuid.uuid4().hex
    zone_id = 'compute-1-package-0'
    now = datetime.datetime.now(datetime.timezone.utc).isoformat()
    instance_metadata = {'host': 'compute-1', 'display_name': 'vm-1',
                         'flavor_id': '1', 'flavor_name': 'm1.tiny',
                         'source': 'simulated'}

    def instance_samples(instance_id):
        return [
            sample_mod.Sample(
                name=name, type=kind, unit=unit, volume=volume,
                user_id=user, project_id=project, resource_id=instance_id,
                timestamp=now, resource_metadata=instance_metadata)
            for name, kind, unit, volume in (
                ('energy.instance', 'cumulative', 'J', 1234.5),
                ('energy.instance.dynamic', 'cumulative', 'J', 1000.0),
                ('energy.instance.idle', 'cumulative', 'J', 234.5),
                ('power.instance', 'gauge', 'W', 12.5))]

    def policies(instance_id):
        metrics = client.resource.get('instance', instance_id)['metrics']
        return {name: client.metric.get(metric_id)['archive_policy']['name']
                for name, metric_id in metrics.items()}

    client = stack.client()
    instance_id = str(uuid.uuid4())
    samples = instance_samples(instance_id)
    samples.append(sample_mod.Sample(
        name='energy.host.zone', type='cumulative', unit='J', volume=99.0,
        user_id=None, project_id=None, resource_id=zone_id, timestamp=now,
        resource_metadata={'node': 'compute-1', 'zone': 'package-0',
                           'kind': 'package'}))
    publisher.publish_samples(samples)

    resource = client.resource.get('instance', instance_id)
    assert resource['energy_source'] == 'simulated'
    assert resource['project_id'] == project
    energy, power = telemetry.ENERGY_POLICY, telemetry.POWER_POLICY
    assert policies(instance_id) == {'energy.instance': energy,
                      'energy.instance.dynamic': energy,
                      'energy.instance.idle': energy,
                      'power.instance': power}
    zone = client.resource.get('energy_zone', zone_id)
    assert (zone['node'], zone['zone'], zone['kind']) == (
        'compute-1', 'package-0', 'package')
    assert set(zone['metrics']) == {'energy.host.zone'}

    # Why the plugin gives our meters their own sink: through devstack's
    # publisher, archive_policy=ceilometer-low wins over our policies.
    other = str(uuid.uuid4())
    publisher_for(devstack_test.DEVSTACK_PUBLISHER).publish_samples(
        instance_samples(other))
    assert set(policies(other).values()) == {'ceilometer-low'}
