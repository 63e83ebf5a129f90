"""Fault 4: 1000 instance create/delete cycles, nothing leaks.

Real domains at that count would take hours under TCG on two cores (a
guest boots in tens of seconds), so the instances come from the real
agent's ``qemu`` inventory over a fixture /proc: each instance is a
process directory (cmdline ``qemu-system-x86_64 -name guest=vmN -uuid
UUID``, a /proc/PID/stat) that appears, is seen by a tick (so it gets a
ledger entry and a share directory on the real tmpfs), and vanishes.
Everything downstream of the inventory is the production path: ledger,
retention, share publisher with its mounts, snapshot.

With ``[agent] retention = 1``: every snapshot must hold no instance gone
for longer than the retention (the ledger expires at the tick that
writes it), and at the end the ledger, the snapshot and the share
work_dir are empty and exactly the two share mounts exist.
"""

import os
import threading
import time
import uuid as uuidlib

import pytest

from tests.functional import helpers
from tests.functional.faults import support
from tests.functional.helpers import agent as agent_helper

CYCLES = 1000
PER_BATCH = 40
RETENTION_S = 1
INTERVAL = 0.2


class RetentionChecker(threading.Thread):
    """Reads every snapshot it can; records the oldest departed instance
    each one still lists and the largest instance count."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path = path
        self.stop = threading.Event()
        self.docs = 0
        self.oldest_departed = 0.0
        self.max_instances = 0
        self.running_seen = set()
        self.errors = []

    def run(self):
        last = None
        while not self.stop.wait(0.005):
            doc = support.snapshot_doc(self.path)
            if doc is None or doc['time'] == last:
                continue
            last = doc['time']
            self.docs += 1
            self.max_instances = max(self.max_instances,
                                     len(doc['instances']))
            for item in doc['instances']:
                if item['running']:
                    self.running_seen.add(item['uuid'])
                    continue
                age = doc['time'] - item['last_seen']
                self.oldest_departed = max(self.oldest_departed, age)
                if age > RETENTION_S and len(self.errors) < 20:
                    self.errors.append('%s listed %.2fs after it left'
                                       % (item['uuid'], age))


def used_kib(path):
    stat = os.statvfs(path)
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize // 1024


@pytest.fixture
def churn_rig(tmp_path):
    helpers.require(os.geteuid() == 0, 'needs root: the share tmpfs mounts')
    work, export = str(tmp_path / 'work'), str(tmp_path / 'export')
    sections = {
        'agent': {'interval': INTERVAL, 'publishers': 'snapshot,share',
                  'inventory': 'qemu', 'retention': RETENTION_S},
        'qemu': {'proc_path': str(tmp_path / 'proc')},
        'energy': {'source': 'rapl', 'use_privsep': False,
                   'powercap_path': str(tmp_path / 'powercap')},
        'share': {'work_dir': work, 'export_dir': export,
                  'manage_mounts': True, 'tmpfs_size': '32m',
                  'min_interval': 0, 'resolution_uj': 1},
    }
    agent = None
    try:
        with support.SteadyRapl(tmp_path / 'powercap', paused=False), \
                support.FakeProc(tmp_path / 'proc') as proc:
            agent = agent_helper.Agent(tmp_path, sections)
            yield agent, proc, work, export
    finally:
        support.kill_quietly(agent)
        support.umount(export, work)


def test_thousand_create_delete_cycles_leak_nothing(churn_rig, tmp_path,
                                                    record_property):
    agent, proc, work, export = churn_rig
    started = time.time()
    agent.start()
    support.wait_snapshot(agent.snapshot_path, newer_than=started,
                          timeout=60, agent=agent)
    worker = support.worker_pid(agent)
    rss_start = support.status_number(worker, 'VmRSS')
    checker = RetentionChecker(agent.snapshot_path)
    checker.start()
    created, previous, pid, per_dir = [], [], 1000, 0
    began = time.monotonic()
    try:
        while len(created) < CYCLES:
            batch = []
            for _ in range(min(PER_BATCH, CYCLES - len(created))):
                pid += 1
                uuid = str(uuidlib.uuid4())
                proc.add(pid, 'vm%d' % pid, uuid, busy=pid % 2 == 0)
                batch.append((pid, uuid))
            wanted = {uuid for _pid, uuid in batch}
            support.wait_snapshot(
                agent.snapshot_path, agent=agent, timeout=30, step=0.01,
                predicate=lambda d, w=wanted: w <= {
                    i['uuid'] for i in d['instances'] if i['running']})
            # the share publisher runs after the snapshot one
            support.wait_until(lambda w=wanted: w <= set(os.listdir(work)),
                               timeout=10, what='share directories')
            dirs = len(os.listdir(work))
            per_dir = max(per_dir, used_kib(work) / dirs)
            for old_pid, _uuid in previous:
                proc.remove(old_pid)
            previous = batch
            created.extend(batch)
        for old_pid, _uuid in previous:
            proc.remove(old_pid)
        churn_s = time.monotonic() - began
        # Everything has left: within the retention plus a tick or two
        # the ledger must be empty, then check what is left on the host.
        doc = support.wait_snapshot(
            agent.snapshot_path, agent=agent, timeout=RETENTION_S + 10,
            predicate=lambda d: not d['instances'])
        drained_s = time.monotonic() - began - churn_s
        support.wait_ticks(agent.snapshot_path, 2, agent=agent)
    finally:
        checker.stop.set()
        checker.join(5)
    rss_end = support.status_number(worker, 'VmRSS')
    same_worker = support.worker_pid(agent) == worker
    ledger = support.read_json(os.path.join(
        agent.sections['agent']['state_dir'], 'ledger.json'))
    leftovers = sorted(os.listdir(work))
    mounts = support.mounts_under(str(tmp_path))
    used_end = used_kib(work)
    log = agent.log_text()
    agent.stop()
    support.summary(
        record_property, 'churn',
        '%d instances created and deleted in %.1fs (%d per batch, '
        'retention %ds, interval %.1fs); %d seen running, %d snapshots '
        'checked, departed instances listed at most %.2fs, at most %d '
        'ledger entries at once; drained %.1fs after the last delete; at '
        'the end: %d ledger entries, %d snapshot instances, %d entries in '
        'work_dir (%d KiB used), %d mounts under the test dir; agent RSS '
        '%d -> %d KiB; the tmpfs held %.1f KiB per instance directory' % (
            len(created), churn_s, PER_BATCH, RETENTION_S, INTERVAL,
            len(checker.running_seen & {u for _p, u in created}),
            checker.docs, checker.oldest_departed, checker.max_instances,
            drained_s, len(ledger['instances']), len(doc['instances']),
            len(leftovers), used_end, len(mounts), rss_start, rss_end,
            per_dir))
    assert same_worker, 'the agent worker was respawned'
    assert len(created) == CYCLES
    assert {u for _p, u in created} <= checker.running_seen
    assert not checker.errors, checker.errors
    assert ledger['instances'] == []
    assert leftovers == [], leftovers[:20]
    assert sorted((p, t) for p, t, _o in mounts) == sorted(
        [(work, 'tmpfs'), (export, 'tmpfs')]), mounts
    assert 'ro' in dict((p, o) for p, _t, o in mounts)[export].split(',')
    assert 'Cannot update the share' not in log
    assert support.log_tracebacks(log) == 0, log[-3000:]
