"""When is a snapshot stale for Ceilometer (issue 10)?

Older than the stale_after_s it declares and than [scaphandre]
stale_after_min (30 s by default): one slow agent tick, or an agent
before issue 10 declaring 3 intervals (6 s), does not drop a polling
cycle; a stopped agent still does.
"""

import logging
import time

from hypothesis import given
from hypothesis import strategies as st
import pytest

from scaph_openstack.ceilometer import discovery
from scaph_openstack.ceilometer import pollsters
from scaph_openstack import snapshot
from tests.unit.ceilometer import snapshots
from tests.unit.ceilometer import test_cycle
from tests.unit.ceilometer import test_pollsters

NOW = 1795290601.48


@pytest.fixture
def floor(conf):
    """Sets [scaphandre] stale_after_min for one test."""
    def set_floor(seconds):
        conf.set_override('stale_after_min', seconds, group='scaphandre')
    yield set_floor
    conf.clear_override('stale_after_min', group='scaphandre')


def fresh(conf, age, declared=6.0):
    """Whether a snapshot ``age`` s old, declaring ``declared``, gives
    this cycle its resources (ages at least 0.5 s from a limit: reading
    takes milliseconds)."""
    doc = snapshots.document()
    doc.update(time=time.time() - age, stale_after_s=declared)
    snapshots.write_document(conf.scaphandre.snapshot_path, doc)
    return bool(discovery.SnapshotInstanceDiscovery(conf).discover(None))


def test_default_floor_is_30_seconds(conf):
    assert conf.scaphandre.stale_after_min == 30.0


@pytest.mark.parametrize('age,expected', [
    (0, True), (5.5, True),
    # Beyond the 6 s an older agent declares (3 x 2 s), not beyond 30 s:
    # one slow tick, the cycle still publishes.
    (6.5, True), (12, True), (29.5, True),
    (30.5, False), (60, False), (3600, False)])
def test_a_declared_6s_is_read_with_the_floor(conf, age, expected):
    assert fresh(conf, age, declared=6.0) is expected


@pytest.mark.parametrize('age,expected', [
    (29, True), (45, True), (89.5, True), (90.5, False)])
def test_a_longer_declared_staleness_is_kept(conf, age, expected):
    # An agent ticking every 30 s declares 90 s: more than the floor.
    assert fresh(conf, age, declared=90.0) is expected


@pytest.mark.parametrize('floor_s,age,expected', [
    (0, 5.5, True), (0, 6.5, False),          # the snapshot's word alone
    (10, 9.5, True), (10, 10.5, False),
    (120, 119, True), (120, 121, False)])
def test_the_floor_is_an_option(conf, floor, floor_s, age, expected):
    floor(floor_s)
    assert fresh(conf, age, declared=6.0) is expected


@given(declared=st.floats(0, 1e5), floor_s=st.floats(0, 1e5),
       age=st.floats(-10, 2e5))
def test_stale_iff_older_than_both(declared, floor_s, age):
    snap = snapshot.Snapshot({'time': NOW - age, 'stale_after_s': declared})
    try:
        discovery.check_fresh(snap, 'path', floor_s, now=NOW)
    except snapshot.SnapshotStale as exc:
        # (NOW - age) - NOW is age up to float rounding.
        assert exc.age_s > max(declared, floor_s)
    else:
        assert snap.age(NOW) <= max(declared, floor_s)


def test_stale_message_says_the_limit_applied(conf):
    snap = snapshot.Snapshot({'time': NOW - 45, 'stale_after_s': 6.0})
    with pytest.raises(snapshot.SnapshotStale,
                       match=r'45\.0s old \(stale after 30\.0s\)'):
        discovery.check_fresh(snap, 'p', 30.0, now=NOW)


@pytest.mark.parametrize('key,value', [('time', True),
                                       ('stale_after_s', None),
                                       ('stale_after_s', '6'),
                                       ('stale_after_s', True)])
def test_a_malformed_time_is_invalid_not_a_crash(conf, caplog, key, value):
    doc = snapshots.document()
    doc[key] = value
    snapshots.write_document(conf.scaphandre.snapshot_path, doc)
    caplog.set_level(logging.WARNING)
    assert discovery.read_snapshot(conf) is None
    # Refused by the snapshot reader itself (SnapshotInvalid).
    assert key in caplog.text and 'number' in caplog.text


def test_one_slow_tick_does_not_drop_a_cycle(conf):
    # The agent's last write is 12 s old (a tick that took long, 3 x 2 s
    # declared): every meter still publishes, from the discovery on.
    snapshots.write(conf.scaphandre.snapshot_path, age=12)
    resources = discovery.SnapshotInstanceDiscovery(conf).discover(None)
    assert sorted(r.id for r in resources) == [snapshots.UUID_A,
                                               snapshots.UUID_B]
    samples = test_cycle.one_cycle(conf, resources)
    # 3 energy meters and carbon x 2 instances, 2 host meters x 2 zones
    # (power: a first poll).
    assert len(samples) == 4 * 2 + 2 * 2


def test_polls_through_a_slow_tick_keep_power_going(conf):
    # A poll every 10 s, the agent's write of the second poll 12 s late:
    # the power of the period is there, over the snapshots' times.
    power = pollsters.InstancePowerPollster(conf)
    path = conf.scaphandre.snapshot_path
    now = time.time()

    def poll(at, scale):
        snapshots.write(path, at=at, scale=scale)
        return test_pollsters.by_resource(power.get_samples(
            None, {}, discovery.SnapshotInstanceDiscovery(conf).discover(
                None)))

    assert poll(now - 25, 1) == {}
    got = poll(now - 12, 3)
    assert got[snapshots.UUID_A].volume == pytest.approx(68 / 13)
    assert got[snapshots.UUID_A].resource_metadata['period_s'] == \
        pytest.approx(13.0)


def test_a_stopped_agent_still_stops_the_samples(conf, caplog):
    caplog.set_level(logging.INFO, logger=test_cycle.LOGGER)
    snapshots.write(conf.scaphandre.snapshot_path, age=31)
    assert discovery.SnapshotInstanceDiscovery(conf).discover(None) == []
    assert test_cycle.one_cycle(conf, [conf.host]) == []
    (warning,) = test_cycle.warnings_of(caplog)
    assert 'stale after 30.0s' in warning.getMessage()
