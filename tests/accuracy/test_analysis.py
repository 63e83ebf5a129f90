"""The comparison itself, on synthetic snapshots: no libvirt, no agent.

An agent that attributes exactly the truth gets 0 %, one that gives 12 %
too much gets +12 % and MISS, a restart gap is left out of both sides,
and a snapshot that does not add up is caught."""

import types

import pytest

from tests.accuracy import emulated_rapl
from tests.accuracy import harness

UUID = '11111111-2222-4333-8444-555555555555'


class FakeTruth:
    zones = emulated_rapl.PowerModel().zones()

    def truth_at(self, t):
        zero = {z.agent_name: 0.0 for z in self.zones}
        return {'t': t, 'dynamic_uj': zero}


def _scenario(**kw):
    scn = harness.Scenario(
        'syn', 'synthetic', emulated_rapl.PowerModel(),
        [harness.GuestSpec('vm', 'duty:50', '1')], [],
        warmup_s=10, window_s=20, duration_s=60)
    for k, v in kw.items():
        setattr(scn, k, v)
    return scn


def _run(factor, restart_gap=None, t0=1000.0):
    """A VM pinned to socket 1 using 0.5 core; the fake agent attributes
    ``factor`` x the true dynamic energy, every 2 s."""
    scn = _scenario()
    slope = scn.socket_slope(scn.guests[0])
    rec = harness.Recorder.__new__(harness.Recorder)
    rec.cpu = {UUID: [(t0 + k * 0.5, int(k * 0.5 * 0.5e9))
                      for k in range(0, 130)]}
    rec.violations, rec.reconnects, rec.snapshots = [], 0, []
    run, attributed = 0, 0.0
    for k in range(31):
        t = t0 + 2 * k
        if restart_gap and restart_gap[0] < t < restart_gap[1]:
            continue
        if restart_gap and t >= restart_gap[1] and run == 0:
            run = 1     # the restarted agent's first tick is a baseline
            last_t = t
        elif k:
            attributed += factor * slope * (t - last_t) * 0.5 * 1e6
        last_t = t
        inst = {'energy_uj': {'package-1': int(attributed)},
                'dynamic_uj': int(attributed), 'total_uj': int(attributed)}
        rec.snapshots.append({'time': t, 'run': run, 'epoch': 1,
                              'zones': {}, 'instances': {UUID: inst}})
    guest = types.SimpleNamespace(uuid=UUID, spec=scn.guests[0])
    return harness.analyse(scn, FakeTruth(), rec, [guest],
                           {'agent_start': t0})


def test_exact_agent_has_no_error():
    vm = _run(1.0)['vms'][0]
    assert vm['windows'] > 5
    assert vm['error'] == pytest.approx(0, abs=1e-6)
    assert abs(vm['worst_window_error']) < 1e-6
    assert vm['pass']
    # 0.5 core on socket 1 for 50 s evaluated
    assert vm['cpu_s'] == pytest.approx(25, rel=0.05)


def test_twelve_percent_too_much_is_a_miss():
    vm = _run(1.12)['vms'][0]
    assert vm['worst_window_error'] == pytest.approx(0.12, rel=1e-3)
    assert not vm['pass']


def test_restart_gap_is_left_out_of_both_sides():
    vm = _run(1.0, restart_gap=(1030.0, 1037.0))['vms'][0]
    assert abs(vm['worst_window_error']) < 1e-6
    assert vm['cpu_s'] < 25 * 0.9      # the gap is not counted


def test_conservation_errors_are_caught():
    snap = {'time': 1.0, 'zones': {'package-0': {
        'measured_uj': 100, 'residual_uj': 10, 'unallocated_idle_uj': 50}},
        'instances': {'a': {'energy_uj': {'package-0': 40},
                            'dynamic_energy_uj': {'package-0': 40},
                            'idle_energy_uj': {'package-0': 0}}}}
    assert harness.conservation_errors(snap) == []
    snap['zones']['package-0']['residual_uj'] = 11
    assert len(harness.conservation_errors(snap)) == 1
    snap['zones']['package-0']['residual_uj'] = 10
    snap['instances']['a']['idle_energy_uj']['package-0'] = 1
    assert 'dynamic 40 + idle 1' in harness.conservation_errors(snap)[0]


def test_unpinned_guests_need_equal_slopes():
    scn = _scenario()
    with pytest.raises(ValueError):
        scn.socket_slope(harness.GuestSpec('x', 'busy'))
    steady = harness.scenario('steady')
    assert steady.socket_slope(steady.guests[0]) == pytest.approx(29.5)
