"""Per-server energy read back from Gnocchi (doc/cli.md).

What Ceilometer's gnocchi:// publisher stores for each server (resource
type ``instance``, id = the server's UUID): the cumulative counters
``energy.instance`` (J) and its two parts ``energy.instance.dynamic`` and
``energy.instance.idle``, and ``carbon.instance`` (g CO2e, only where the
operator configured a carbon intensity), each with the aggregations
``rate:sum`` (the sum of the counter's increases between successive
samples in a period: the exact energy of the period) and ``last``.

The energy of a window is the sum of ``rate:sum`` over its periods. A
period whose ``rate:sum`` is negative holds a counter reset (a new agent
epoch, carbon.instance restarting on a migration's destination, an
evacuation): as Prometheus' increase() does, the counter is taken to
have restarted from 0, so the period counts its ``last`` value, and the
reset is counted, never subtracted.

The average power comes from the gauge ``power.instance`` (W, each sample
the average over one Ceilometer polling period): the sum of its per-period
``sum`` over the sum of its per-period ``count`` is the mean of its
samples, the average power while the server ran and was polled. A
policy without sum and count (one an operator made, or Ceilometer's
``ceilometer-low``: mean only) gives the mean of the per-period means
instead; without the gauge, energy over the periods' span.

Before reading, the pending measures of the servers' metrics are
processed (Gnocchi's ``refresh``), so that the numbers of one answer agree
(dynamic + idle == energy) whatever gnocchi-metricd has got to.

Everything here takes a gnocchiclient v1 client and plain values; the
openstackclient commands (scaph_openstack.osc.v1.energy) only format.
"""

import concurrent.futures
import dataclasses
import datetime
import logging
import math
import re
import time
import uuid

from gnocchiclient import exceptions as gnocchi_exc

from scaph_openstack.telemetry import gnocchi as telemetry

RESOURCE_TYPE = 'instance'
ENERGY = 'energy.instance'
DYNAMIC = 'energy.instance.dynamic'
IDLE = 'energy.instance.idle'
CARBON = 'carbon.instance'
METRICS = (ENERGY, DYNAMIC, IDLE, CARBON)
POWER = 'power.instance'
RATE = 'rate:sum'
LAST = 'last'
SUM, COUNT, MEAN, MAX = 'sum', 'count', 'mean', 'max'
# power.instance's aggregations, asked for in this order: what
# scaph-power has, mean and max, mean alone (ceilometer-low), none.
# One aggregates call fails whole when one metric's policy lacks one
# (404), so each is tried in turn.
POWER_AGGREGATIONS = ((SUM, COUNT, MEAN, MAX), (MEAN, MAX), (MEAN,), ())
# What "Average over" says the average is.
RUNNING = 'running'                      # mean of power.instance samples
RUNNING_MEANS = 'running (period means)'  # mean of their period means
WINDOW = 'window'                        # energy / Seconds
# The archive policy scaph-openstack telemetry-setup creates; only used
# when no server gives its own energy.instance metric's policy.
DEFAULT_POLICY = telemetry.ENERGY_POLICY
# Gnocchi's durations ('0:05:00', '1 day, 0:00:00') in seconds.
seconds = telemetry.seconds
GROUPBY = ('id', 'display_name', 'project_id')
SOURCE_ATTRIBUTE = 'energy_source'
J_PER_KWH = 3.6e6
DEFAULT_START = '-30d'
UTC = datetime.timezone.utc
# Gnocchi's refresh: requests in parallel, and the wait before the one
# retry of a metric that gnocchi-metricd had locked (503).
REFRESH_WORKERS = 8
REFRESH_RETRY_WAIT = 1.0

LOG = logging.getLogger(__name__)

_RELATIVE = re.compile(r'^-\s*(\d+(?:\.\d+)?)\s*([smhdw])$')
_UNITS = {'s': 1, 'm': 60, 'h': 3600, 'd': 86400, 'w': 7 * 86400}


class UsageError(Exception):
    """What the user should be told (openstackclient: exit code 1)."""


def parse_time(text, now):
    """``now``, ``-7d``/``-12h``/``-30m``/``-90s``/``-2w`` (before
    ``now``) or ISO 8601 (a time without zone is UTC) -> aware UTC."""
    text = text.strip()
    if text.lower() == 'now':
        return now
    match = _RELATIVE.match(text)
    if match:
        return now - datetime.timedelta(
            seconds=float(match.group(1)) * _UNITS[match.group(2)])
    try:
        value = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            '%r is neither an ISO 8601 time (2026-11-01, '
            '2026-11-01T12:00:00Z) nor a relative one (-7d, -12h, -30m, '
            '-2w, now)' % text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def whole(value):
    """300.0 -> 300 (None stays None)."""
    if value is None:
        return None
    return int(value) if float(value).is_integer() else value


def choose_granularity(policy, start, now, requested=None):
    """The finest granularity of ``policy`` (an archive policy as Gnocchi
    gives it) whose retention still holds ``start``: its timespan,
    counted back from now, reaches one period before ``start``. None
    does: the coarsest (the answer then starts later than asked, and says
    so). ``requested`` (seconds) must be one of the policy's."""
    missing = [m for m in (RATE, LAST)
               if m not in policy.get('aggregation_methods', ())]
    if missing:
        raise UsageError(
            "energy.instance's archive policy %s lacks %s: the energy "
            "meters need the %s policy (scaph-openstack telemetry-setup, "
            "etc/ceilometer/gnocchi_resources.yaml)" % (
                policy.get('name'), ' and '.join(missing), DEFAULT_POLICY))
    levels = sorted((seconds(d['granularity']),
                     seconds(d['timespan']) if d.get('timespan') else None)
                    for d in policy['definition'])
    if not levels:
        raise UsageError('archive policy %s has no granularity'
                         % policy.get('name'))
    if requested is not None:
        if float(requested) not in [g for g, _ in levels]:
            raise UsageError(
                'granularity %s s is not kept by archive policy %s (%s)' % (
                    whole(float(requested)), policy.get('name'),
                    ', '.join('%s s' % whole(g) for g, _ in levels)))
        return whole(float(requested))
    wanted = (now - start).total_seconds()
    for granularity, timespan in levels:
        if timespan is None or timespan - granularity >= wanted:
            return whole(granularity)
    return whole(levels[-1][0])


@dataclasses.dataclass
class Counter:
    """One cumulative metric over the periods of a window."""
    increase: float          # J (energy) or g CO2e (carbon)
    resets: frozenset        # the periods (timestamps) where it went down
    first: datetime.datetime  # the first period with an increase
    last: datetime.datetime   # the last one


def counter(rate_sum, last):
    """``rate_sum`` and ``last``: Gnocchi's points [(timestamp,
    granularity, value)] of one cumulative metric. None when no period
    has an increase (no data in the window)."""
    if not rate_sum:
        return None
    lasts = {ts: value for ts, _g, value in last}
    parts, resets = [], set()
    for ts, _g, value in rate_sum:
        if value < 0:
            # Restarted from 0 during the period: what it counted since.
            resets.add(ts)
            value = max(lasts.get(ts) or 0.0, 0.0)
        parts.append(value)
    times = [ts for ts, _g, _v in rate_sum]
    return Counter(math.fsum(parts), frozenset(resets), min(times),
                   max(times))


@dataclasses.dataclass
class ServerEnergy:
    id: str
    name: str | None
    project_id: str | None
    source: str | None         # rapl, simulated, None (not said)
    granularity: float         # s
    start: datetime.datetime | None   # first period with an increase
    end: datetime.datetime | None     # end of the last one
    energy_j: float
    dynamic_j: float | None = None
    idle_j: float | None = None
    carbon_g: float | None = None      # None: unknown, never 0
    resets: int = 0
    # From power.instance: the average of its samples (RUNNING) or of its
    # period means (RUNNING_MEANS), and the highest sample; None: no
    # sample in the window (or no such aggregation).
    power_w: float | None = None
    power_over: str | None = None
    peak_w: float | None = None

    @property
    def seconds(self):
        if self.start is None or self.end is None:
            return None
        return (self.end - self.start).total_seconds()

    @property
    def average_over(self):
        if self.power_w is not None:
            return self.power_over
        return WINDOW if self.seconds else None

    @property
    def average_w(self):
        """power.instance's average while the server ran, else energy
        over the periods' span (average_over says which)."""
        if self.power_w is not None:
            return self.power_w
        covered = self.seconds
        return self.energy_j / covered if covered else None

    @property
    def energy_kwh(self):
        return self.energy_j / J_PER_KWH

    @property
    def dynamic_kwh(self):
        return None if self.dynamic_j is None else self.dynamic_j / J_PER_KWH

    @property
    def idle_kwh(self):
        return None if self.idle_j is None else self.idle_j / J_PER_KWH


def power(aggregations):
    """(average W, RUNNING or RUNNING_MEANS, peak W) from power.instance's
    points ({aggregation: points}); None where unknown."""
    values = {name: [v for _ts, _g, v in aggregations.get(name) or ()
                     if v is not None]
              for name in (SUM, COUNT, MEAN, MAX)}
    peak = max(values[MAX]) if values[MAX] else None
    samples = math.fsum(values[COUNT])
    if values[SUM] and samples:
        return math.fsum(values[SUM]) / samples, RUNNING, peak
    if values[MEAN]:
        return (math.fsum(values[MEAN]) / len(values[MEAN]), RUNNING_MEANS,
                peak)
    return None, None, peak


def server_from_measures(resource_id, attributes, by_metric, granularity):
    """One server's row from Gnocchi's measures of it ({metric:
    {aggregation: points}}); None when energy.instance has no increase
    in the window."""
    counters = {}
    for metric in METRICS:
        aggregations = by_metric.get(metric) or {}
        counters[metric] = counter(aggregations.get(RATE) or [],
                                   aggregations.get(LAST) or [])
    energy = counters[ENERGY]
    if energy is None:
        return None
    resets = set()
    for found in counters.values():
        if found is not None:
            resets |= found.resets

    def value(metric):
        found = counters[metric]
        return None if found is None else found.increase

    power_w, power_over, peak_w = power(by_metric.get(POWER) or {})
    return ServerEnergy(
        id=str(resource_id),
        name=attributes.get('display_name'),
        project_id=attributes.get('project_id'),
        source=attributes.get(SOURCE_ATTRIBUTE),
        granularity=granularity,
        start=energy.first,
        end=energy.last + datetime.timedelta(seconds=granularity),
        energy_j=energy.increase,
        dynamic_j=value(DYNAMIC), idle_j=value(IDLE),
        carbon_g=value(CARBON), resets=len(resets),
        power_w=power_w, power_over=power_over, peak_w=peak_w)


def sort_servers(servers):
    """Most energy first (then name, then ID: a stable order)."""
    return sorted(servers, key=lambda s: (-s.energy_j, s.name or '', s.id))


def servers_from_groups(groups, granularity):
    """Gnocchi's answer to aggregates_operations(), grouped by resource."""
    servers = []
    for group in groups:
        attributes = group.get('group') or {}
        measures = group['measures']['measures']
        for resource_id, by_metric in measures.items():
            server = server_from_measures(resource_id, attributes,
                                          by_metric, granularity)
            if server is not None:
                servers.append(server)
    return sort_servers(servers)


def _sum_known(values):
    """The sum, or None (unknown) when any of them is unknown."""
    values = list(values)
    if any(v is None for v in values):
        return None
    return math.fsum(values)


def total(servers, granularity):
    """The "Total" row: energy summed; dynamic, idle and carbon summed
    when known for every server (else unknown); the window from the
    earliest start to the latest end, over which the average is taken
    (the servers' mean draw together: the sum of their averages while
    running would count each one's running time as the whole window).
    No peak: the servers' peaks need not be simultaneous."""
    starts = [s.start for s in servers if s.start is not None]
    ends = [s.end for s in servers if s.end is not None]
    sources = sorted({s.source or 'unknown' for s in servers})
    return ServerEnergy(
        id='Total', name='Total', project_id=None,
        source=', '.join(sources) if sources else None,
        granularity=granularity,
        start=min(starts) if starts else None,
        end=max(ends) if ends else None,
        energy_j=math.fsum(s.energy_j for s in servers),
        dynamic_j=_sum_known(s.dynamic_j for s in servers),
        idle_j=_sum_known(s.idle_j for s in servers),
        carbon_g=_sum_known(s.carbon_g for s in servers) if servers
        else None,
        resets=sum(s.resets for s in servers))


def aggregates_operations(power_aggregations=POWER_AGGREGATIONS[0]):
    """Gnocchi's operations: every counter's rate:sum and last, and
    ``power_aggregations`` of power.instance."""
    return '(metric %s)' % ' '.join(
        ['(%s %s)' % (metric, aggregation)
         for metric in METRICS for aggregation in (RATE, LAST)]
        + ['(%s %s)' % (POWER, aggregation)
           for aggregation in power_aggregations])


def groupby(client):
    """Resource attributes to group by (one group per server), with
    energy_source where the instance type has it (telemetry-setup)."""
    try:
        attributes = client.resource_type.get(RESOURCE_TYPE)['attributes']
    except gnocchi_exc.NotFound:
        raise UsageError(
            "Gnocchi has no %r resource type: Ceilometer has not stored "
            "any server yet (ceilometer-upgrade)" % RESOURCE_TYPE)
    found = list(GROUPBY)
    if SOURCE_ATTRIBUTE in attributes:
        found.append(SOURCE_ATTRIBUTE)
    return found


def fetch(client, search, start, end, granularity, group_by):
    """One aggregates call: the servers ``search`` finds (Gnocchi's policy
    adds its own filter: a member sees their project only), with energy
    in the periods starting in [start rounded down to the granularity,
    end). Gnocchi refuses the whole call when one metric's policy lacks
    an aggregation asked for: then again with fewer of power.instance's
    (an older policy), and without it at last."""
    for power_aggregations in POWER_AGGREGATIONS:
        try:
            groups = client.aggregates.fetch(
                aggregates_operations(power_aggregations), search=search,
                resource_type=RESOURCE_TYPE, groupby=list(group_by),
                start=start, stop=end, granularity=granularity)
        except gnocchi_exc.NotFound as exc:
            if 'aggregation' not in str(exc).lower():
                # No server found has any of the metrics.
                return []
            if power_aggregations:
                LOG.debug('Gnocchi: %s; again without %s of %s', exc,
                          ' and '.join(power_aggregations[:2]), POWER)
                continue
            raise UsageError('Gnocchi: %s (are the energy meters under '
                             'the %s archive policy?)' % (exc,
                                                          DEFAULT_POLICY))
        return servers_from_groups(groups, granularity)
    raise AssertionError('not reached')


def pending_metrics(client):
    """The metrics with measures gnocchi-metricd has not processed yet
    (Gnocchi's status: admins only), or None (not allowed to know)."""
    try:
        status = client.status.get(details=True)
    except gnocchi_exc.ClientException:
        return None
    found = (status.get('storage') or {}).get('measures_to_process')
    return None if found is None else set(found)


_ASK = object()


def refresh(client, resources, now, pending=_ASK):
    """Process the measures Gnocchi holds for these resources' metrics
    and has not aggregated yet (its ``refresh``: the aggregates API has
    none, the measures of one metric do), so that every metric read next
    has all of them: without it, one answer may mix metrics gnocchi-metricd
    has processed and others not yet (dynamic + idle != energy). One
    request per metric (only those with pending measures where Gnocchi's
    status says which), several at a time; a metric gnocchi-metricd holds
    (503) is asked again once, a second later; a failure only leaves that
    metric as metricd left it. Nothing is read back (start: tomorrow).
    ``pending``: what pending_metrics() said, when already asked."""
    wanted = []
    for resource in resources:
        for name, metric_id in (resource.get('metrics') or {}).items():
            if name in METRICS or name == POWER:
                # An aggregation the metric's policy has (else 404).
                wanted.append((metric_id, MEAN if name == POWER else LAST))
    if pending is _ASK:
        pending = pending_metrics(client) if wanted else None
    if pending is not None:
        wanted = [w for w in wanted if w[0] in pending]
    if not wanted:
        return 0
    tomorrow = isoformat(now + datetime.timedelta(days=1))

    def one(item):
        metric_id, aggregation = item
        url = 'v1/metric/%s/measures?refresh=true&aggregation=%s&start=%s' % (
            metric_id, aggregation, tomorrow)
        for attempt in (1, 2):
            try:
                client.api.get(url)
                return True
            except gnocchi_exc.ClientException as exc:
                if getattr(exc, 'code', None) == 503 and attempt == 1:
                    time.sleep(REFRESH_RETRY_WAIT)
                    continue
                LOG.warning('Gnocchi could not process the pending '
                            'measures of metric %s (%s): the numbers may '
                            'lack the latest of them', metric_id, exc)
                return False
        return False

    with concurrent.futures.ThreadPoolExecutor(
            min(REFRESH_WORKERS, len(wanted))) as pool:
        return sum(pool.map(one, wanted))


def energy_policy(client, resources=()):
    """The archive policy of the first energy.instance metric among
    ``resources``, else the one telemetry-setup creates."""
    for resource in resources:
        metric_id = (resource.get('metrics') or {}).get(ENERGY)
        if metric_id:
            return client.metric.get(metric_id)['archive_policy']
    try:
        return client.archive_policy.get(DEFAULT_POLICY)
    except gnocchi_exc.NotFound:
        raise UsageError(
            'no server has an energy.instance metric, and Gnocchi has no '
            '%s archive policy (scaph-openstack telemetry-setup)'
            % DEFAULT_POLICY)


def find_server(client, ident):
    """The instance resource of a server UUID or name (display_name)."""
    try:
        uuid.UUID(ident)
    except ValueError:
        pass
    else:
        try:
            return client.resource.get(RESOURCE_TYPE, ident)
        except (gnocchi_exc.NotFound, gnocchi_exc.Forbidden):
            pass
    matches = client.resource.search(
        resource_type=RESOURCE_TYPE,
        query={'=': {'display_name': ident}})
    if not matches:
        raise UsageError('No server with ID or name %r in Gnocchi (among '
                         'those you may see)' % ident)
    if len(matches) > 1:
        raise UsageError(
            'More than one server is named %r; give the ID of one of: %s'
            % (ident, ', '.join(
                '%s (project %s)' % (m['id'], m.get('project_id'))
                for m in sorted(matches, key=lambda m: m['id']))))
    return matches[0]


@dataclasses.dataclass
class Window:
    start: datetime.datetime
    end: datetime.datetime | None
    now: datetime.datetime


def window(start=None, end=None, now=None):
    now = now or datetime.datetime.now(UTC)
    begin = parse_time(start or DEFAULT_START, now)
    finish = parse_time(end, now) if end else None
    if finish is not None and finish <= begin:
        raise UsageError('--end must be after --start')
    return Window(begin, finish, now)


def server_energy(client, ident, span, granularity=None):
    """``openstack server energy show``: one server's energy in ``span``."""
    resource = find_server(client, ident)
    policy = energy_policy(client, [resource])
    chosen = choose_granularity(policy, span.start, span.now, granularity)
    refresh(client, [resource], span.now)
    servers = fetch(client, {'=': {'id': resource['id']}}, span.start,
                    span.end, chosen, groupby(client))
    if not servers:
        raise UsageError(
            'Gnocchi has no energy for server %s (%s) in the periods of '
            '%s s from %s%s' % (
                resource['id'], resource.get('display_name'), chosen,
                isoformat(span.start),
                ' to %s' % isoformat(span.end) if span.end else ''))
    return servers[0]


def search_all(client, search, page=1000):
    """Every instance resource ``search`` finds (and Gnocchi's policy
    lets the caller see), page by page, newest first."""
    found, marker = [], None
    while True:
        batch = client.resource.search(
            resource_type=RESOURCE_TYPE, query=search or None, limit=page,
            marker=marker, sorts=['started_at:desc', 'id:asc'])
        found.extend(batch)
        if len(batch) < page:
            return found
        marker = batch[-1]['id']


def refresh_usage(client, search, span):
    """refresh() for ``openstack energy usage``: the metrics of every
    server ``search`` finds but those deleted before the window (nothing
    of theirs can be pending in it), none when Gnocchi's status says
    nothing is pending."""
    pending = pending_metrics(client)
    if pending == set():
        return 0
    alive = {'or': [{'=': {'ended_at': None}},
                    {'>=': {'ended_at': isoformat(span.start)}}]}
    resources = search_all(client, {'and': [alive, search]} if search
                           else alive)
    return refresh(client, resources, span.now, pending)


def usage(client, span, project=None, granularity=None):
    """``openstack energy usage``: (servers sorted by energy, total)."""
    search = {'=': {'project_id': project}} if project else {}
    found = client.resource.search(resource_type=RESOURCE_TYPE,
                                   query=search or None, limit=20,
                                   sorts=['started_at:desc'])
    policy = energy_policy(client, found)
    chosen = choose_granularity(policy, span.start, span.now, granularity)
    refresh_usage(client, search, span)
    servers = fetch(client, search, span.start, span.end, chosen,
                    groupby(client))
    return servers, total(servers, chosen)


def isoformat(value):
    if value is None:
        return None
    return value.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')
