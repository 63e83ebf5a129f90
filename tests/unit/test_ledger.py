import json
import os

import pytest

from scaph_openstack.attribution import base as attribution_base
from scaph_openstack.inventory import base as inventory_base
from scaph_openstack import ledger as ledger_mod


def identity(uuid):
    return inventory_base.InstanceIdentity(uuid=uuid, name=uuid,
                                           project_id='p')


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
                    {'a': identity('a')}, 2.0, now=10.0)
    record = ledger.instances['a']
    assert record.total_uj == 70          # core is inside package
    assert record.power_w == pytest.approx(70 / 2 / 1e6)
    assert ledger.zones['package-0'].residual_uj == 40


def test_persistence_roundtrip_and_mode(tmp_path):
    path = str(tmp_path / 'state' / 'ledger.json')
    ledger = ledger_mod.Ledger()
    ledger.add_tick((split('package-0', 100, {'a': 60}, residual=40),),
                    zones('package-0'), {'a': identity('a')}, 1.0, 5.0)
    ledger.save(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    loaded = ledger_mod.Ledger.load(path)
    assert loaded.instances['a'].energy_uj == {'package-0': 60}
    assert loaded.instances['a'].identity.project_id == 'p'
    assert not loaded.instances['a'].running
    assert loaded.zones['package-0'].measured_uj == 100
    assert [f for f in os.listdir(tmp_path / 'state')] == ['ledger.json']


def test_missing_ledger_starts_empty(tmp_path):
    assert ledger_mod.Ledger.load(str(tmp_path / 'none')).instances == {}


@pytest.mark.parametrize('content', [b'', b'{"format": 1}', b'\x00garbage',
                                     json.dumps({'format': ledger_mod.FORMAT,
                                                 'version': 99}).encode()])
def test_corrupt_ledger_is_never_silently_reset(tmp_path, content):
    path = tmp_path / 'ledger.json'
    path.write_bytes(content)
    with pytest.raises(ledger_mod.LedgerError, match='move it aside'):
        ledger_mod.Ledger.load(str(path))


def test_expire_only_after_retention():
    ledger = ledger_mod.Ledger()
    ledger.add_tick((), zones(), {'a': identity('a'), 'b': identity('b')},
                    1.0, now=100.0)
    ledger.add_tick((), zones(), {'a': identity('a')}, 1.0, now=150.0)
    assert ledger.expire(now=150.0, retention=60) == []
    assert ledger.instances['b'].running is False
    assert ledger.expire(now=161.0, retention=60) == ['b']
    assert list(ledger.instances) == ['a']
