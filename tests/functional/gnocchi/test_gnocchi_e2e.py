"""Energy from the agent to Gnocchi, all real, read back per instance and
per project against the agent's ledger.

QEMU guests carrying Nova's libvirt metadata (two in one project, one in
another) run under the real libvirtd; scaph-openstack-agent (simulated
energy, its default attribution, a static carbon intensity) writes its
snapshot; the real ceilometer-polling polls our pollsters and sends the
samples over a loopback RabbitMQ to the real ceilometer-agent-notification,
whose pipeline publishes them with Ceilometer's gnocchi:// publisher (and
a file:// one, the record of what was published) to a real Gnocchi
(tools/gnocchi-stack: PostgreSQL, gnocchi-api, gnocchi-metricd).
Ceilometer's resource types come from the real ceilometer-upgrade, ours
from `scaph-openstack telemetry-setup`, run twice (idempotent).

Checked, once the agent has stopped (so that its ledger on disk is final)
and polling has published its last snapshot:

- per instance, Gnocchi's `last` of energy.instance, its two parts and
  carbon.instance are the ledger's counters; project, user, display name
  and energy_source on the resource are the instance's;
- through Gnocchi's aggregates API, per instance (grouped by id) the
  same, and per project (sum of `last`, grouped by project_id) the sum of
  the ledger's counters of that project's instances;
- the sum of `rate:sum` over the periods is the increase between the
  first and the last published sample (doc/ceilometer.md: Gnocchi's rate
  is joules per period, not watts);
- the energy_zone resources carry the host's zones.

Skipped where this cannot run (not root, no libvirtd, RabbitMQ or
Gnocchi); with CI=true that is a failure instead.
"""

import fractions
import os

import pytest

from scaph_openstack import ledger as ledger_mod
from tests.functional.helpers import agent as agentlib
from tests.functional.helpers import ceilometer as ceilolib
from tests.functional.helpers import gnocchi as gnocchilib
from tests.functional import test_ceilometer as ceilotests
# The RabbitMQ broker and the process reaper of the Ceilometer tests.
from tests.functional.test_ceilometer import broker  # noqa: F401
from tests.functional.test_ceilometer import processes  # noqa: F401

INSTANCE_METERS = ('energy.instance', 'energy.instance.dynamic',
                   'energy.instance.idle', 'carbon.instance')
CARBON_INTENSITY = 321.5     # g CO2e / kWh, static
PUE = 1.25


@pytest.fixture(scope='module')
def stack():
    return gnocchilib.ensure_gnocchi()


@pytest.fixture(scope='module')
def guests(stack):
    """Three running guests: two of project A, one of project B."""
    uri = _libvirt_uri()
    import libvirt
    project_a, project_b = gnocchilib.new_project(), gnocchilib.new_project()
    made = []
    try:
        for project in (project_a, project_a, project_b):
            inst = ceilotests.Instance()
            inst.project_id = project
            conn = libvirt.open(uri)
            try:
                conn.defineXML(ceilotests.domain_xml(
                    inst, ceilotests._owner_tag())).create()
            finally:
                conn.close()
            made.append(inst)
        yield made
    finally:
        for inst in made:
            ceilotests._destroy_undefine(uri, inst.uuid)


def _libvirt_uri():
    from tests.functional.helpers import libvirtd
    from tests.functional.helpers import require
    require(os.geteuid() == 0, 'libvirtd and QEMU guests need root')
    try:
        libvirtd.ensure_libvirtd()
    except (libvirtd.LibvirtdError, OSError) as exc:
        require(False, 'libvirtd cannot be started: %s' % exc)
    return libvirtd.DEFAULT_URI


def ledger_counters(agent):
    """{uuid: {meter: value}} from the agent's ledger file, computed the
    ledger's own way (published = this host's + carried), in J and g."""
    ledger = ledger_mod.Ledger.load(os.path.join(
        agent.sections['agent']['state_dir'], 'ledger.json'))
    counters = {}
    for uuid, record in ledger.instances.items():
        total = ledger_mod.additive_total(record.published_kind_totals())
        idle = ledger_mod.additive_total(
            record.published_idle_kind_totals())
        counters[uuid] = {
            'energy.instance': fractions.Fraction(total, 10**6),
            'energy.instance.idle': fractions.Fraction(idle, 10**6),
            'energy.instance.dynamic': fractions.Fraction(total - idle,
                                                          10**6),
            'carbon.instance': fractions.Fraction(
                record.published_carbon_ug(), 10**6),
        }
    return counters


def gnocchi_last(client, uuid, meter):
    """The counter Gnocchi holds at its last period, or None."""
    from gnocchiclient import exceptions
    try:
        measures = client.metric.get_measures(
            meter, resource_id=uuid, aggregation='last', granularity=300,
            refresh=True)
    except exceptions.NotFound:      # not published yet
        return None
    return measures[-1][2] if measures else None


def published(out, uuid, meter):
    """The volumes published, in the order they were polled (the file
    publisher writes batches as they come)."""
    return [s['volume'] for s in sorted(
        ceilotests.read_samples(out), key=ceilotests.polled_at)
        if s['resource_id'] == uuid and s['name'] == meter]


def test_energy_reaches_gnocchi(tmp_path, stack, guests, processes,  # noqa: F811
                                broker):  # noqa: F811
    stack.ceilometer_upgrade(tmp_path)
    first = stack.telemetry_setup()
    second = stack.telemetry_setup()
    # Idempotent: the second run finds everything the first made.
    assert all(line.endswith('present') for line in second.splitlines()), \
        second
    assert 'energy_zone' in first and 'energy_source' in first
    admin = stack.client()

    agent = agentlib.Agent(tmp_path, {
        'agent': {'interval': 1},
        'energy': {'source': 'simulated'},
        'accounting': {'carbon_intensity': CARBON_INTENSITY, 'pue': PUE},
        'snapshot': {'stale_after': 60},
    })
    processes.append(agent.start())
    uuids = {g.uuid for g in guests}
    agent.wait_for_snapshot(lambda s: uuids <= {
        i['uuid'] for i in s.instances if i['running'] and i['total_uj']})

    out = os.path.join(str(tmp_path), 'samples.json')
    notification = gnocchilib.notification_agent(
        tmp_path / 'notification', broker.url, stack, file_out=out)
    processes.append(notification.start())
    polling = ceilolib.Polling(tmp_path, agent.snapshot_path,
                               polling={'enable_notifications': True},
                               default={'transport_url': broker.url})
    processes.append(polling.start())

    # Several published samples of every instance meter.
    def enough():
        notification.check_alive()
        polling.check_alive()
        return all(len(published(out, g.uuid, m)) >= 4
                   for g in guests for m in INSTANCE_METERS)
    ceilotests.wait_until(enough, 120, lambda: 'samples in %s:\n%s' % (
        out, notification.tail()))

    # Stop the agent: its ledger on disk is final, and its last snapshot
    # (fresh for stale_after) is what polling keeps publishing.
    assert agent.stop(), 'the agent did not stop on SIGTERM'
    truth = ledger_counters(agent)
    final = agent.read_snapshot(check_stale=False)
    for doc in final.instances:
        if doc['uuid'] in uuids:
            assert fractions.Fraction(doc['total_uj'], 10**6) == \
                truth[doc['uuid']]['energy.instance']

    # 1. Per instance: Gnocchi's last == the ledger (a J value travels as
    # a float: equal to the nearest double).
    def gnocchi_has_final():
        return all(gnocchi_last(admin, g.uuid, m) ==
                   float(truth[g.uuid][m])
                   for g in guests for m in INSTANCE_METERS)
    ceilotests.wait_until(gnocchi_has_final, 90, lambda: 'Gnocchi %s, '
                          'ledger %s; notification log:\n%s' % (
                              {(g.uuid, m): gnocchi_last(admin, g.uuid, m)
                               for g in guests for m in INSTANCE_METERS},
                              truth, notification.tail()), interval=1)
    for g in guests:
        counters = truth[g.uuid]
        assert counters['energy.instance'] > 0
        assert counters['carbon.instance'] > 0
        resource = admin.resource.get('instance', g.uuid)
        assert (resource['project_id'], resource['user_id']) == (
            g.project_id, g.user_id)
        assert resource['display_name'] == g.display_name
        assert resource['energy_source'] == 'simulated'
        assert set(resource['metrics']) >= set(INSTANCE_METERS) | {
            'power.instance'}

    # 2. Through the aggregates API, per instance (grouped by id: every
    # counter, the ledger's) and per project (grouped by project_id: the
    # sum of the ledger's counters of its instances).
    result = admin.aggregates.fetch(
        '(metric %s)' % ' '.join('(%s last)' % m for m in INSTANCE_METERS),
        resource_type='instance', search={'in': {'id': sorted(uuids)}},
        groupby=['id'], granularity=300)
    per_instance = {}
    for group in result:
        (measures,) = group['measures']['measures'].values()
        per_instance[group['group']['id']] = {
            meter: measures[meter]['last'][-1][2] for meter in measures}
    assert per_instance == {
        g.uuid: {m: float(truth[g.uuid][m]) for m in INSTANCE_METERS}
        for g in guests}
    result = admin.aggregates.fetch(
        '(aggregate sum (metric energy.instance last))',
        resource_type='instance', search={'in': {'id': sorted(uuids)}},
        groupby=['project_id'], granularity=300)
    per_project = {group['group']['project_id']:
                   group['measures']['measures']['aggregated'][-1][2]
                   for group in result}
    expected = {}
    for g in guests:
        expected[g.project_id] = expected.get(g.project_id, 0) + \
            truth[g.uuid]['energy.instance']
    assert per_project.keys() == expected.keys()
    for project, value in expected.items():
        assert per_project[project] == pytest.approx(float(value),
                                                     rel=1e-12)
    assert len(expected) == 2

    # 3. rate:sum is joules per period: summed over the periods, the
    # increase between the first and the last published sample.
    for g in guests:
        volumes = published(out, g.uuid, 'energy.instance')
        rates = admin.metric.get_measures(
            'energy.instance', resource_id=g.uuid, aggregation='rate:sum',
            granularity=300, refresh=True)
        assert sum(r[2] for r in rates) == pytest.approx(
            max(volumes) - min(volumes), rel=1e-9, abs=1e-6)
        assert volumes == sorted(volumes)

    # 4. The host's zones: one energy_zone resource each.
    zones = admin.resource.search(
        resource_type='energy_zone',
        query={'=': {'node': final.host}})
    assert {z['zone'] for z in zones} >= {
        z['name'] for z in final.zones if z['name'].startswith(
            ('package', 'dram'))}
