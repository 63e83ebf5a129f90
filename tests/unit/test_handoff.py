"""Counters that follow an instance between two hosts' agents, through
the handoff directory, with power that varies tick by tick: the published
value never decreases, each host conserves its own energy, and the
migration window is counted on one host only."""

import os
import random

import pytest

from scaph_openstack.agent import handoffs
from scaph_openstack.attribution import cputime
from scaph_openstack import handoff
from scaph_openstack.inventory import base
from tests.unit.test_tick import Host
from tests.unit.test_tick import TICK_NS

UUID = '0b2c1f8e-5d7a-4c3b-9e61-2f4a8d9c7e10'
OTHER = '7e4d2a91-0c3b-4f5e-8a6d-1b2c3d4e5f60'


class HandoffHost(Host):
    def __init__(self, tmp_path, name):
        self.share = tmp_path / 'share'
        self.share.mkdir(parents=True)
        super().__init__(tmp_path)
        self.name = name

    def new_ticker(self):
        ticker = super().new_ticker()
        # A configured idle power: the idle part (energy.instance.idle)
        # must follow the instance too.
        ticker.attribution = cputime.CpuTimeAttribution(
            'vcpus', idle_power={'package-0': 15.0})
        ticker.handoff_desk = handoffs.HandoffDesk(
            str(self.share), resolution_uj=10 ** 6, wallclock=self.clock)
        return ticker

    def restart_agent(self):
        self.ticker = self.new_ticker()

    def run(self, rng, ticks, uuids):
        """Ticks with random power and CPU shares; the published (total,
        idle) of UUID."""
        seen = []
        for _ in range(ticks):
            cpu = {u: rng.randint(1, 40) * TICK_NS for u in uuids}
            report = self.advance(2, rng.randint(20, 200) * 10 ** 6,
                                  rng.randint(1, 20) * 10 ** 6,
                                  busy_ns=sum(cpu.values()) +
                                  rng.randint(0, 20) * TICK_NS, cpu=cpu)
            if report is not None and UUID in report.instances:
                totals = report.instances[UUID]
                seen.append((totals.total_uj, totals.idle_total_uj))
        return seen

    def published(self):
        return self.ticker.last_report.instances[UUID].total_uj

    def local(self):
        return self.ticker.ledger.instances[UUID].total_uj


def conserves(host):
    """Every zone's measured energy is its instances' plus the host's
    residual and the idle part nobody took: what this host measured,
    split, nothing carried in counted."""
    ledger = host.ticker.ledger
    for zone in ledger.zones.values():
        given = sum(r.energy_uj.get(zone.name, 0)
                    for r in ledger.instances.values())
        assert given + zone.residual_uj + zone.unallocated_idle_uj == \
            zone.measured_uj, zone.name


def hold_and_answer(host, token):
    handoff.request_hold(str(host.share), UUID, token)
    assert handoff.answer_of(str(host.share), UUID, token) is None
    host.advance(2, 50 * 10 ** 6)   # the agent's next tick answers
    answer = handoff.answer_of(str(host.share), UUID, token)
    assert answer is not None
    return answer


@pytest.mark.parametrize('seed', [1, 2, 3])
def test_live_migration_continues_on_the_destination(tmp_path, seed):
    rng = random.Random(seed)
    a = HandoffHost(tmp_path / 'a', 'a')
    b = HandoffHost(tmp_path / 'b', 'b')
    a.inventory.set(UUID, 0)
    a.inventory.set(OTHER, 0)
    b.inventory.set(OTHER, 0)
    timeline = a.run(rng, 8, [UUID, OTHER])
    b.run(rng, 3, [OTHER])

    answer = hold_and_answer(a, 'live-1')
    frozen = a.published()
    assert answer.energy_uj['package'] + answer.energy_uj['dram'] == frozen
    assert answer.shown_uj['package'] == \
        answer.energy_uj['package'] // 10 ** 6 * 10 ** 6
    # The migration window: the domain still runs on a, whose ledger
    # counts it (conservation), but what is published stands still.
    local_before = a.local()
    timeline += a.run(rng, 3, [UUID, OTHER])
    assert a.local() > local_before
    assert a.published() == frozen
    # The incoming domain appears on b (pre_live_migration offered the
    # start), then the source's domain goes away.
    handoff.offer_start(str(b.share), UUID, answer)
    b.inventory.set(UUID, 0)
    timeline += b.run(rng, 1, [UUID, OTHER])
    a.inventory.remove(UUID)
    a.run(rng, 2, [OTHER])
    timeline += b.run(rng, 8, [UUID, OTHER])
    for name, values in (
            ('total', [t for t, _ in timeline]),
            ('idle', [i for _, i in timeline]),
            ('dynamic', [t - i for t, i in timeline])):
        assert values == sorted(values), 'the published %s went back' % name
    assert timeline[-1][1] > answer.idle_uj['package'] > 0
    assert b.published() == frozen + b.local()
    assert b.local() > 0
    # a keeps the energy of the window in its own counters, never
    # published: no interval is published by both hosts.
    assert a.published() == frozen < a.local()
    handoff.release_hold(str(a.share), UUID)   # post-migration cleanup
    a.run(rng, 1, [OTHER])
    assert a.ticker.ledger.instances[UUID].published_kind_totals() == \
        answer.energy_uj, 'a departed instance must stay frozen'
    conserves(a)
    conserves(b)


def test_a_rolled_back_hold_lets_the_counter_grow_again(tmp_path):
    rng = random.Random(7)
    a = HandoffHost(tmp_path / 'a', 'a')
    a.inventory.set(UUID, 0)
    a.run(rng, 5, [UUID])
    hold_and_answer(a, 'live-2')
    frozen = a.published()
    a.run(rng, 3, [UUID])
    assert a.published() == frozen
    handoff.release_hold(str(a.share), UUID)    # the migration failed
    a.run(rng, 2, [UUID])
    assert a.published() == a.local() > frozen


def test_holds_and_starts_survive_an_agent_restart(tmp_path):
    rng = random.Random(11)
    a = HandoffHost(tmp_path / 'a', 'a')
    b = HandoffHost(tmp_path / 'b', 'b')
    a.inventory.set(UUID, 0)
    a.run(rng, 5, [UUID])
    answer = hold_and_answer(a, 'cold-1')
    frozen = a.published()
    a.restart_agent()
    a.run(rng, 3, [UUID])
    assert a.published() == frozen
    handoff.offer_start(str(b.share), UUID, answer)
    b.inventory.set(UUID, 0)
    b.run(rng, 3, [UUID])
    before = b.published()
    b.restart_agent()           # the start must not be applied twice
    b.run(rng, 2, [UUID])
    assert before <= b.published() == frozen + b.local()


def test_a_start_on_the_same_host_never_lowers_nor_adds(tmp_path):
    # Stop, then start on the same host: the recorded value is what
    # this host already published.
    rng = random.Random(5)
    a = HandoffHost(tmp_path / 'a', 'a')
    a.inventory.set(UUID, 0)
    a.run(rng, 4, [UUID])
    answer = hold_and_answer(a, 'stop-1')
    a.inventory.set_state(UUID, base.STATE_SHUTOFF)
    a.run(rng, 2, [UUID])
    handoff.release_hold(str(a.share), UUID)
    handoff.offer_start(str(a.share), UUID, answer)
    a.inventory.set_state(UUID, base.STATE_RUNNING)
    a.run(rng, 3, [UUID])
    assert a.published() == a.local()


def test_garbage_in_the_handoff_directory_is_ignored(tmp_path):
    rng = random.Random(3)
    a = HandoffHost(tmp_path / 'a', 'a')
    a.inventory.set(UUID, 0)
    a.run(rng, 2, [UUID])
    directory = tmp_path / 'a' / 'share' / handoff.DIR_NAME
    directory.mkdir()
    (directory / (UUID + '.start')).write_text('{"token": "x", '
                                               '"energy_uj": {"package": -5}}')
    (directory / (UUID + '.hold')).write_text('not json')
    a.run(rng, 3, [UUID])
    assert a.published() == a.local()


def test_a_hold_past_its_deadline_lets_the_counter_grow(tmp_path):
    # A live migration's hold whose destination failed to prepare: Nova
    # never releases it, its deadline does.
    rng = random.Random(9)
    a = HandoffHost(tmp_path / 'a', 'a')
    a.inventory.set(UUID, 0)
    a.run(rng, 3, [UUID])
    handoff.request_hold(str(a.share), UUID, 'live-3',
                         expires=a.clock.now + 7)
    a.run(rng, 1, [UUID])
    frozen = a.published()
    a.run(rng, 2, [UUID])           # 4 s: still held
    assert a.published() == frozen
    assert handoff.answer_of(str(a.share), UUID, 'live-3') is not None
    a.run(rng, 2, [UUID])           # past the deadline
    assert a.published() == a.local() > frozen
    assert handoff.answer_of(str(a.share), UUID, 'live-3') is None
    directory = tmp_path / 'a' / 'share' / handoff.DIR_NAME
    assert sorted(os.listdir(directory)) == []


def test_files_of_an_instance_never_seen_here_go_after_retention(tmp_path):
    # A live migration that failed before its domain came here: the
    # start pre_live_migration offered stays no longer than a record.
    rng = random.Random(4)
    b = HandoffHost(tmp_path / 'b', 'b')
    b.ticker.handoff_desk.retention_s = 60
    b.inventory.set(OTHER, 0)
    handoff.offer_start(str(b.share), UUID, handoff.Counters(
        'live-4', {'package': 5}, {'package': 0}))
    directory = tmp_path / 'b' / 'share' / handoff.DIR_NAME
    b.run(rng, 2, [OTHER])
    assert os.listdir(directory) == [UUID + '.start']
    os.utime(directory / (UUID + '.start'),
             (b.clock.now - 61, b.clock.now - 61))
    b.run(rng, 1, [OTHER])
    assert os.listdir(directory) == []
