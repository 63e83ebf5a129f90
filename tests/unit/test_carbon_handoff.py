"""Carbon follows the instance through the handoff files, as its energy
does (doc/carbon.md, "Migration"): nothing in Nova changes, the key
rides in the same documents."""

import random

import pytest

from scaph_openstack.accounting import carbon as carbon_mod
from scaph_openstack import handoff
from tests.unit import test_handoff
from tests.unit.test_handoff import OTHER
from tests.unit.test_handoff import UUID


class CarbonHandoffHost(test_handoff.HandoffHost):
    def __init__(self, tmp_path, name, intensity):
        self.intensity = intensity
        super().__init__(tmp_path, name)

    def new_ticker(self):
        ticker = super().new_ticker()
        ticker.accounting = carbon_mod.Accounting(pue=1.1,
                                                  static=self.intensity)
        return ticker

    def run_carbon(self, rng, ticks, uuids):
        seen = []
        for _ in range(ticks):
            self.run(rng, 1, uuids)
            instances = self.ticker.last_report.instances
            if UUID in instances:
                seen.append(instances[UUID].carbon_ug)
        return seen

    def published_carbon(self):
        return self.ticker.last_report.instances[UUID].carbon_ug

    def local_carbon(self):
        return self.ticker.ledger.instances[UUID].carbon_ug


@pytest.mark.parametrize('seed', [1, 2])
def test_carbon_continues_on_the_destination(tmp_path, seed):
    rng = random.Random(seed)
    a = CarbonHandoffHost(tmp_path / 'a', 'a', 100.0)
    b = CarbonHandoffHost(tmp_path / 'b', 'b', 300.0)
    a.inventory.set(UUID, 0)
    a.inventory.set(OTHER, 0)
    b.inventory.set(OTHER, 0)
    timeline = a.run_carbon(rng, 8, [UUID, OTHER])
    b.run(rng, 3, [OTHER])
    answer = test_handoff.hold_and_answer(a, 'live-1')
    frozen = a.published_carbon()
    assert answer.carbon_ug == frozen > 0
    assert handoff.Counters.from_dict(answer.as_dict()) == answer
    local_before = a.local_carbon()
    timeline += a.run_carbon(rng, 3, [UUID, OTHER])
    assert a.local_carbon() > local_before     # a still counts its own
    assert a.published_carbon() == frozen      # but publishes no more
    handoff.offer_start(str(b.share), UUID, answer)
    b.inventory.set(UUID, 0)
    timeline += b.run_carbon(rng, 1, [UUID, OTHER])
    a.inventory.remove(UUID)
    a.run(rng, 2, [OTHER])
    timeline += b.run_carbon(rng, 8, [UUID, OTHER])
    assert timeline == sorted(timeline), 'the published carbon went back'
    assert b.local_carbon() > 0
    assert b.published_carbon() == frozen + b.local_carbon()
    # At b's intensity (3 x a's) from the arrival on, not a's.
    led = b.ticker.ledger.instances[UUID]
    assert led.carbon_units == (led.total_uj * 1100 * 300_000)
    assert a.published_carbon() == frozen


def test_counters_without_carbon_still_read():
    doc = {'token': 't', 'energy_uj': {'package': 5}, 'shown_uj': {},
           'idle_uj': {}}
    counters = handoff.Counters.from_dict(doc)
    assert counters.carbon_ug is None
    assert counters.as_dict() == doc           # no key it did not have
    with_carbon = handoff.Counters.from_dict(dict(doc, carbon_ug=7))
    assert with_carbon.at_least(counters).carbon_ug == 7
    assert counters.at_least(with_carbon).carbon_ug == 7
    assert counters.at_least(counters).carbon_ug is None


@pytest.mark.parametrize('value', [-1, 1.5, '3', True, 2 ** 64])
def test_garbage_carbon_is_refused(value):
    with pytest.raises(handoff.HandoffError, match='carbon_ug'):
        handoff.Counters.from_dict({'token': 't', 'energy_uj': {},
                                    'shown_uj': {}, 'carbon_ug': value})
