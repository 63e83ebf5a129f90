"""scaph_openstack.osc.usage on hand-built Gnocchi answers: counter
resets, granularity choice, averages, sorting and the total row, time
parsing, name resolution."""

import datetime
import fractions

import pytest
from gnocchiclient import exceptions as gnocchi_exc

from scaph_openstack.osc import usage

UTC = datetime.timezone.utc
T0 = datetime.datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
NOW = datetime.datetime(2026, 12, 1, 0, 0, tzinfo=UTC)
POLICY = {
    'name': 'scaph-energy', 'back_window': 0,
    'aggregation_methods': ['last', 'rate:sum'],
    'definition': [
        {'timespan': '30 days, 0:00:00', 'granularity': '0:05:00',
         'points': 8640},
        {'timespan': '400 days, 0:00:00', 'granularity': '1:00:00',
         'points': 9600},
        {'timespan': '1830 days, 0:00:00', 'granularity': '1 day, 0:00:00',
         'points': 1830},
    ],
}


def at(period, granularity=300):
    return T0 + datetime.timedelta(seconds=period * granularity)


def points(values, granularity=300, first=0):
    """[(timestamp, granularity, value)] for consecutive periods."""
    return [(at(first + i, granularity), float(granularity), v)
            for i, v in enumerate(values)]


def series(rate, last, granularity=300, first=0):
    return {'rate:sum': points(rate, granularity, first),
            'last': points(last, granularity, first)}


# -- counters -------------------------------------------------------------

def test_counter_sums_rate_sum():
    found = usage.counter(points([10.0, 20.5, 0.0, 7.25]),
                          points([110.0, 130.5, 130.5, 137.75]))
    assert found.increase == 37.75
    assert found.resets == frozenset()
    assert (found.first, found.last) == (at(0), at(3))


def test_counter_reset_counts_last_of_the_period_never_subtracts():
    # 1000 J counted, then a new epoch: the counter restarted at 0 and
    # reached 40 J by the end of the period (rate:sum = 40 - 1000).
    found = usage.counter(points([500.0, -960.0, 25.0]),
                          points([1000.0, 40.0, 65.0]))
    assert found.increase == 500.0 + 40.0 + 25.0
    assert found.resets == frozenset({at(1)})


def test_counter_reset_without_last_counts_nothing_for_that_period():
    found = usage.counter(points([5.0, -3.0]), points([5.0]))
    assert found.increase == 5.0
    assert len(found.resets) == 1


def test_counter_without_data_is_none():
    assert usage.counter([], points([1.0])) is None
    assert usage.counter([], []) is None


# -- granularity ----------------------------------------------------------

@pytest.mark.parametrize('start, expected', [
    (NOW - datetime.timedelta(hours=1), 300),
    (NOW - datetime.timedelta(days=7), 300),
    # 30 days back is no longer all in the 5-minute archive.
    (NOW - datetime.timedelta(days=30), 3600),
    (NOW - datetime.timedelta(days=200), 3600),
    (NOW - datetime.timedelta(days=400), 86400),
    (NOW - datetime.timedelta(days=1000), 86400),
    # Beyond every retention: the coarsest.
    (NOW - datetime.timedelta(days=4000), 86400),
])
def test_choose_granularity_finest_that_holds_start(start, expected):
    assert usage.choose_granularity(POLICY, start, NOW) == expected


def test_choose_granularity_requested():
    start = NOW - datetime.timedelta(days=1)
    assert usage.choose_granularity(POLICY, start, NOW, 3600.0) == 3600
    with pytest.raises(usage.UsageError, match='300 s, 3600 s, 86400 s'):
        usage.choose_granularity(POLICY, start, NOW, 60)


def test_choose_granularity_needs_rate_sum_and_last():
    policy = dict(POLICY, name='ceilometer-low-rate',
                  aggregation_methods=['mean', 'rate:mean'])
    with pytest.raises(usage.UsageError, match='lacks rate:sum and last'):
        usage.choose_granularity(policy, NOW, NOW)


@pytest.mark.parametrize('text, expected', [
    ('0:05:00', 300), ('1:00:00', 3600), ('1 day, 0:00:00', 86400),
    ('30 days, 0:00:00', 30 * 86400), ('2 days, 1:00:30', 2 * 86400 + 3630),
    (300.0, 300), ('60', 60),
])
def test_seconds(text, expected):
    assert usage.seconds(text) == expected


# -- time -------------------------------------------------------------------

@pytest.mark.parametrize('text, expected', [
    ('now', NOW),
    ('-7d', NOW - datetime.timedelta(days=7)),
    ('-12h', NOW - datetime.timedelta(hours=12)),
    ('-30m', NOW - datetime.timedelta(minutes=30)),
    ('-90s', NOW - datetime.timedelta(seconds=90)),
    ('-2w', NOW - datetime.timedelta(days=14)),
    ('-1.5h', NOW - datetime.timedelta(minutes=90)),
    ('2026-11-01', datetime.datetime(2026, 11, 1, tzinfo=UTC)),
    ('2026-11-01T12:30:00Z',
     datetime.datetime(2026, 11, 1, 12, 30, tzinfo=UTC)),
    ('2026-11-01T14:30:00+02:00',
     datetime.datetime(2026, 11, 1, 12, 30, tzinfo=UTC)),
])
def test_parse_time(text, expected):
    assert usage.parse_time(text, NOW) == expected


def test_parse_time_refuses_nonsense():
    with pytest.raises(usage.UsageError, match='ISO 8601'):
        usage.parse_time('last tuesday', NOW)


def test_window_default_and_order():
    span = usage.window(now=NOW)
    assert span.start == NOW - datetime.timedelta(days=30)
    assert span.end is None
    with pytest.raises(usage.UsageError, match='after'):
        usage.window('-1d', '-2d', now=NOW)


# -- servers, averages, total ---------------------------------------------

def measures(energy, dynamic=None, idle=None, carbon=None):
    found = {usage.ENERGY: energy}
    for name, value in ((usage.DYNAMIC, dynamic), (usage.IDLE, idle),
                        (usage.CARBON, carbon)):
        if value is not None:
            found[name] = value
    return found


def test_server_average_is_energy_over_the_periods_spanned():
    # Increases in periods 2..5 (period 1 holds the first sample only).
    by_metric = measures(
        series([0.0, 300.0, 600.0, 0.0, 900.0], [5, 305, 905, 905, 1805],
               first=1),
        dynamic=series([0.0, 200.0, 400.0, 0.0, 600.0],
                       [0, 200, 600, 600, 1200], first=1),
        idle=series([0.0, 100.0, 200.0, 0.0, 300.0],
                    [0, 100, 300, 300, 600], first=1))
    server = usage.server_from_measures(
        'u1', {'display_name': 'web', 'project_id': 'p',
               'energy_source': 'rapl'}, by_metric, 300)
    assert server.start == at(1) and server.end == at(6)
    assert server.seconds == 1500
    assert server.energy_j == 1800.0
    assert server.average_w == 1.2
    assert server.energy_kwh == 1800.0 / 3.6e6
    assert (server.dynamic_j, server.idle_j) == (1200.0, 600.0)
    assert server.carbon_g is None            # unknown, not 0
    assert server.source == 'rapl' and server.resets == 0


def test_server_reset_periods_counted_once_across_metrics():
    by_metric = measures(series([100.0, -50.0], [100.0, 50.0]),
                         dynamic=series([100.0, -50.0], [100.0, 50.0]),
                         idle=series([0.0, 0.0], [0.0, 0.0]),
                         carbon=series([3.0, 2.0, -4.0], [3.0, 5.0, 1.0]))
    server = usage.server_from_measures('u', {}, by_metric, 300)
    assert server.energy_j == 150.0
    assert server.carbon_g == 3.0 + 2.0 + 1.0
    assert server.resets == 2         # periods 1 (energy) and 2 (carbon)
    assert server.source is None and server.name is None


def test_server_without_energy_is_left_out():
    assert usage.server_from_measures(
        'u', {}, measures({'rate:sum': [], 'last': []}), 300) is None
    assert usage.server_from_measures('u', {}, {}, 300) is None


def groups(*servers):
    """Gnocchi's grouped aggregates answer."""
    return [{'group': {'id': rid, 'display_name': name, 'project_id': pid,
                       'energy_source': source},
             'measures': {'measures': {rid: by_metric}}}
            for rid, name, pid, source, by_metric in servers]


def test_servers_sorted_by_energy_and_total():
    answer = groups(
        ('a', 'small', 'p1', 'rapl',
         measures(series([10.0, 20.0], [10, 30]),
                  carbon=series([1.0, 2.0], [1, 3]))),
        ('b', 'big', 'p1', 'simulated',
         measures(series([100.0, 200.0, 300.0], [100, 300, 600], first=2),
                  carbon=series([5.0], [5.0]))),
        ('c', 'none', 'p2', None, measures({'rate:sum': [], 'last': []})),
        ('d', 'mid', 'p2', 'rapl',
         measures(series([50.0], [50.0], first=1),
                  carbon=series([0.5], [0.5]))),
    )
    servers = usage.servers_from_groups(answer, 300)
    assert [s.id for s in servers] == ['b', 'd', 'a']
    total = usage.total(servers, 300)
    assert total.id == 'Total'
    assert total.energy_j == 680.0
    assert total.carbon_g == 8.5
    assert total.start == at(0) and total.end == at(5)
    assert total.average_w == 680.0 / 1500
    assert total.source == 'rapl, simulated'
    assert total.dynamic_j is None            # no server said it


def test_total_carbon_unknown_when_one_server_lacks_it():
    answer = groups(
        ('a', 'x', 'p', 'rapl', measures(series([1.0], [1.0]),
                                         carbon=series([2.0], [2.0]))),
        ('b', 'y', 'p', 'rapl', measures(series([3.0], [3.0]))),
    )
    total = usage.total(usage.servers_from_groups(answer, 300), 300)
    assert total.carbon_g is None and total.energy_j == 4.0


def test_total_of_nothing():
    total = usage.total([], 3600)
    assert total.energy_j == 0.0
    assert total.average_w is None and total.carbon_g is None
    assert total.start is None and total.source is None


def test_equal_energy_sorted_by_name_then_id():
    answer = groups(
        ('b', 'same', 'p', 'rapl', measures(series([1.0], [1.0]))),
        ('a', 'same', 'p', 'rapl', measures(series([1.0], [1.0]))),
        ('c', 'other', 'p', 'rapl', measures(series([1.0], [1.0]))),
    )
    assert [s.id for s in usage.servers_from_groups(answer, 300)] == [
        'c', 'a', 'b']


def test_many_small_periods_sum_exactly_enough():
    # 8640 five-minute periods of 0.1 J: fsum keeps it exact to the ulp.
    values = [0.1] * 8640
    found = usage.counter(points(values), points(values))
    assert found.increase == float(fractions.Fraction(1, 10) * 8640)


# -- the Gnocchi calls ----------------------------------------------------

class FakeResources:
    def __init__(self, resources):
        self.resources = resources

    def get(self, resource_type, resource_id):
        for resource in self.resources:
            if resource['id'] == resource_id:
                return resource
        raise gnocchi_exc.NotFound(404)

    def search(self, resource_type, query=None, **kwargs):
        name = query['=']['display_name']
        return [r for r in self.resources if r['display_name'] == name]


class FakeClient:
    def __init__(self, resources):
        self.resource = FakeResources(resources)


UUID1 = '6f0c1a52-0000-4000-8000-000000000001'
UUID2 = '6f0c1a52-0000-4000-8000-000000000002'
UUID3 = '6f0c1a52-0000-4000-8000-000000000003'


def test_find_server_by_uuid_and_name():
    client = FakeClient([
        {'id': UUID1, 'display_name': 'web', 'project_id': 'p'},
        {'id': UUID2, 'display_name': 'db', 'project_id': 'p'},
        {'id': UUID3, 'display_name': 'db', 'project_id': 'q'},
    ])
    assert usage.find_server(client, UUID1)['display_name'] == 'web'
    assert usage.find_server(client, 'web')['id'] == UUID1
    with pytest.raises(usage.UsageError) as info:
        usage.find_server(client, 'db')
    assert UUID2 in str(info.value) and UUID3 in str(info.value)
    assert 'More than one' in str(info.value)
    with pytest.raises(usage.UsageError, match='No server'):
        usage.find_server(client, 'nothing')


def test_aggregates_operations_ask_every_metric_twice():
    ops = usage.aggregates_operations()
    for metric in usage.METRICS:
        assert '(%s rate:sum)' % metric in ops
        assert '(%s last)' % metric in ops
    for aggregation in ('sum', 'count', 'mean', 'max'):
        assert '(power.instance %s)' % aggregation in ops
    assert ops.startswith('(metric (')
    assert 'power.instance' not in usage.aggregates_operations(())


class FakeAggregates:
    def __init__(self, answer=None, error=None, refusals=None):
        self.answer, self.error, self.calls = answer, error, []
        # Aggregations of power.instance some policy lacks: a call asking
        # for one is refused whole, as Gnocchi does.
        self.refusals = refusals or ()

    def fetch(self, operations, **kwargs):
        self.calls.append((operations, kwargs))
        if self.error:
            raise self.error
        for aggregation in self.refusals:
            if '(power.instance %s)' % aggregation in operations:
                raise gnocchi_exc.NotFound(404, {
                    'cause': 'Metrics with unknown aggregation',
                    'detail': [['m', aggregation]]})
        return [dict(group, measures={'measures': {
            rid: {metric: {agg: found for agg, found in by_agg.items()
                           if '(%s %s)' % (metric, agg) in operations}
                  for metric, by_agg in by_metric.items()}
            for rid, by_metric in group['measures']['measures'].items()}})
            for group in self.answer or ()]


def test_fetch_one_call_grouped_by_server():
    client = FakeClient([])
    client.aggregates = FakeAggregates(groups(
        ('a', 'x', 'p', 'rapl', measures(series([1.0], [1.0]))),
        ('b', 'y', 'p', 'rapl', measures(series([9.0], [9.0])))))
    servers = usage.fetch(client, {'=': {'project_id': 'p'}}, T0, None,
                          300, usage.GROUPBY)
    assert [s.id for s in servers] == ['b', 'a']
    [(operations, kwargs)] = client.aggregates.calls
    assert operations == usage.aggregates_operations()
    assert kwargs['granularity'] == 300
    assert kwargs['resource_type'] == 'instance'
    assert kwargs['search'] == {'=': {'project_id': 'p'}}
    assert kwargs['groupby'] == ['id', 'display_name', 'project_id']


def test_fetch_nothing_found_is_empty():
    client = FakeClient([])
    client.aggregates = FakeAggregates(error=gnocchi_exc.MetricNotFound(
        404, "Metric ['energy.instance'] does not exist"))
    assert usage.fetch(client, {}, T0, None, 300, usage.GROUPBY) == []


def test_fetch_wrong_policy_is_an_error():
    client = FakeClient([])
    client.aggregates = FakeAggregates(error=gnocchi_exc.NotFound(
        404, 'Metrics with unknown aggregation'))
    with pytest.raises(usage.UsageError, match='scaph-energy'):
        usage.fetch(client, {}, T0, None, 300, usage.GROUPBY)


# -- average power from power.instance -------------------------------------

def power_series(sums, counts, means=None, maxes=None, first=0):
    found = {'sum': points(sums, first=first),
             'count': points(counts, first=first)}
    if means is not None:
        found['mean'] = points(means, first=first)
    if maxes is not None:
        found['max'] = points(maxes, first=first)
    return found


def energy_over(periods):
    return measures(series([100.0] * periods, [100.0 * (i + 1)
                                               for i in range(periods)]))


def test_average_is_the_mean_of_the_power_samples():
    # A server that ran 45 s in an hour-long window: 3 samples of 11, 12
    # and 12.4 W in one period, then 1 sample of 13 W: not energy/3600.
    by_metric = energy_over(2)
    by_metric['power.instance'] = power_series(
        [35.4, 13.0], [3, 1], means=[11.8, 13.0], maxes=[12.4, 13.0])
    server = usage.server_from_measures('u', {}, by_metric, 300)
    assert server.average_w == 48.4 / 4
    assert server.average_over == 'running'
    assert server.peak_w == 13.0
    # The energy and its span are still there.
    assert server.seconds == 600 and server.energy_j == 200.0


def test_average_of_period_means_on_an_older_policy():
    by_metric = energy_over(2)
    by_metric['power.instance'] = {'mean': points([11.8, 13.0]),
                                   'max': points([12.4, 13.0])}
    server = usage.server_from_measures('u', {}, by_metric, 300)
    assert server.average_w == (11.8 + 13.0) / 2
    assert server.average_over == 'running (period means)'
    assert server.peak_w == 13.0


def test_average_over_the_window_without_power_samples():
    by_metric = energy_over(3)
    by_metric['power.instance'] = power_series([], [], means=[], maxes=[])
    server = usage.server_from_measures('u', {}, by_metric, 300)
    assert server.average_w == 300.0 / 900
    assert server.average_over == 'window'
    assert server.peak_w is None
    server = usage.server_from_measures('u', {}, energy_over(3), 300)
    assert server.average_over == 'window' and server.peak_w is None


def test_total_averages_over_the_window_without_peak():
    answer = groups(
        ('a', 'x', 'p', 'rapl', dict(energy_over(2), **{
            'power.instance': power_series([20.0], [2], maxes=[11.0])})),
        ('b', 'y', 'p', 'rapl', energy_over(1)))
    servers = usage.servers_from_groups(answer, 300)
    assert servers[0].average_w == 10.0
    total = usage.total(servers, 300)
    assert total.average_w == 300.0 / 600
    assert total.average_over == 'window' and total.peak_w is None
    assert usage.total([], 300).average_over is None


@pytest.mark.parametrize('refusals, calls, over', [
    ((), 1, 'running'),
    # A policy with mean and max only (not ours).
    (('sum', 'count'), 2, 'running (period means)'),
    # A policy with neither max nor sum (say Ceilometer's).
    (('sum', 'count', 'max'), 3, 'running (period means)'),
    (('sum', 'count', 'max', 'mean'), 4, 'window'),
])
def test_fetch_asks_again_with_fewer_power_aggregations(refusals, calls,
                                                         over):
    by_metric = energy_over(2)
    by_metric['power.instance'] = power_series(
        [20.0, 10.0], [2, 1], means=[10.0, 10.0], maxes=[12.0, 10.0])
    client = FakeClient([])
    client.aggregates = FakeAggregates(
        groups(('a', 'x', 'p', 'rapl', by_metric)), refusals=refusals)
    [server] = usage.fetch(client, {}, T0, None, 300, usage.GROUPBY)
    assert len(client.aggregates.calls) == calls
    assert server.average_over == over


# -- refresh ------------------------------------------------------------------

class FakeApi:
    def __init__(self, busy=(), broken=()):
        self.urls, self.busy, self.broken = [], list(busy), broken

    def get(self, url):
        self.urls.append(url)
        metric = url.split('/')[2]
        if metric in self.busy:
            self.busy.remove(metric)
            raise gnocchi_exc.ClientException(503, 'Metric is locked')
        if metric in self.broken:
            raise gnocchi_exc.NotFound(404, 'no')


class FakeStatus:
    def __init__(self, pending=None):
        self.pending = pending

    def get(self, details=False):
        if self.pending is None:
            raise gnocchi_exc.Forbidden(403)
        return {'storage': {'summary': {},
                            'measures_to_process': self.pending}}


def refresh_client(pending=None, **api):
    client = FakeClient([])
    client.api = FakeApi(**api)
    client.status = FakeStatus(pending)
    return client


RESOURCES = [
    {'id': 'a', 'metrics': {'energy.instance': 'e1', 'power.instance': 'p1',
                            'cpu': 'c1'}},
    {'id': 'b', 'metrics': {'energy.instance.idle': 'i2'}},
]


def test_refresh_every_metric_of_ours_when_not_told_which(monkeypatch):
    monkeypatch.setattr(usage, 'REFRESH_RETRY_WAIT', 0)
    client = refresh_client(busy=['e1'])
    assert usage.refresh(client, RESOURCES, NOW) == 3
    urls = sorted(client.api.urls)
    # e1 was locked by metricd: asked again once.
    assert [u.split('?')[0] for u in urls] == [
        'v1/metric/e1/measures', 'v1/metric/e1/measures',
        'v1/metric/i2/measures', 'v1/metric/p1/measures']
    assert all('refresh=true' in u and 'start=2026-12-02T00:00:00Z' in u
               for u in urls)
    assert 'aggregation=mean' in urls[-1]       # p1: power.instance
    assert 'aggregation=last' in urls[0]


def test_refresh_only_what_is_pending_where_gnocchi_says(monkeypatch):
    client = refresh_client(pending={'p1': 3, 'x': 1})
    assert usage.refresh(client, RESOURCES, NOW) == 1
    assert [u.split('?')[0] for u in client.api.urls] == [
        'v1/metric/p1/measures']
    client = refresh_client(pending={})
    assert usage.refresh(client, RESOURCES, NOW) == 0
    assert client.api.urls == []


def test_refresh_failures_leave_the_metric_as_it_is(monkeypatch, caplog):
    monkeypatch.setattr(usage, 'REFRESH_RETRY_WAIT', 0)
    client = refresh_client(busy=['e1', 'e1'], broken=('p1',))
    assert usage.refresh(client, RESOURCES, NOW) == 1
    assert 'e1' in caplog.text and 'p1' in caplog.text


class FakeSearch(FakeResources):
    def __init__(self, resources):
        super().__init__(resources)
        self.calls = []

    def search(self, resource_type, query=None, limit=None, marker=None,
               sorts=None):
        self.calls.append((query, limit, marker))
        ids = [r['id'] for r in self.resources]
        first = ids.index(marker) + 1 if marker else 0
        return self.resources[first:first + limit]


def test_search_all_pages():
    client = FakeClient([])
    client.resource = FakeSearch([{'id': str(i)} for i in range(5)])
    found = usage.search_all(client, {'=': {'project_id': 'p'}}, page=2)
    assert [r['id'] for r in found] == ['0', '1', '2', '3', '4']
    assert [c[2] for c in client.resource.calls] == [None, '1', '3']


def test_refresh_usage_skips_servers_deleted_before_the_window():
    client = refresh_client(pending={'e1': 2})
    client.resource = FakeSearch(RESOURCES)
    span = usage.window('-1d', now=NOW)
    assert usage.refresh_usage(client, {'=': {'project_id': 'p'}},
                               span) == 1
    [(query, _limit, _marker)] = client.resource.calls
    assert query == {'and': [
        {'or': [{'=': {'ended_at': None}},
                {'>=': {'ended_at': '2026-11-30T00:00:00Z'}}]},
        {'=': {'project_id': 'p'}}]}
    assert [u.split('?')[0] for u in client.api.urls] == [
        'v1/metric/e1/measures']
    # Nothing pending, Gnocchi says: not even a search.
    client = refresh_client(pending={})
    client.resource = FakeSearch(RESOURCES)
    assert usage.refresh_usage(client, {}, span) == 0
    assert client.resource.calls == [] and client.api.urls == []
