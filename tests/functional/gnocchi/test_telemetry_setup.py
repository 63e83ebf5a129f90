"""telemetry/gnocchi.py's ensure steps against the real Gnocchi: created,
then present, and a policy of that name made otherwise reported as it is,
never overwritten. Under random names: the stack's data is shared.
(The whole command, run twice, is in test_gnocchi_e2e.py; on a fresh
Gnocchi, through the devstack plugin, in test_devstack_gnocchi.py.)"""

import copy
import uuid

import pytest

from scaph_openstack.telemetry import gnocchi as setup
from tests.functional.helpers import gnocchi as gnocchilib


@pytest.fixture(scope='module')
def admin():
    return gnocchilib.ensure_gnocchi().client()


def test_archive_policy_created_present_then_left_as_it_is(admin):
    policy = dict(copy.deepcopy(setup.ARCHIVE_POLICIES[0]),
                  name='scaph-test-%s' % uuid.uuid4().hex[:12])
    assert setup.ensure_archive_policy(admin, policy).action == 'created'
    assert setup.ensure_archive_policy(admin, policy).action == 'present'
    # An operator's own definition under that name: reported, kept.
    other = dict(copy.deepcopy(policy), aggregation_methods=['mean'])
    assert setup.ensure_archive_policy(admin, other).action == \
        'differs (left as it is)'
    assert sorted(admin.archive_policy.get(policy['name'])[
        'aggregation_methods']) == sorted(policy['aggregation_methods'])
    admin.archive_policy.delete(policy['name'])


def test_resource_type_and_attributes(admin):
    name = 'scaph_test_%s' % uuid.uuid4().hex[:12]
    resource_type = dict(copy.deepcopy(setup.ZONE_RESOURCE_TYPE), name=name)
    assert setup.ensure_resource_type(admin, resource_type).action == \
        'created'
    assert setup.ensure_resource_type(admin, resource_type).action == \
        'present'
    changes = setup.ensure_attributes(admin, name, setup.INSTANCE_ATTRIBUTES)
    assert [(c.name, c.action) for c in changes] == [
        ('%s.energy_source' % name, 'created')]
    assert 'energy_source' in admin.resource_type.get(name)['attributes']
    changes = setup.ensure_attributes(admin, name, setup.INSTANCE_ATTRIBUTES)
    assert [c.action for c in changes] == ['present']
    admin.resource_type.delete(name)
    # Ceilometer's type missing: a clear error, nothing made.
    with pytest.raises(setup.SetupError, match='ceilometer-upgrade'):
        setup.ensure_attributes(admin, name, setup.INSTANCE_ATTRIBUTES)
