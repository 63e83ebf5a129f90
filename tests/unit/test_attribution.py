from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import pytest

from scaph_openstack.attribution import base
from scaph_openstack.attribution import cputime

ZONES = st.lists(
    st.builds(base.ZoneDelta,
              name=st.sampled_from(['package-0', 'package-1', 'dram-0',
                                    'core-0', 'psys']),
              kind=st.just('package'), socket=st.just(0),
              delta_uj=st.integers(0, 10 ** 15)),
    min_size=1, max_size=5, unique_by=lambda z: z.name)
USAGE = st.lists(
    st.builds(base.UsageDelta, uuid=st.uuids().map(str),
              cpu_ns=st.integers(0, 10 ** 13), vcpus=st.integers(1, 64)),
    max_size=40, unique_by=lambda u: u.uuid)


def check_conservation(splits, zones, usage):
    assert [s.zone for s in splits] == [z.name for z in zones]
    for split, zone in zip(splits, zones, strict=True):
        shares = split.instances.values()
        assert all(share >= 0 for share in shares)
        assert split.host_residual_uj >= 0
        assert split.unallocated_idle_uj >= 0
        assert (sum(shares) + split.host_residual_uj
                + split.unallocated_idle_uj) == zone.delta_uj
        assert set(split.instances) == {u.uuid for u in usage}


@settings(max_examples=300, deadline=None)
@given(zones=ZONES, usage=USAGE,
       policy=st.sampled_from(cputime.IDLE_POLICIES),
       interval=st.floats(0.0, 3600.0),
       host_busy=st.integers(0, 10 ** 13),
       host_cpus=st.integers(1, 512),
       idle_watts=st.one_of(st.none(), st.floats(0, 10 ** 4)))
def test_energy_is_conserved_exactly(zones, usage, policy, interval,
                                     host_busy, host_cpus, idle_watts):
    idle_power = ({z.name: idle_watts for z in zones}
                  if idle_watts is not None else {})
    model = cputime.CpuTimeAttribution(policy, idle_power)
    splits = model.split(zones, interval, host_busy, host_cpus, usage,
                         now=1.0)
    check_conservation(splits, zones, usage)


@settings(max_examples=100, deadline=None)
@given(zones=ZONES, usage=USAGE, policy=st.sampled_from(
    cputime.IDLE_POLICIES), steps=st.integers(1, 20))
def test_learned_idle_conserves_over_many_ticks(zones, usage, policy,
                                                steps):
    model = cputime.CpuTimeAttribution(policy)
    for step in range(steps):
        splits = model.split(zones, 2.0, 10 ** 10, 4, usage, now=step * 2.0)
        check_conservation(splits, zones, usage)


def zone(delta, name='package-0'):
    return base.ZoneDelta(name, 'package', 0, delta)


def test_dynamic_split_by_cpu_time_residual_to_host():
    model = cputime.CpuTimeAttribution('none', {'package-0': 10})
    usage = [base.UsageDelta('a', 300, 1), base.UsageDelta('b', 100, 1)]
    # 2 s at 10 W idle = 20 J idle; 80 J dynamic; host busy 800 ns.
    (split,) = model.split([zone(100_000_000)], 2.0, 800, 4, usage)
    assert split.idle_uj == 20_000_000
    assert split.instances == {'a': 30_000_000, 'b': 10_000_000}
    assert split.host_residual_uj == 40_000_000
    assert split.unallocated_idle_uj == 20_000_000


def test_idle_by_vcpus_is_the_reservation_view():
    model = cputime.CpuTimeAttribution('vcpus', {'package-0': 10})
    usage = [base.UsageDelta('a', 0, 2), base.UsageDelta('b', 0, 1)]
    (split,) = model.split([zone(20_000_000)], 2.0, 0, 4, usage)
    assert split.instances == {'a': 10_000_000, 'b': 5_000_000}
    assert split.unallocated_idle_uj == 5_000_000


def test_idle_by_vcpus_overcommitted_never_exceeds_idle():
    model = cputime.CpuTimeAttribution('vcpus', {'package-0': 10})
    usage = [base.UsageDelta(str(i), 0, 4) for i in range(4)]
    (split,) = model.split([zone(20_000_000)], 2.0, 0, 2, usage)
    assert sum(split.instances.values()) == 20_000_000


def test_idle_by_cputime():
    model = cputime.CpuTimeAttribution('cputime', {'package-0': 10})
    usage = [base.UsageDelta('a', 100, 1)]
    (split,) = model.split([zone(40_000_000)], 2.0, 400, 4, usage)
    assert split.instances == {'a': 5_000_000 + 5_000_000}


def test_instance_cpu_above_host_busy_is_capped():
    model = cputime.CpuTimeAttribution('none', {'package-0': 0})
    usage = [base.UsageDelta('a', 900, 1), base.UsageDelta('b', 300, 1)]
    (split,) = model.split([zone(1200)], 1.0, 1000, 4, usage)
    assert split.instances == {'a': 900, 'b': 300}
    assert split.host_residual_uj == 0


def test_learned_idle_is_the_window_minimum():
    model = cputime.CpuTimeAttribution('none', idle_learning_window=10)
    assert model.idle_watts(zone(50_000_000), 1.0, now=0) == 50.0
    assert model.idle_watts(zone(30_000_000), 1.0, now=1) == 30.0
    assert model.idle_watts(zone(70_000_000), 1.0, now=2) == 30.0
    # the 30 W sample leaves the window after 10 s
    assert model.idle_watts(zone(70_000_000), 1.0, now=12) == 70.0


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match='idle_policy'):
        cputime.CpuTimeAttribution('everything')
