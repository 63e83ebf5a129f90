"""Fault 1, the narrow window: the agent stopped while a file is being
replaced.

Every file the agent writes (ledger, snapshot, share files) is written
to a temporary '.<name>.<unique>.tmp' next to it and renamed into place.
The random kills of test_guest_faults land inside that window only now
and then (a temporary lives some tens of µs), so here it is aimed at:
with a few hundred more (idle) instances the share publisher writes that
many files a tick, and the agent is stopped while it does.

A temporary left behind is, in a share, a stray (possibly partial) file
the guest sees; in the state dir, one more file per crash, forever.
"""

import os
import random
import signal
import time
import uuid as uuidlib

import pytest

from tests.functional import helpers
from tests.functional.faults import support

INTERVAL = 0.2
GRACEFUL_STOPS = 10


@pytest.fixture
def make_rig(tmp_path):
    helpers.require(os.geteuid() == 0, 'needs root: tmpfs mounts')
    with support.qemu_rigs(tmp_path, INTERVAL) as build:
        yield build


def loaded_rig(build, idle):
    rig = build()
    rig.sections['share']['tmpfs_size'] = '32m'     # 28 KiB an instance
    for n in range(idle):
        rig.proc.add(20000 + n, 'idle-%d' % n, str(uuidlib.uuid4()))
    return rig


def stop_inside_a_write(rig, rng, timeout=60):
    """SIGSTOP the agent at random moments until a temporary file exists
    while its worker is stopped, then SIGKILL it there.
    (attempts, the temporaries)."""
    agent = rig.agent
    worker = support.worker_pid(agent)
    deadline = time.monotonic() + timeout
    attempts = 0
    while time.monotonic() < deadline:
        time.sleep(rng.uniform(0, INTERVAL / 4))
        attempts += 1
        support.signal_group(agent.proc, signal.SIGSTOP)
        support.wait_until(lambda: support.process_state(worker) in
                           ('T', 't', None), 5, step=0.0005,
                           what='the worker to stop')
        found = rig.temporaries()
        if found:
            agent.kill()
            return attempts, found
        support.signal_group(agent.proc, signal.SIGCONT)
    raise AssertionError('no write caught in %ss (%d attempts)'
                         % (timeout, attempts))


def snapshot_changed(path, timeout=10):
    """Spin until the snapshot file is replaced (a tick is publishing)."""
    last = os.stat(path).st_mtime_ns
    deadline = time.monotonic() + timeout
    while os.stat(path).st_mtime_ns == last:
        if time.monotonic() > deadline:
            raise AssertionError('no tick published in %ss' % timeout)


def rel(rig, paths):
    return [os.path.relpath(p, str(rig.tmp_path)) for p in paths]


def test_kill_inside_a_write_leaves_no_temporary_file(make_rig,
                                                      record_property):
    """SIGKILL with a temporary in place; the restarted agent must
    remove it."""
    seed = random.randrange(2 ** 32)
    rig = loaded_rig(make_rig, 100)
    agent = rig.start()
    with rig.watcher() as watcher:
        attempts, caught = stop_inside_a_write(rig, random.Random(seed))
        started = time.time()
        agent.start()
        support.wait_snapshot(agent.snapshot_path, newer_than=started,
                              agent=agent, timeout=60)
        support.wait_ticks(agent.snapshot_path, 3, agent=agent)
        left = [path for path in caught if os.path.exists(path)]
    agent.stop()
    support.summary(
        record_property, 'kill-in-write',
        'SIGKILL while %s existed (after %d SIGSTOPs, seed %d); 3 ticks '
        'after the restart, still there: %s; reads %s, failures %d' % (
            rel(rig, caught), attempts, seed, rel(rig, left),
            watcher.reads, len(watcher.failures)))
    assert not watcher.failures, watcher.failures[:10]
    assert not left, (
        'kill -9 inside replace_at() left %s behind; the restarted agent '
        'does not remove stale temporaries' % left)


def test_graceful_stop_leaves_no_temporary_file(make_rig, record_property):
    """SIGTERM (what systemctl stop sends) right as a tick starts
    publishing, GRACEFUL_STOPS times: each stop must let the write it
    interrupts finish or undo it."""
    seed = random.randrange(2 ** 32)
    rng = random.Random(seed)
    rig = loaded_rig(make_rig, 300)
    agent = rig.start()
    graceful, left = [], []
    for _ in range(GRACEFUL_STOPS):
        if not agent.running:
            started = time.time()
            agent.start()
            support.wait_snapshot(agent.snapshot_path, newer_than=started,
                                  agent=agent, timeout=60)
        before = set(rig.temporaries())
        snapshot_changed(agent.snapshot_path)   # the share comes next
        time.sleep(rng.uniform(0, 0.01))
        graceful.append(agent.stop())
        left.extend(sorted(set(rig.temporaries()) - before))
    support.summary(
        record_property, 'graceful-stop',
        '%d SIGTERMs as a tick published (300 idle instances, seed %d): '
        '%d graceful; temporaries left behind: %d %s' % (
            len(graceful), seed, sum(graceful), len(left),
            rel(rig, left)[:3]))
    assert all(graceful)
    assert not left, (
        'a graceful stop left %d temporaries behind: the worker exits '
        'while a tick is still writing' % len(left))
