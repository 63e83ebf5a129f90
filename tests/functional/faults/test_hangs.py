"""Hangs: a QEMU, then libvirtd itself, stopped (SIGSTOP) under the real
agent for STALL_S seconds, while the fixture RAPL's power changes.

SIGSTOP is what a QEMU in D state (a dead NFS or Ceph server) or a
deadlocked libvirtd looks like from the agent: the process is there, its
sockets accept, nothing answers. libvirt 9.0's bulk CPU_TOTAL stats ask
each running QEMU's monitor (``query-stats``) under a query job, so the
agent's call that meets the stopped QEMU never returns by itself.

Real: libvirtd, two TCG guests (``victim`` is stopped, ``witness`` runs a
duty-cycle load), the agent process (libvirt inventory, snapshot
publisher). Fixture: the RAPL tree (support.SteadyRapl), frozen while the
agent takes its baseline and before its last ticks, so each zone's
``measured_uj`` must equal what the fixture counted.

Must hold, all through each stall: the snapshot stays fresh (age below
its ``stale_after_s``), no energy is lost or invented (exact totals, and
attributed + residual + unallocated idle == measured in every snapshot);
for the QEMU stall, the other guest is metered after the first late call;
for the libvirtd stall, the stall's energy all goes to the unattributed
residual and the agent does not pile up threads; after SIGCONT metering
resumes by itself; SIGTERM during a libvirtd stall stops the agent
gracefully within a few seconds.

STALL_S defaults to 120 s ("for minutes", about 4.5 minutes of CI for
both tests); SCAPH_HANG_STALL_S changes it.
"""

import os
import signal
import threading
import time

import pytest

from tests.functional import helpers
from tests.functional.faults import support
from tests.functional.helpers import agent as agent_helper
from tests.functional.helpers import guest as guest_helper
from tests.functional.helpers import libvirtd

# call_timeout = interval and readers' staleness at 3 intervals: a late
# call must keep the snapshot fresh even with no slack ([snapshot]
# stale_after_min 0 here; its default, 30 s, leaves plenty).
INTERVAL = 1.0
CALL_TIMEOUT = 1.0
STALL_S = float(os.environ.get('SCAPH_HANG_STALL_S', 120))
WATTS = {'intel-rapl:0': 50.0, 'intel-rapl:0:0': 5.0}
STALL_WATTS = 90.0          # package-0 in the second half of each stall
LOAD = 'duty:15'            # both guests: their CPU time always moves
# Threads a hung libvirtd may cost the agent's worker: two calls left
# behind, and a connection being closed.
MAX_EXTRA_THREADS = 3
SIGTERM_WITHIN_S = 5.0


@pytest.fixture(scope='module')
def guests():
    helpers.require_guests('needs root: libvirtd, SIGSTOP')
    pair = [guest_helper.Guest(label='hang-' + name,
                               cmdline_params={'load': LOAD})
            for name in ('victim', 'witness')]
    try:
        for guest in pair:
            guest.start()
        for guest in pair:
            guest.wait_booted(timeout=180)
        yield pair
    finally:
        for guest in pair:
            guest.cleanup()


def qemu_pid(guest):
    with open('/run/libvirt/qemu/%s.pid' % guest.name) as f:
        return int(f.read().strip())


def set_watts(rapl, zone, watts):
    with rapl._lock:
        rapl.watts[zone] = watts


def totals(doc):
    return {i['uuid']: i['total_uj'] for i in doc['instances']}


def unattributed(doc):
    return {z['name']: z['residual_uj'] + z['unallocated_idle_uj']
            for z in doc['zones']}


class SnapshotWatch(threading.Thread):
    """Reads the snapshot every 20 ms: every new document (with the wall
    time it was first seen), and the largest age a reader met."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path = path
        self.docs = []
        self.ages = []          # (wall time, age of the snapshot then)
        self.errors = []
        self._done = threading.Event()

    def run(self):
        last = None
        while not self._done.wait(0.02):
            doc = support.snapshot_doc(self.path)
            now = time.time()
            if doc is None:
                continue
            self.ages.append((now, now - doc['time']))
            if doc['time'] == last:
                continue
            last = doc['time']
            self.docs.append((now, doc))
            errors = support.conservation_errors(doc)
            if errors and len(self.errors) < 10:
                self.errors.append('%.2f: %s' % (doc['time'], errors))

    def stop(self):
        self._done.set()
        self.join(5)

    def max_age(self, start, end):
        return max((age for when, age in self.ages if start <= when <= end),
                   default=None)

    def between(self, start, end):
        """Documents whose tick read its energy between start and end."""
        return [doc for _seen, doc in self.docs
                if start <= doc['time'] <= end]


class HangRig:
    """The agent over the module's guests and a SteadyRapl."""

    def __init__(self, tmp_path, guests):
        self.tmp_path = tmp_path
        self.victim, self.witness = guests
        self.rapl = support.SteadyRapl(tmp_path / 'powercap', dict(WATTS))
        self.agent = agent_helper.Agent(tmp_path, {
            'agent': {'interval': INTERVAL, 'inventory': 'libvirt',
                      'publishers': 'snapshot'},
            'snapshot': {'min_interval': 0, 'stale_after_min': 0},
            'energy': {'source': 'rapl', 'use_privsep': False,
                       'powercap_path': str(tmp_path / 'powercap')},
            'libvirt': {'connection_uri': 'qemu:///system',
                        'call_timeout': CALL_TIMEOUT,
                        'reconnect_min': 0.2, 'reconnect_max': 0.5},
            'attribution': {'idle_power': 'package-0:10,dram-0:1'},
        })
        self.baseline = self.measured0 = self.worker = None
        self.started = False

    @property
    def snapshot(self):
        return self.agent.snapshot_path

    def start(self):
        """Agent up on frozen counters (the baseline), then both guests
        charged and growing."""
        self.rapl.__enter__()
        self.started = True
        started = time.time()
        self.agent.start()
        uuids = {self.victim.uuid, self.witness.uuid}
        first = support.wait_snapshot(
            self.snapshot, newer_than=started, timeout=60, agent=self.agent,
            predicate=lambda d: uuids <= set(totals(d)))
        self.measured0, self.baseline = support.zones(first), \
            self.rapl.totals()
        self.rapl.resume()
        self.worker = support.worker_pid(self.agent)
        self.growing(first, uuids)

    def growing(self, doc, uuids, timeout=60):
        """The first snapshot after ``doc`` where every one of ``uuids``
        has more energy than in ``doc``."""
        before = totals(doc)
        return support.wait_snapshot(
            self.snapshot, newer_than=doc['time'], timeout=timeout,
            agent=self.agent, predicate=lambda d: all(
                totals(d).get(u, 0) > before.get(u, 0) for u in uuids))

    def exact(self):
        """{zone: measured - fixture} since the baseline, counters frozen
        for the last two ticks; and the last snapshot."""
        self.rapl.pause()
        try:
            doc = support.wait_ticks(self.snapshot, 2, agent=self.agent)
            measured = support.zones(doc)
            return doc, {support.ZONE_NAMES[z]:
                         measured[support.ZONE_NAMES[z]]
                         - self.measured0[support.ZONE_NAMES[z]]
                         - (self.rapl.total(z) - self.baseline[z])
                         for z in self.rapl.watts}
        finally:
            self.rapl.resume()

    def stall(self, pid):
        """SIGSTOP ``pid`` for STALL_S (the package power changes half
        way); (stopped at, resumed at, worker threads before, after)."""
        threads = support.status_number(self.worker, 'Threads')
        os.kill(pid, signal.SIGSTOP)
        stopped = time.time()
        try:
            time.sleep(STALL_S / 2)
            set_watts(self.rapl, 'intel-rapl:0', STALL_WATTS)
            time.sleep(STALL_S / 2)
            threads_after = support.status_number(self.worker, 'Threads')
        finally:
            os.kill(pid, signal.SIGCONT)
            set_watts(self.rapl, 'intel-rapl:0', WATTS['intel-rapl:0'])
        return stopped, time.time(), threads, threads_after

    def close(self):
        support.kill_quietly(self.agent)
        if self.started:
            self.rapl.__exit__()


@pytest.fixture
def rig(tmp_path, guests):
    rig = HangRig(tmp_path, guests)
    try:
        yield rig
    finally:
        rig.close()


def test_a_stopped_qemu_does_not_stop_the_metering(rig, record_property):
    """A QEMU stopped for STALL_S: the agent's first call to meet it is
    left behind; the next ones, on new connections, skip its monitor
    (NOWAIT) and every other instance goes on being metered."""
    rig.start()
    victim, witness = rig.victim.uuid, rig.witness.uuid
    watch = SnapshotWatch(rig.snapshot)
    watch.start()
    stopped, resumed, threads, threads_after = rig.stall(qemu_pid(rig.victim))
    stall_end = support.wait_snapshot(rig.snapshot, newer_than=resumed,
                                      agent=rig.agent)
    back = rig.growing(stall_end, {victim}, timeout=30)
    latency = back['time'] - resumed
    last, error = rig.exact()
    watch.stop()
    log = rig.agent.log_text()
    during = watch.between(stopped, resumed)
    late = [d for d in during if not d['inventory_ok']]
    # the stopped QEMU's first call is late; after it, each quarter of the
    # stall must meter the running guest
    quarters = [watch.between(stopped + q * STALL_S / 4,
                              stopped + (q + 1) * STALL_S / 4)
                for q in (1, 2, 3)]
    settled = [d for quarter in quarters for d in quarter]
    late_settled = [d for d in settled if not d['inventory_ok']]
    max_age = watch.max_age(stopped, resumed)
    stale_after = last['stale_after_s']
    witness_gains = [totals(q[-1])[witness] - totals(q[0])[witness]
                     if q else None for q in quarters]
    victim_gain = totals(settled[-1])[victim] - totals(settled[0])[victim] \
        if settled else None
    same_worker = support.worker_pid(rig.agent) == rig.worker
    support.summary(
        record_property, 'qemu-stopped',
        'QEMU of one guest SIGSTOPped %.0fs (package-0 %g W then %g W); '
        '%d snapshots during it, largest age a reader saw %.2fs (stale '
        'after %.1fs); snapshots without inventory: %d (the first call '
        'left behind), %d of %d in the last 3/4 of the stall (a busy '
        'libvirtd); '
        'the running guest gained %s uJ in each of those quarters, the '
        'stopped one %s uJ; after SIGCONT the stopped guest grew again '
        '%.2fs later; energy error vs fixture %s uJ; conservation errors '
        '%d; worker threads %d -> %d; same worker %s, tracebacks %d' % (
            resumed - stopped, WATTS['intel-rapl:0'], STALL_WATTS,
            len(during), max_age, stale_after, len(late), len(late_settled),
            len(settled), witness_gains, victim_gain, latency, error,
            len(watch.errors), threads, threads_after, same_worker,
            support.log_tracebacks(log)))
    assert max_age is not None and max_age < stale_after, max_age
    assert len(during) > STALL_S / INTERVAL / 2, len(during)
    # the late tick's snapshot is often replaced within milliseconds (the
    # next tick starts at once): the log says it happened
    assert 'did not answer within' in log, 'no call met the stopped QEMU'
    assert len(late_settled) <= max(2, len(settled) // 10), [
        d['time'] for d in late_settled]
    assert all(gain and gain > 0 for gain in witness_gains), witness_gains
    assert victim_gain == 0
    assert latency < 10, latency
    assert error == {name: 0 for name in error}, error
    assert not watch.errors, watch.errors
    assert not support.conservation_errors(last)
    assert same_worker and support.log_tracebacks(log) == 0, log[-3000:]


def test_a_stopped_libvirtd_does_not_stop_the_tick(rig, record_property):
    """libvirtd stopped for STALL_S: ticks go on (host zones metered,
    the energy unattributed), two calls at most are left behind, metering
    resumes by itself after SIGCONT; then SIGTERM during a second stall
    stops the agent gracefully."""
    rig.start()
    uuids = {rig.victim.uuid, rig.witness.uuid}
    pid = libvirtd.libvirtd_pid()
    assert pid, 'libvirtd is not running'
    watch = SnapshotWatch(rig.snapshot)
    watch.start()
    stopped, resumed, threads, threads_after = rig.stall(pid)
    back = support.wait_snapshot(
        rig.snapshot, newer_than=resumed, agent=rig.agent, timeout=30,
        predicate=lambda d: d['inventory_ok'])
    grown = rig.growing(back, uuids, timeout=30)
    latency = grown['time'] - resumed
    last, error = rig.exact()
    watch.stop()
    during = watch.between(stopped, resumed)
    # after the first call's deadline and one more tick's
    settled = watch.between(stopped + 2 * (CALL_TIMEOUT + INTERVAL) + 1,
                            resumed)
    max_age = watch.max_age(stopped, resumed)
    stale_after = last['stale_after_s']
    # (none at all when the tick hangs with libvirtd: then the age and
    # count checks below fail)
    first, end = (settled[0], settled[-1]) if settled else (last, last)
    measured = {z: support.zones(end)[z] - support.zones(first)[z]
                for z in support.zones(end)}
    to_residual = {z: unattributed(end)[z] - unattributed(first)[z]
                   for z in measured}

    # SIGTERM while libvirtd is stopped, into a tick waiting on libvirt:
    # the first tick after the stop starts within INTERVAL and waits
    # CALL_TIMEOUT, the next one as long on a new connection, so one
    # waits from at most INTERVAL to at least 2 x CALL_TIMEOUT after it.
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(INTERVAL + CALL_TIMEOUT / 2)
        began = time.monotonic()
        graceful = rig.agent.stop(timeout=20)
        stop_s = time.monotonic() - began
    finally:
        os.kill(pid, signal.SIGCONT)
    log = rig.agent.log_text()
    support.summary(
        record_property, 'libvirtd-stopped',
        'libvirtd SIGSTOPped %.0fs (package-0 %g W then %g W); %d '
        'snapshots during it, largest age a reader saw %.2fs (stale after '
        '%.1fs); once settled (%d snapshots) none had the inventory and '
        'instance counters stood still: %s; the stall\'s %s uJ all went '
        'unattributed: %s; worker threads %d -> %d; metering back %.2fs '
        'after SIGCONT; energy error vs fixture %s uJ; conservation errors '
        '%d; SIGTERM during a second stall: graceful %s in %.2fs; '
        'tracebacks %d' % (
            resumed - stopped, WATTS['intel-rapl:0'], STALL_WATTS,
            len(during), max_age, stale_after, len(settled),
            totals(first) == totals(end), measured, to_residual == measured,
            threads, threads_after, latency, error, len(watch.errors),
            graceful, stop_s, support.log_tracebacks(log)))
    assert max_age is not None and max_age < stale_after, max_age
    assert len(during) > STALL_S / INTERVAL / 2, len(during)
    assert not any(d['inventory_ok'] for d in settled)
    assert totals(first) == totals(end)
    assert all(v > 0 for v in measured.values()), measured
    assert to_residual == measured
    assert threads_after - threads <= MAX_EXTRA_THREADS, (threads,
                                                          threads_after)
    assert latency < 10, latency
    assert error == {name: 0 for name in error}, error
    assert not watch.errors, watch.errors
    assert not support.conservation_errors(last)
    assert graceful and stop_s < SIGTERM_WITHIN_S, stop_s
    assert support.log_tracebacks(log) == 0, log[-3000:]
