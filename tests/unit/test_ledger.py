import json
import os

import pytest

from scaph_openstack.attribution import base as attribution_base
from scaph_openstack.inventory import base as inventory_base
from scaph_openstack import ledger as ledger_mod


def identity(uuid):
    return inventory_base.InstanceIdentity(uuid=uuid, name=uuid,
                                           project_id='p')


def present(*uuids, state=ledger_mod.STATE_RUNNING):
    return {uuid: (identity(uuid), state) for uuid in uuids}


def split(zone, delta, shares, residual=0, idle=0):
    return attribution_base.ZoneSplit(zone, delta, idle, shares, residual,
                                      idle)


def zones(*names):
    return tuple(attribution_base.ZoneDelta(n, ledger_mod.zone_kind(n), 0, 0)
                 for n in names)


def test_zone_kind():
    assert ledger_mod.zone_kind('package-0') == 'package'
    assert ledger_mod.zone_kind('dram-12') == 'dram'
    assert ledger_mod.zone_kind('psys') == 'psys'


def test_accumulates_and_totals_skip_subzones():
    ledger = ledger_mod.Ledger()
    ledger.add_tick((split('package-0', 100, {'a': 60}, residual=40),
                     split('core-0', 50, {'a': 50}),
                     split('dram-0', 10, {'a': 10})),
                    zones('package-0', 'core-0', 'dram-0'),
                    present('a'), 2.0, now=10.0)
    record = ledger.instances['a']
    assert record.total_uj == 70          # core is inside package
    assert record.power_w == pytest.approx(70 / 2 / 1e6)
    assert ledger.zones['package-0'].residual_uj == 40


def test_persistence_roundtrip_and_mode(tmp_path):
    path = str(tmp_path / 'state' / 'ledger.json')
    ledger = ledger_mod.Ledger()
    ledger.add_tick((split('package-0', 100, {'a': 60}, residual=40),),
                    zones('package-0'), present('a'), 1.0, 5.0)
    ledger.instances['a'].absent_s = 12.5
    ledger.save(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    loaded = ledger_mod.Ledger.load(path)
    assert loaded.instances['a'].energy_uj == {'package-0': 60}
    assert loaded.instances['a'].identity.project_id == 'p'
    assert loaded.instances['a'].state == ledger_mod.STATE_RUNNING
    assert loaded.instances['a'].absent_s == 12.5
    assert loaded.zones['package-0'].measured_uj == 100
    assert [f for f in os.listdir(tmp_path / 'state')] == ['ledger.json']


def test_missing_ledger_starts_empty(tmp_path):
    assert ledger_mod.Ledger.load(str(tmp_path / 'none')).instances == {}


@pytest.mark.parametrize('content', [b'', b'{"format": 1}', b'\x00garbage',
                                     b'[]', b'null', b'"text"',
                                     json.dumps({'format': ledger_mod.FORMAT,
                                                 'version': 99}).encode()])
def test_corrupt_ledger_is_never_silently_reset(tmp_path, content):
    path = tmp_path / 'ledger.json'
    path.write_bytes(content)
    with pytest.raises(ledger_mod.LedgerError, match='move it aside'):
        ledger_mod.Ledger.load(str(path))


def test_expire_only_after_retention_of_monotonic_absence():
    ledger = ledger_mod.Ledger()
    ledger.add_tick((), zones(), present('a', 'b'), 1.0, now=100.0)
    ledger.add_tick((), zones(), present('a'), 1.0, now=150.0)
    assert ledger.instances['b'].state == ledger_mod.STATE_UNDEFINED
    assert ledger.expire(50.0, retention=60) == []
    assert ledger.expire(10.5, retention=60) == ['b']
    assert list(ledger.instances) == ['a']


def test_paused_and_shut_off_instances_never_expire():
    ledger = ledger_mod.Ledger()
    ledger.add_tick((), zones(), present('p', state='paused'), 1.0, 1.0)
    ledger.add_tick((), zones(), dict(present('s', state='shutoff'),
                                      **present('p', state='paused')),
                    1.0, 2.0)
    assert ledger.expire(10 ** 6, retention=60) == []
    assert {u: r.state for u, r in ledger.instances.items()} == {
        'p': 'paused', 's': 'shutoff'}


def test_unknown_presence_changes_no_state():
    ledger = ledger_mod.Ledger()
    ledger.add_tick((), zones(), present('a'), 1.0, 1.0)
    ledger.add_tick((), zones(), None, 1.0, 2.0)
    assert ledger.instances['a'].state == ledger_mod.STATE_RUNNING
    assert ledger.expire(10 ** 6, retention=60) == []


def test_a_ledger_of_the_first_release_loads(tmp_path):
    """It had ``running`` instead of the lifecycle state."""
    ledger = ledger_mod.Ledger()
    ledger.add_tick((), zones(), present('a', 'b'), 1.0, 1.0)
    doc = ledger.to_dict()
    for item, running in zip(doc['instances'], (True, False), strict=False):
        del item['state'], item['absent_s']
        item['running'] = running
    loaded = ledger_mod.Ledger.from_dict(json.loads(json.dumps(doc)))
    assert loaded.instances['a'].state == ledger_mod.STATE_RUNNING
    assert loaded.instances['b'].state == ledger_mod.STATE_UNDEFINED
