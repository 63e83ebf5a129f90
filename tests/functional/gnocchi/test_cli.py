"""`openstack server energy show` and `openstack energy usage`, the real
openstack command against the real Gnocchi (tools/gnocchi-stack).

As an admin the test makes instance resources of two random projects
(Ceilometer's resource type, our energy_source attribute, the metrics on
the scaph-energy policy), and posts cumulative counters at known times
with varying increments, one of them with a counter reset (a new agent
epoch: the counter starts again from 0). Gnocchi's metricd aggregates
them; the openstack executable reads them back with -f json as the admin
and as a member of each project (Gnocchi's policy scopes a member to their
project), and every number is compared with a truth computed here, with
exact fractions, from the samples posted: per period the sum of the
increases between successive samples (the increase into a period's first
sample from the sample before it belongs to the period), a negative period
counting its last value instead and one reset. power.instance (the
average W over each polling period) gets samples of varying values on
scaph-power (Average (W) is their exact mean, Peak (W) their highest),
on an older policy with mean and max only (Average (W) is the mean of the
period means, and says so) or none at all (energy over the span).

A last test reads right after posting, before gnocchi-metricd could have
processed anything: the commands' refresh makes the numbers whole and
consistent (dynamic + idle == energy).

Skipped where this cannot run (not root, no Gnocchi); with CI=true that is
a failure instead.
"""

import csv
import datetime
import fractions
import io
import json
import random
import subprocess
import uuid

import pytest

from gnocchiclient import exceptions as gnocchi_exc

from scaph_openstack.osc import usage
from scaph_openstack.telemetry import gnocchi as telemetry
from tests.functional.helpers import agent as agentlib
from tests.functional.helpers import gnocchi as gnocchilib
from tests.functional.helpers import require

F = fractions.Fraction
UTC = datetime.timezone.utc
G = 300                          # the finest granularity of scaph-energy
ENERGY_METRICS = ('energy.instance', 'energy.instance.dynamic',
                  'energy.instance.idle')
POWER_POLICY = 'scaph-power'
# The power policy of older releases (mean and max only), under another
# name so that this test does not depend on what the Gnocchi already has.
LEGACY_POWER_POLICY = 'scaph-test-power-mean-max'


def openstack(stack, argv, user=None, project=None, roles='admin',
              check=True):
    if user is None:
        user, project = (gnocchilib.ADMIN['user_id'],
                         gnocchilib.ADMIN['project_id'])
    cmd = [agentlib.venv_bin('openstack'), '--os-auth-type',
           'gnocchi-noauth', '--os-user-id', user, '--os-project-id',
           project, '--os-roles', roles, '--os-endpoint', stack.endpoint,
           *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if check and proc.returncode:
        raise AssertionError('%s exited %s:\n%s\n%s' % (
            ' '.join(argv), proc.returncode, proc.stdout, proc.stderr))
    return proc


def as_json(stack, argv, **who):
    return json.loads(openstack(stack, [*argv, '-f', 'json'], **who).stdout)


def floor(t, g):
    return t - t % g


def truth(samples, g, start=None, end=None):
    """(increase, resets, first period, last period + g) from the raw
    samples [(unix time, value)] of one counter, periods of g seconds
    starting in [floor(start), end)."""
    periods = {}
    for (_t0, v0), (t1, v1) in zip(samples, samples[1:], strict=False):
        p = floor(t1, g)
        if start is not None and p < floor(start, g):
            continue
        if end is not None and p >= end:
            continue
        entry = periods.setdefault(p, [F(0), None])
        entry[0] += F(v1) - F(v0)
        entry[1] = F(v1)          # the period's last value
    if not periods:
        return None
    increase, resets = F(0), 0
    for rate, last in periods.values():
        if rate < 0:
            resets += 1
            rate = last
        increase += rate
    return increase, resets, min(periods), max(periods) + g


def cumulative(times, increments, resets_at=None):
    """Counter values at ``times``: the running sum of ``increments``,
    starting again from 0 + the increment at index ``resets_at``."""
    values, value = [], F(0)
    for i, inc in enumerate(increments):
        value = inc if i == resets_at else value + inc
        values.append(value)
    return list(zip(times, values, strict=True))


class Server:
    def __init__(self, name, project, source, carbon, resets_at=None,
                 carbon_metric=None, scale=1, power=POWER_POLICY,
                 gap=None):
        self.id = str(uuid.uuid4())
        self.name = name
        self.project = project
        self.source = source
        self.carbon = carbon              # post carbon.instance measures
        self.carbon_metric = carbon or carbon_metric
        self.resets_at = resets_at
        self.scale = scale
        self.power = power          # power.instance's policy, or None
        self.gap = gap              # (first, end) indices without samples
        self.samples = {}


def make_samples(server, times, rng):
    n = len(times)
    dynamic = [F(rng.randint(1, 4000) * server.scale, 4) for _ in range(n)]
    idle = [F(rng.randint(0, 800) * server.scale, 8) for _ in range(n)]
    total = [d + i for d, i in zip(dynamic, idle, strict=True)]
    server.samples['energy.instance'] = cumulative(times, total,
                                                   server.resets_at)
    server.samples['energy.instance.dynamic'] = cumulative(
        times, dynamic, server.resets_at)
    server.samples['energy.instance.idle'] = cumulative(
        times, idle, server.resets_at)
    if server.power:
        # As Ceilometer computes it: the energy increase over the time
        # since the previous poll (none on the first).
        server.samples['power.instance'] = [
            (t1, inc / (t1 - t0)) for t0, t1, inc in zip(
                times, times[1:], total[1:], strict=False)]
    if server.carbon:
        # The carbon counter of a migration's destination restarts.
        server.samples['carbon.instance'] = cumulative(
            times, [F(rng.randint(1, 200), 1024) for _ in range(n)],
            resets_at=n - 3)


def legacy_power_policy(admin):
    try:
        admin.archive_policy.create({
            'name': LEGACY_POWER_POLICY, 'back_window': 0,
            'aggregation_methods': ['mean', 'max'],
            'definition': [dict(d) for d in telemetry.DEFINITION]})
    except gnocchi_exc.ArchivePolicyAlreadyExists:
        pass


def create(admin, server):
    """The instance resource, its metrics and their measures."""
    metrics = {m: {'archive_policy_name': 'scaph-energy'}
               for m in ENERGY_METRICS}
    if server.carbon_metric:
        metrics['carbon.instance'] = {'archive_policy_name': 'scaph-energy'}
    if server.power:
        metrics['power.instance'] = {'archive_policy_name': server.power}
    attributes = {
        'id': server.id, 'project_id': server.project,
        'user_id': uuid.uuid4().hex, 'display_name': server.name,
        'flavor_id': '1', 'flavor_name': 'm1.tiny', 'host': 'compute-1',
        'metrics': metrics}
    if server.source:
        attributes['energy_source'] = server.source
    admin.resource.create('instance', attributes)
    for metric, samples in server.samples.items():
        admin.metric.add_measures(metric, [
            {'timestamp': datetime.datetime.fromtimestamp(
                t, UTC).isoformat(), 'value': float(v)}
            for t, v in samples], resource_id=server.id)


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    stack = gnocchilib.ensure_gnocchi()
    require(agentlib.venv_bin('openstack') is not None,
            'python-openstackclient is not installed (test-requirements)')
    stack.ceilometer_upgrade(tmp_path_factory.mktemp('ceilometer'))
    stack.telemetry_setup()
    admin = stack.client()
    legacy_power_policy(admin)
    rng = random.Random(20261201)
    tag = uuid.uuid4().hex[:8]
    a, b = gnocchilib.new_project(), gnocchilib.new_project()
    c = gnocchilib.new_project()
    servers = {
        'a_web': Server('web-' + tag, a, 'rapl', carbon=True, scale=3),
        # No power.instance: the average over the periods' span.
        'a_db': Server('db-' + tag, a, 'simulated', carbon=False,
                       resets_at=21, power=None),
        # Stopped for a while (no samples, the counters stand still):
        # its average while running is above its energy over the span.
        'a_old': Server('old-' + tag, a, None, carbon=False,
                        carbon_metric=True, scale=2, gap=(12, 26)),
        # Same name as a_web, in the other project.
        'b_web': Server('web-' + tag, b, 'rapl', carbon=True, scale=5),
        # power.instance on the older policy (mean and max only).
        'c_app': Server('app-' + tag, c, 'rapl', carbon=False,
                        power=LEGACY_POWER_POLICY),
    }
    # Samples every 97 s from 37 s into a 5-minute period two hours ago:
    # 2 or 3 per period, over 13 periods.
    now = int(datetime.datetime.now(UTC).timestamp())
    base = floor(now - 7200, 3600) + 37
    times = [base + 97 * i for i in range(40)]
    for server in servers.values():
        first, end = server.gap or (0, 0)
        make_samples(server, times[:first] + times[end:], rng)
        create(admin, server)
    stack.wait_processed(admin, [])
    return stack, servers, a, b, times


def power_truth(server, g, start=None, end=None):
    """(Average (W), Average over, Peak (W)) from the power.instance
    samples in the periods read: their mean (scaph-power), the mean of
    the periods' means (the older policy), or the energy over the span."""
    samples = [(t, v) for t, v in server.samples.get('power.instance', ())
               if (start is None or floor(t, g) >= floor(start, g))
               and (end is None or floor(t, g) < end)]
    if not samples:
        return None, 'window', None
    peak = max(v for _t, v in samples)
    if server.power == POWER_POLICY:
        return sum(v for _t, v in samples) / len(samples), 'running', peak
    periods = {}
    for t, v in samples:
        periods.setdefault(floor(t, g), []).append(v)
    means = [sum(vs) / len(vs) for vs in periods.values()]
    return sum(means) / len(means), 'running (period means)', peak


def expected(server, g, start=None, end=None):
    increase, _resets, first, last = truth(
        server.samples['energy.instance'], g, start, end)
    parts = {m: truth(server.samples[m], g, start, end)
             for m in server.samples}
    carbon = parts.get('carbon.instance')
    average, over, peak = power_truth(server, g, start, end)
    return {
        'ID': server.id, 'Name': server.name, 'Project': server.project,
        'Source': server.source,
        'Energy (kWh)': increase / 3600000,
        'Average (W)': increase / (last - first) if average is None
        else average,
        'Average over': over, 'Peak (W)': peak,
        'Dynamic (kWh)': parts['energy.instance.dynamic'][0] / 3600000,
        'Idle (kWh)': parts['energy.instance.idle'][0] / 3600000,
        'Carbon (g CO2e)': carbon[0] if carbon else None,
        'Start': iso(first), 'End': iso(last), 'Seconds': last - first,
        'Granularity (s)': g,
    }


def iso(t):
    return datetime.datetime.fromtimestamp(t, UTC).strftime(
        '%Y-%m-%dT%H:%M:%SZ')


def assert_row(got, want, resets=None):
    for key, value in want.items():
        if isinstance(value, F):
            assert got[key] == pytest.approx(float(value), rel=1e-12), key
        else:
            assert got[key] == value, key
    if resets is not None:
        assert got['Counter resets'] == resets


def start_arg(times):
    """--start: the beginning of the samples' first period, so that the
    5-minute granularity is used and every sample counts."""
    return '--start=' + iso(floor(times[0], G))


def test_show_by_uuid_and_by_name(world):
    stack, servers, a, _b, times = world
    web = servers['a_web']
    want = expected(web, G)
    got = as_json(stack, ['server', 'energy', 'show', web.id,
                          start_arg(times)])
    # The carbon counter restarted once (a migration's destination).
    assert_row(got, want, resets=1)
    assert got['Source'] == 'rapl' and got['Carbon (g CO2e)'] > 0
    # By name, as a member of project A: b_web (same name, project B) is
    # not visible, so the name is not ambiguous.
    got = as_json(stack, ['server', 'energy', 'show', web.name,
                          start_arg(times)],
                  user='alice', project=a, roles='member')
    assert_row(got, want, resets=1)


def test_counter_reset_and_unknown_carbon(world):
    stack, servers, _a, _b, times = world
    db = servers['a_db']
    want = expected(db, G)
    got = as_json(stack, ['server', 'energy', 'show', db.id,
                          start_arg(times)])
    assert_row(got, want, resets=1)
    assert got['Carbon (g CO2e)'] is None
    assert got['Source'] == 'simulated'
    # Never subtracted: more than the counter's last value alone.
    assert float(want['Energy (kWh)']) * 3.6e6 > float(
        db.samples['energy.instance'][-1][1])
    old = servers['a_old']
    got = as_json(stack, ['server', 'energy', 'show', old.id,
                          start_arg(times)])
    # A carbon metric without measures, no energy_source: unknown.
    assert_row(got, expected(old, G), resets=0)
    assert got['Carbon (g CO2e)'] is None and got['Source'] is None


def test_window_end_and_coarser_granularity(world):
    stack, servers, _a, _b, times = world
    web = servers['a_web']
    end = floor(times[0], G) + 6 * G
    got = as_json(stack, ['server', 'energy', 'show', web.id,
                          start_arg(times), '--end', iso(end)])
    assert_row(got, expected(web, G, end=end), resets=0)
    # The default window (the last 30 days) uses hourly periods.
    got = as_json(stack, ['server', 'energy', 'show', web.id])
    assert got['Granularity (s)'] == 3600
    assert_row(got, expected(web, 3600))


def usage_rows(stack, argv, **who):
    rows = as_json(stack, ['energy', 'usage', *argv], **who)
    assert rows[-1]['ID'] == 'Total'
    return rows[:-1], rows[-1]


def assert_usage(rows, total, servers, times):
    wants = sorted((expected(s, G) for s in servers),
                   key=lambda w: -w['Energy (kWh)'])
    assert [r['ID'] for r in rows] == [w['ID'] for w in wants]
    for got, want in zip(rows, wants, strict=True):
        assert_row(got, want)
    energy = sum(w['Energy (kWh)'] for w in wants)
    assert total['Energy (kWh)'] == pytest.approx(float(energy), rel=1e-12)
    first = floor(times[1], G)
    last = floor(times[-1], G) + G
    # The total's average: the servers' energy over the whole span (their
    # mean draw together), never a sum of averages while running.
    assert total['Average (W)'] == pytest.approx(
        float(energy * 3600000 / (last - first)), rel=1e-12)
    assert total['Average over'] == 'window' and total['Peak (W)'] is None
    assert (total['Start'], total['End']) == (iso(first), iso(last))


def test_usage_admin_with_project(world):
    stack, servers, a, _b, times = world
    rows, total = usage_rows(stack, ['--project', a, start_arg(times)])
    mine = [servers['a_web'], servers['a_db'], servers['a_old']]
    assert_usage(rows, total, mine, times)
    assert total['Carbon (g CO2e)'] is None      # not known for all
    assert total['Counter resets'] == 2
    assert total['Source'] == 'rapl, simulated, unknown'


def test_usage_member_sees_own_project_only(world):
    stack, servers, a, b, times = world
    rows, total = usage_rows(stack, [start_arg(times)], user='alice',
                             project=a, roles='member')
    assert_usage(rows, total,
                 [servers['a_web'], servers['a_db'], servers['a_old']],
                 times)
    assert servers['b_web'].id not in [r['ID'] for r in rows]
    # Asking for another project gives nothing, not its servers.
    rows, total = usage_rows(stack, ['--project', b, start_arg(times)],
                             user='alice', project=a, roles='member')
    assert rows == [] and total['Energy (kWh)'] == 0
    # B's member sees B's server, with its carbon.
    rows, total = usage_rows(stack, [start_arg(times)], user='bob',
                             project=b, roles='member')
    assert_usage(rows, total, [servers['b_web']], times)
    assert total['Carbon (g CO2e)'] == pytest.approx(
        float(expected(servers['b_web'], G)['Carbon (g CO2e)']))


def test_other_projects_server_and_ambiguous_names_fail(world):
    stack, servers, a, _b, times = world
    b_web = servers['b_web']
    for ident in (b_web.id, 'nothing-' + b_web.id[:8]):
        proc = openstack(stack, ['server', 'energy', 'show', ident],
                         user='alice', project=a, roles='member',
                         check=False)
        assert proc.returncode == 1, proc.stdout
        assert 'No server' in proc.stderr
    # The admin sees both servers named web-<tag>.
    proc = openstack(stack, ['server', 'energy', 'show', b_web.name],
                     check=False)
    assert proc.returncode == 1
    assert 'More than one' in proc.stderr
    assert b_web.id in proc.stderr and servers['a_web'].id in proc.stderr


def test_csv_and_table(world):
    stack, servers, a, _b, times = world
    proc = openstack(stack, ['energy', 'usage', '--project', a,
                             start_arg(times), '-f', 'csv'])
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert [r['ID'] for r in rows][-1] == 'Total'
    web = servers['a_web']
    by_id = {r['ID']: r for r in rows}
    assert float(by_id[web.id]['Energy (kWh)']) == pytest.approx(
        float(expected(web, G)['Energy (kWh)']), rel=1e-12)
    # Unknown is empty, numbers are not quoted.
    assert by_id[servers['a_db'].id]['Carbon (g CO2e)'] == ''
    assert 'None' not in proc.stdout
    assert ',%s,' % by_id[web.id]['Energy (kWh)'] in proc.stdout
    proc = openstack(stack, ['energy', 'usage', '--project', a,
                             start_arg(times), '-f', 'table'])
    assert web.id in proc.stdout and '| Total' in proc.stdout
    assert 'unknown' in proc.stdout             # a_db's carbon
    print(proc.stdout)
    proc = openstack(stack, ['server', 'energy', 'show', web.id,
                             start_arg(times)])
    assert 'Energy (kWh)' in proc.stdout and 'rapl' in proc.stdout
    print(proc.stdout)


def test_older_power_policy_averages_the_period_means(world):
    stack, servers, _a, _b, times = world
    app = servers['c_app']
    want = expected(app, G)
    assert want['Average over'] == 'running (period means)'
    got = as_json(stack, ['server', 'energy', 'show', app.id,
                          start_arg(times)])
    assert_row(got, want, resets=0)
    # The periods hold 2 or 3 samples: not the samples' mean.
    samples = [v for _t, v in app.samples['power.instance']]
    assert got['Average (W)'] != pytest.approx(
        float(sum(samples) / len(samples)), rel=1e-9)
    rows, total = usage_rows(stack, ['--project', app.project,
                                     start_arg(times)])
    assert_row(rows[0], want)
    assert total['Average over'] == 'window'


def test_read_right_after_posting_is_whole_and_consistent(world):
    """No wait for gnocchi-metricd (it looks every 2 s here): the refresh
    processes the measures first, so every metric has all of them."""
    stack, _servers, _a, _b, times = world
    admin = stack.client()
    rng = random.Random(20261202)
    project = gnocchilib.new_project()
    fresh = Server('fresh-' + uuid.uuid4().hex[:8], project, 'rapl',
                   carbon=False, scale=7)
    make_samples(fresh, times, rng)
    member = stack.client('carol', project, 'member')
    span = usage.window(iso(floor(times[0], G)))
    create(admin, fresh)
    got = usage.server_energy(member, fresh.id, span)
    want = expected(fresh, G)
    assert got.energy_j == pytest.approx(
        float(want['Energy (kWh)'] * 3600000), rel=1e-12)
    assert got.dynamic_j + got.idle_j == pytest.approx(got.energy_j,
                                                       rel=1e-12)
    assert got.average_over == 'running'
    assert got.average_w == pytest.approx(float(want['Average (W)']),
                                          rel=1e-12)
    # The command, right after another server's measures, as the admin
    # (who may read Gnocchi's status: only the metrics it lists as
    # pending are refreshed).
    other = Server('fresh-' + uuid.uuid4().hex[:8], project, 'simulated',
                   carbon=False, scale=3)
    make_samples(other, times, rng)
    create(admin, other)
    rows, total = usage_rows(stack, ['--project', project,
                                     start_arg(times)])
    assert_usage(rows, total, [fresh, other], times)
    for row in rows + [total]:
        assert row['Dynamic (kWh)'] + row['Idle (kWh)'] == pytest.approx(
            row['Energy (kWh)'], rel=1e-12)
