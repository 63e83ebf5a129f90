"""Gnocchi's side of the meters: archive policies and resource types.

Ceilometer's gnocchi:// publisher sends each meter to the resource type and
archive policy that /etc/ceilometer/gnocchi_resources.yaml names
(etc/ceilometer/gnocchi_resources.yaml is our part of it), and drops
samples whose resource type or archive policy Gnocchi lacks. It creates
the archive policies of that file itself, but resource types only through
ceilometer-upgrade, for its own built-in list: energy_zone and the
instance's energy_source attribute are ours to create (doc/ceilometer.md,
"Gnocchi").

ensure() is idempotent: what exists is left as it is, and an archive
policy an operator changed is reported, never overwritten.
"""

import dataclasses
import re

from gnocchiclient import exceptions as gnocchi_exc

# Cumulative meters (J, g): "last" is the counter at the end of each
# period, "rate:sum" the sum of the increases between successive samples
# that fall in the period: the exact energy of the period, whatever the
# polling interval (doc/ceilometer.md, "Reading it back from Gnocchi").
ENERGY_POLICY = 'scaph-energy'
# power.instance (W, each sample already an average over its polling
# period): per period the sum and the count of those averages (their exact
# mean over any run of periods: sum of sums / sum of counts, what
# `openstack server energy show` reports), their mean and their peak.
# Gnocchi cannot add aggregation methods to an existing policy (PATCH
# changes the definition and back_window only): a policy of that name
# made otherwise is reported by telemetry-setup, never overwritten.
POWER_POLICY = 'scaph-power'
# 5 minutes for a month (Ceilometer's own "low" policies), hours for
# 13 months (a year against the last), days for 5 years of reports.
DEFINITION = (
    {'granularity': '0:05:00', 'timespan': '30 days, 0:00:00'},
    {'granularity': '1:00:00', 'timespan': '400 days, 0:00:00'},
    {'granularity': '1 day, 0:00:00', 'timespan': '1830 days, 0:00:00'},
)
ARCHIVE_POLICIES = (
    {'name': ENERGY_POLICY, 'back_window': 0,
     'aggregation_methods': ['last', 'rate:sum'],
     'definition': [dict(d) for d in DEFINITION]},
    {'name': POWER_POLICY, 'back_window': 0,
     'aggregation_methods': ['mean', 'max', 'sum', 'count'],
     'definition': [dict(d) for d in DEFINITION]},
)

ZONE_RESOURCE_TYPE = {
    'name': 'energy_zone',
    'attributes': {
        'node': {'type': 'string', 'required': True, 'min_length': 0,
                 'max_length': 255},
        'zone': {'type': 'string', 'required': True, 'min_length': 0,
                 'max_length': 64},
        'kind': {'type': 'string', 'required': False, 'min_length': 0,
                 'max_length': 32},
    },
}
# Added to Ceilometer's own "instance" type (created by ceilometer-upgrade):
# rapl or simulated, so that a reader of Gnocchi alone can tell.
INSTANCE_RESOURCE_TYPE = 'instance'
INSTANCE_ATTRIBUTES = {
    'energy_source': {'type': 'string', 'required': False, 'min_length': 0,
                      'max_length': 32},
}


class SetupError(Exception):
    pass


@dataclasses.dataclass
class Change:
    what: str       # 'archive policy', 'resource type', 'attribute'
    name: str
    action: str     # 'created', 'present', 'differs (left as it is)'


_DAYS = re.compile(r'^(\d+) days?(?:, (.*))?$')


def seconds(value):
    """A Gnocchi duration as its API gives it ('0:05:00', '1 day,
    0:00:00', '30 days, 0:00:00', 300.0) -> seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    days = 0
    match = _DAYS.match(text)
    if match:
        days, text = int(match.group(1)), match.group(2) or '0:00:00'
    if ':' not in text:
        return days * 86400 + float(text)
    hours, minutes, secs = text.split(':')
    return days * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(
        secs)


def _shape(policy):
    """What ensure() compares: methods and (granularity, timespan) s."""
    return (sorted(policy['aggregation_methods']),
            sorted((seconds(d['granularity']), seconds(d['timespan']))
                   for d in policy['definition']))


def ensure_archive_policy(client, policy):
    try:
        existing = client.archive_policy.get(policy['name'])
    except gnocchi_exc.NotFound:
        try:
            client.archive_policy.create(policy)
        except gnocchi_exc.ArchivePolicyAlreadyExists:
            return Change('archive policy', policy['name'], 'present')
        return Change('archive policy', policy['name'], 'created')
    if _shape(existing) != _shape(policy):
        return Change('archive policy', policy['name'],
                      'differs (left as it is)')
    return Change('archive policy', policy['name'], 'present')


def ensure_resource_type(client, resource_type):
    try:
        client.resource_type.get(resource_type['name'])
    except gnocchi_exc.NotFound:
        try:
            client.resource_type.create(resource_type)
        except gnocchi_exc.ResourceTypeAlreadyExists:
            return Change('resource type', resource_type['name'], 'present')
        return Change('resource type', resource_type['name'], 'created')
    return Change('resource type', resource_type['name'], 'present')


def ensure_attributes(client, type_name, attributes):
    try:
        existing = client.resource_type.get(type_name)['attributes']
    except gnocchi_exc.NotFound:
        raise SetupError(
            'Gnocchi has no %r resource type: Ceilometer creates it; run '
            'ceilometer-upgrade first' % type_name)
    changes, operations = [], []
    for name, definition in sorted(attributes.items()):
        full = '%s.%s' % (type_name, name)
        if name in existing:
            changes.append(Change('attribute', full, 'present'))
            continue
        operations.append({'op': 'add', 'path': '/attributes/' + name,
                           'value': definition})
        changes.append(Change('attribute', full, 'created'))
    if operations:
        client.resource_type.update(type_name, operations)
    return changes


def ensure(client):
    """Create what is missing; [Change] says what was found or done."""
    changes = [ensure_archive_policy(client, p) for p in ARCHIVE_POLICIES]
    changes.append(ensure_resource_type(client, ZONE_RESOURCE_TYPE))
    changes.extend(ensure_attributes(client, INSTANCE_RESOURCE_TYPE,
                                     INSTANCE_ATTRIBUTES))
    return changes
