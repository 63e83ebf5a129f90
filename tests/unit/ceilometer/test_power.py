"""power.instance: the average power over the polling period (issue 10).

The pollster keeps, per instance, the previous poll's (energy.instance
counter, snapshot time) and publishes the increase over the time between
the two snapshots. The derivation (pollsters.average_power) is checked
against a truth computed from the agent's ticks with exact fractions;
the pollster through snapshot files written like the agent writes them.
"""

from fractions import Fraction
import time

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import pytest

from scaph_openstack.ceilometer import discovery
from scaph_openstack.ceilometer import pollsters
from tests.unit.ceilometer import snapshots
from tests.unit.ceilometer import test_pollsters

A, B = snapshots.UUID_A, snapshots.UUID_B
# make_ledger(scale): web (A) has 34 J x scale, db (B) 15 J x scale.
TOTAL_J = {A: 34, B: 15}
WALL_CLOCK = 1795290601.48   # a wall-clock time, as in snapshots


def reading(energy_uj, t, counter='epoch-1'):
    return pollsters.Reading(counter, energy_uj, t)


# -- the derivation -----------------------------------------------------------

# An agent's ticks: (length in s, energy charged to the instance in µJ).
TICKS = st.lists(st.tuples(
    st.floats(min_value=0.05, max_value=600, allow_nan=False),
    st.integers(min_value=0, max_value=10 ** 10)), min_size=1, max_size=60)


@settings(max_examples=300, deadline=None)
@given(ticks=TICKS, start_uj=st.integers(0, 10 ** 15),
       t0=st.floats(min_value=0, max_value=2e9), data=st.data())
def test_average_power_is_the_energy_over_the_period(ticks, start_uj, t0,
                                                      data):
    # The counter and the time after each tick, as snapshots say them.
    counters, times = [start_uj], [t0]
    for length, uj in ticks:
        counters.append(counters[-1] + uj)
        times.append(times[-1] + length)
    # Two polls, each reading the snapshot of some tick.
    i = data.draw(st.integers(0, len(ticks) - 1), label='first poll')
    j = data.draw(st.integers(i + 1, len(ticks)), label='second poll')

    watts, period_s = pollsters.average_power(
        reading(counters[i], times[i]), reading(counters[j], times[j]))

    # Truth from the ticks in between, exactly: their energy over their
    # length.
    between = ticks[i:j]
    length = sum(Fraction(s) for s, _ in between)
    truth = Fraction(sum(uj for _, uj in between), 10 ** 6) / length
    # Snapshot times are wall-clock floats: a period is exact to about
    # 2**-22 s at today's dates.
    assert period_s == pytest.approx(float(length), rel=1e-9, abs=1e-6)
    assert watts == pytest.approx(float(truth), rel=1e-6, abs=1e-9)
    assert watts >= 0


@given(energy=st.integers(0, 10 ** 12), t=st.floats(0, 2e9),
       later=st.floats(0.001, 1e6), more=st.integers(0, 10 ** 12))
def test_no_rate_without_a_previous_reading(energy, t, later, more):
    assert pollsters.average_power(None, reading(energy, t)) is None


@given(energy=st.integers(0, 10 ** 12), t=st.floats(1, 2e9),
       later=st.floats(0.01, 1e6), more=st.integers(0, 10 ** 12))
def test_another_counter_is_not_a_rate(energy, t, later, more):
    # Another epoch, source or ledger record: the counter started again
    # from 0, even when its value happens to be higher.
    assert pollsters.average_power(
        reading(energy, t, counter=(1, 'simulated')),
        reading(energy + more, t + later, counter=(2, 'rapl'))) is None


@given(energy=st.integers(1, 10 ** 12), t=st.floats(1, 2e9),
       later=st.floats(0.01, 1e6), data=st.data())
def test_a_decrease_is_not_a_rate(energy, t, later, data):
    lower = data.draw(st.integers(0, energy - 1))
    assert pollsters.average_power(reading(energy, t),
                                   reading(lower, t + later)) is None


@given(energy=st.integers(0, 10 ** 12), t=st.floats(1, 2e9),
       back=st.floats(0, 1e6), more=st.integers(0, 10 ** 12))
def test_no_time_between_is_not_a_rate(energy, t, back, more):
    # The same snapshot read twice, or a clock stepped back.
    assert pollsters.average_power(reading(energy, t),
                                   reading(energy + more, t - back)) is None


def test_no_energy_over_a_period_is_zero_watts():
    assert pollsters.average_power(reading(5, 100.0), reading(5, 400.0)) \
        == (0.0, 300.0)


# -- what is remembered -------------------------------------------------------

def test_averages_update_and_rebase():
    averages = pollsters.PeriodAverages()
    averages.new_poll()
    assert averages.update('a', reading(0, 100.0)) is None     # first
    averages.new_poll()
    assert averages.update('a', reading(600_000_000, 400.0)) == (2.0, 300.0)
    averages.new_poll()
    # A new epoch: no rate, but the next poll compares with it.
    assert averages.update('a', reading(30_000_000, 700.0, 'e2')) is None
    averages.new_poll()
    assert averages.update('a', reading(90_000_000, 1000.0, 'e2')) == (
        0.2, 300.0)


@settings(max_examples=200, deadline=None)
@given(polls=st.lists(st.sets(st.integers(0, 30), max_size=8), max_size=40),
       forget_after=st.integers(1, 5))
def test_memory_is_bounded(polls, forget_after):
    # Whatever comes and goes, only the keys updated in the last
    # ``forget_after`` polls (and this one) are kept.
    averages = pollsters.PeriodAverages(forget_after)
    for n, keys in enumerate(polls):
        averages.new_poll()
        for key in keys:
            averages.update(key, reading(n, float(n)))
        recent = set().union(*polls[max(0, n - forget_after):n + 1])
        assert len(averages) <= len(recent)
        assert set(averages._readings) <= recent


@pytest.mark.parametrize('absent,rate', [(0, True), (1, True),
                                         (pollsters.FORGET_AFTER_POLLS - 1,
                                          True),
                                         (pollsters.FORGET_AFTER_POLLS,
                                          False)])
def test_absent_for_some_polls(absent, rate):
    averages = pollsters.PeriodAverages()
    averages.new_poll()
    averages.update('a', reading(0, 0.0))
    for _ in range(absent):
        averages.new_poll()
        averages.update('other', reading(0, 0.0))
    averages.new_poll()
    got = averages.update('a', reading(10 ** 6 * (absent + 1),
                                       float(absent + 1)))
    # Back within the horizon: the average over the whole time since.
    assert got == ((1.0, float(absent + 1)) if rate else None)


# -- the pollster on snapshots -----------------------------------------------

class Polls:
    """One power.instance pollster polled again and again, as
    ceilometer-polling polls the object it loaded once."""

    def __init__(self, conf, resources=None):
        self.conf = conf
        self.path = conf.scaphandre.snapshot_path
        self.pollster = pollsters.InstancePowerPollster(conf)
        self.resources = resources

    def poll(self, **write):
        """Write a snapshot (snapshots.write arguments) and poll it:
        {uuid: sample}."""
        if write:
            snapshots.write(self.path, **write)
        return self.poll_only()

    def poll_document(self, doc):
        snapshots.write_document(self.path, doc)
        return self.poll_only()

    def poll_only(self):
        resources = self.resources
        if resources is None:
            resources = discovery.SnapshotInstanceDiscovery(
                self.conf).discover(None)
        return test_pollsters.by_resource(self.pollster.get_samples(
            None, {}, resources))


def expected_watts(uuid, scale_before, scale_after, period_s):
    """Independently: the instance's joules between the two snapshots
    (make_ledger scales every counter) over the period."""
    return float(Fraction(TOTAL_J[uuid] * (scale_after - scale_before))
                 / Fraction(period_s))


def test_first_poll_gives_no_sample_then_the_average(conf):
    polls = Polls(conf)
    now = time.time()
    assert polls.poll(at=now - 5, scale=1) == {}
    got = polls.poll(at=now, scale=4)
    assert set(got) == {A, B}
    for uuid in (A, B):
        s = got[uuid]
        assert (s.name, s.type, s.unit) == ('power.instance', 'gauge', 'W')
        assert s.volume == pytest.approx(expected_watts(uuid, 1, 4, 5))
        assert s.resource_metadata['period_s'] == 5.0
        # Not the agent's last-tick power_w (12.25 W and 3.5 W).
    assert got[A].volume == pytest.approx(20.4)      # 3 x 34 J in 5 s
    assert got[B].volume == pytest.approx(9.0)       # 3 x 15 J in 5 s


def test_successive_polls_are_successive_periods(conf):
    polls = Polls(conf)
    now = time.time()
    times = [now - 25, now - 22, now - 10, now - 9.5, now]
    scales = [1, 2, 2, 7, 20]
    got = [polls.poll(at=t, scale=s)
           for t, s in zip(times, scales, strict=True)]
    assert got[0] == {}
    for k in range(1, len(times)):
        period = times[k] - times[k - 1]
        assert got[k][A].volume == pytest.approx(
            expected_watts(A, scales[k - 1], scales[k], period))
        assert got[k][A].resource_metadata['period_s'] == \
            pytest.approx(period, abs=1e-6)
    assert got[2][A].volume == 0.0      # nothing charged in 12 s: 0 W


def test_same_snapshot_twice_gives_no_sample(conf):
    # Polled faster than the agent writes: no period, no made-up value;
    # the next snapshot gives the average since the last one that
    # differed.
    polls = Polls(conf)
    now = time.time()
    polls.poll(at=now - 8, scale=1)
    assert polls.poll(at=now - 4, scale=2)[A].volume == pytest.approx(8.5)
    assert polls.poll_only() == {}
    assert polls.poll_only() == {}
    got = polls.poll(at=now, scale=4)
    assert got[A].volume == pytest.approx(17.0)      # 68 J in 4 s
    assert got[A].resource_metadata['period_s'] == pytest.approx(4.0)


def test_metadata_is_energy_instance_and_the_period(conf):
    polls = Polls(conf)
    now = time.time()
    polls.poll(at=now - 2, scale=1, source='rapl')
    power = polls.poll(at=now, scale=2, source='rapl')[A]
    energy = test_pollsters.by_resource(test_pollsters.poll(
        conf, pollsters.InstanceEnergyPollster,
        discovery.SnapshotInstanceDiscovery(conf).discover(None)))[A]
    assert power.resource_metadata == dict(energy.resource_metadata,
                                           period_s=2.0)
    assert (power.project_id, power.user_id) == (snapshots.PROJECT,
                                                 snapshots.USER)


def test_new_epoch_gives_no_sample_then_rates_again(conf):
    polls = Polls(conf)
    now = time.time()
    polls.poll(at=now - 6, scale=100)
    assert polls.poll(at=now - 4, scale=101)
    # The source changed: epoch 3, every counter from 0 (here: lower).
    doc = snapshots.document(scale=1, source='rapl')
    doc.update(time=now - 2, epoch=snapshots.EPOCH + 1,
               epoch_started=now - 3)
    assert polls.poll_document(doc) == {}
    doc = snapshots.document(scale=3, source='rapl')
    doc.update(time=now, epoch=snapshots.EPOCH + 1, epoch_started=now - 3)
    got = polls.poll_document(doc)
    assert got[A].volume == pytest.approx(34.0)      # 68 J in 2 s
    assert got[A].resource_metadata['epoch'] == snapshots.EPOCH + 1


def test_new_epoch_with_a_higher_counter_is_no_rate_either(conf):
    # A decrease is not the only sign: epoch 3's counter may already be
    # above epoch 2's last one.
    polls = Polls(conf)
    now = time.time()
    polls.poll(at=now - 4, scale=1)
    doc = snapshots.document(scale=50)
    doc.update(time=now, epoch=snapshots.EPOCH + 1)
    assert polls.poll_document(doc) == {}


@pytest.mark.parametrize('change', ['source', 'epoch_started',
                                    'first_seen'])
def test_another_counter_gives_no_sample(conf, change):
    polls = Polls(conf)
    now = time.time()
    before = snapshots.document(scale=1)
    before['time'] = now - 4
    polls.poll_document(before)
    after = snapshots.document(scale=2)
    after['time'] = now
    if change == 'source':
        # An agent before epochs: the source is all that tells.
        for doc in (before, after):
            doc.pop('epoch')
        polls = Polls(conf)
        polls.poll_document(before)
        after['source'] = 'rapl'
    elif change == 'epoch_started':
        # A new ledger starts at epoch 1 again, at another time.
        after['epoch_started'] = now - 1
    else:
        # The agent dropped the instance's record after [agent]
        # retention and made a new one, from 0.
        for inst in after['instances']:
            inst['first_seen'] = now - 1
    assert polls.poll_document(after) == {}


def test_a_decrease_gives_no_sample(conf):
    polls = Polls(conf)
    now = time.time()
    polls.poll(at=now - 4, scale=3)
    assert polls.poll(at=now - 2, scale=2) == {}
    # The decreased value is the new base.
    assert polls.poll(at=now, scale=4)[A].volume == pytest.approx(34.0)


def test_no_rate_across_a_gap_without_a_fresh_snapshot(conf):
    # The agent was stopped: what the instance used then was charged to
    # nobody, an average over the gap would understate it.
    polls = Polls(conf)
    now = time.time()
    polls.poll(at=now - 600, scale=1)
    snapshots.write(polls.path, age=3600)
    assert polls.poll_only() == {}
    assert polls.poll(at=now - 4, scale=2) == {}
    assert polls.poll(at=now, scale=3)[A].volume == pytest.approx(8.5)


def test_no_rate_across_a_gap_with_local_instances(conf):
    # The same with Ceilometer's resources, which come even when the
    # snapshot is missing.
    polls = Polls(conf, resources=[test_pollsters.nova_like_server(A)])
    now = time.time()
    polls.poll(at=now - 6, scale=1)
    snapshots.write(polls.path, age=3600)
    assert polls.poll_only() == {}
    assert polls.poll(at=now - 2, scale=2) == {}
    got = polls.poll(at=now, scale=4)
    assert set(got) == {A}
    assert got[A].volume == pytest.approx(34.0)
    assert got[A].project_id == 'p-nova'


def test_an_instance_back_soon_gets_the_average_over_its_absence(conf):
    polls = Polls(conf)
    now = time.time()
    polls.poll(at=now - 20, scale=1)

    def without_b(at, scale):
        doc = snapshots.document(scale=scale)
        doc['time'] = at
        for inst in doc['instances']:
            if inst['uuid'] == B:
                inst['running'] = False
        return polls.poll_document(doc)

    for k in range(pollsters.FORGET_AFTER_POLLS - 1):
        assert set(without_b(now - 10 + k, 1)) == {A}
    got = polls.poll(at=now, scale=3)
    # 30 J in 20 s: paused for a while, B was charged nothing then, and
    # the average says so.
    assert got[B].volume == pytest.approx(1.5)
    assert got[B].resource_metadata['period_s'] == pytest.approx(20.0)


def test_an_instance_gone_for_long_is_forgotten(conf):
    polls = Polls(conf)
    now = time.time()
    polls.poll(at=now - 20, scale=1)
    for k in range(pollsters.FORGET_AFTER_POLLS):
        doc = snapshots.document(scale=1)
        doc['time'] = now - 10 + k
        doc['instances'] = [i for i in doc['instances'] if i['uuid'] != B]
        polls.poll_document(doc)
    got = polls.poll(at=now - 2, scale=3)
    assert set(got) == {A}           # B: a first poll again
    assert polls.poll(at=now, scale=4)[B].volume == pytest.approx(7.5)


def test_memory_of_the_pollster_is_bounded(conf):
    # Instances come and go for a long time: only those of the last polls
    # are remembered.
    polls = Polls(conf)
    now = time.time()
    for k in range(50):
        doc = snapshots.document(scale=k + 1)
        doc['time'] = now - 25 + k / 2
        for inst in doc['instances']:
            inst['uuid'] = inst['uuid'][:-6] + '%06d' % (k * 10 +
                                                        int(inst['uuid'][-1]))
        polls.poll_document(doc)
        assert len(polls.pollster.averages) <= 2 * (
            pollsters.FORGET_AFTER_POLLS + 1)


def test_old_snapshot(conf):
    # An agent before issue 9 (no epoch, no idle split) has total_uj and
    # first_seen: power.instance works the same.
    polls = Polls(conf)
    now = time.time()
    assert polls.poll(at=now - 2, scale=1, old=True) == {}
    got = polls.poll(at=now, scale=2, old=True)
    assert got[A].volume == pytest.approx(17.0)
    assert 'epoch' not in got[A].resource_metadata


def test_each_pollster_object_has_its_own_memory(conf):
    # What Ceilometer does: one object per process, polled every cycle.
    # A new object (a restarted ceilometer-polling) starts again.
    now = time.time()
    Polls(conf).poll(at=now - 2, scale=1)
    assert Polls(conf).poll(at=now, scale=2) == {}
