"""Carbon and the handoff (doc/carbon.md, "Live and cold migration"):
the source's published carbon stands still while the instance leaves,
the handoff document stays the energy's alone (Nova keeps it in one
255-character system metadata value), and the destination's carbon
counter starts from its own."""

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
def test_carbon_restarts_on_the_destination(tmp_path, seed):
    rng = random.Random(seed)
    a = CarbonHandoffHost(tmp_path / 'a', 'a', 100.0)
    b = CarbonHandoffHost(tmp_path / 'b', 'b', 300.0)
    a.inventory.set(UUID, 0)
    a.inventory.set(OTHER, 0)
    b.inventory.set(OTHER, 0)
    timeline = a.run_carbon(rng, 8, [UUID, OTHER])
    assert timeline == sorted(timeline) and timeline[-1] > 0
    b.run(rng, 3, [OTHER])
    answer = test_handoff.hold_and_answer(a, 'live-1')
    frozen = a.published_carbon()
    assert frozen > 0
    assert 'carbon_ug' not in answer.as_dict()
    local_before = a.local_carbon()
    a.run(rng, 3, [UUID, OTHER])
    assert a.local_carbon() > local_before     # a still counts its own
    assert a.published_carbon() == frozen      # but publishes no more
    handoff.offer_start(str(b.share), UUID, answer)
    b.inventory.set(UUID, 0)
    b.run(rng, 1, [UUID, OTHER])
    a.inventory.remove(UUID)
    a.run(rng, 2, [OTHER])
    arrived = b.run_carbon(rng, 8, [UUID, OTHER])
    assert arrived == sorted(arrived)
    # Its energy continues from a's; its carbon is b's own, at b's
    # intensity.
    assert b.published() > a.published()
    assert b.published_carbon() == b.local_carbon() > 0
    led = b.ticker.ledger.instances[UUID]
    assert led.carbon_units == led.total_uj * 1100 * 300_000
    assert a.published_carbon() == frozen      # a departed: frozen

