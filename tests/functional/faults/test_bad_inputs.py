"""Fault 5: a full state directory, unreadable and garbage sysfs files, a
missing or unreadable config file. (Garbage domain metadata needs a real
domain: it is in test_guest_faults.py.)

The real agent runs with the fixture RAPL tree, a fixture /proc holding
one busy QEMU process (``qemu`` inventory) and the share publisher on a
real tmpfs. Energy is compared exactly: SteadyRapl stands still while the
agent takes its baseline and again before the last two ticks, so every
zone's measured_uj must equal what the fixture counted, to the µJ: a
fault may delay counting, never lose any.
"""

import errno
import os
import subprocess
import time

import pytest

from tests.functional import helpers
from tests.functional.faults import support
from tests.functional.helpers import agent as agent_helper

INTERVAL = 0.2
WATTS = support.QEMU_RIG_WATTS
ZONE_NAMES = support.ZONE_NAMES


@pytest.fixture
def make_rig(tmp_path):
    helpers.require(os.geteuid() == 0, 'needs root: tmpfs mounts')
    with support.qemu_rigs(tmp_path, INTERVAL) as build:
        yield build


def fill(directory):
    """Write a filler file until the file system is full; its path."""
    path = os.path.join(directory, 'filler')
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for size in (65536, 4096, 1):
            while True:
                try:
                    os.write(fd, b'\0' * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    finally:
        os.close(fd)
    return path


def rig_on_tiny_state_dir(build, tmp_path):
    """A rig whose state_dir is a 256 KiB tmpfs the test can fill."""
    state = str(tmp_path / 'state-tmpfs')
    os.makedirs(state)
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=256k,mode=0700',
                    'scaph-faults-state', state], check=True)
    build.mounts.append(state)
    return build(state), state


def test_full_state_dir_pauses_publishing_and_loses_nothing(
        make_rig, tmp_path, record_property):
    rig, state = rig_on_tiny_state_dir(make_rig, tmp_path)
    agent = rig.start()
    worker = support.worker_pid(agent)
    with rig.watcher() as watcher:
        time.sleep(1.0)
        filler = fill(state)
        full_at = time.time()
        time.sleep(0.5)                 # a tick in flight may finish
        paused = support.snapshot_doc(agent.snapshot_path)
        share_paused = support.read_bytes(
            rig.share_file('intel-rapl:0', 'energy_uj'))
        time.sleep(1.5)
        still = support.snapshot_doc(agent.snapshot_path)
        share_still = support.read_bytes(
            rig.share_file('intel-rapl:0', 'energy_uj'))
        ledger_during = support.read_json(rig.ledger_path)
        log_during = agent.log_text()
        os.unlink(filler)
        freed_at = time.time()
        resumed = support.wait_snapshot(agent.snapshot_path,
                                        newer_than=still['time'],
                                        agent=agent)
        resume_s = resumed['time'] - freed_at
        time.sleep(1.0)
        doc, diff = rig.exact()
    log = agent.log_text()
    leftovers = sorted(os.listdir(state))
    same_worker = support.worker_pid(agent) == worker
    before_i = support.instance(paused, rig.uuid)
    after_i = support.instance(resumed, rig.uuid)
    gap = {k: support.zones(resumed)[k] - support.zones(still)[k]
           for k in (ZONE_NAMES[z] for z in WATTS)}
    agent.stop()
    support.summary(
        record_property, 'full-state-dir',
        '256 KiB tmpfs state_dir filled for %.1fs: snapshot and share '
        'frozen (%s), ledger on disk intact (%s), agent worker alive (%s); '
        'after freeing, publishing resumed %.2fs later, instance %d -> %d '
        'uJ, first tick after covers %s uJ of the outage; measured - '
        'fixture = %s uJ; %d reads, %d failures; state dir holds %s' % (
            freed_at - full_at, paused['time'] == still['time'] and
            share_paused == share_still, ledger_during is not None,
            same_worker, resume_s, before_i['total_uj'],
            after_i['total_uj'], gap, diff, sum(watcher.reads.values()),
            len(watcher.failures), leftovers))
    assert same_worker, 'the agent worker died and was respawned'
    assert not watcher.failures, watcher.failures[:10]
    assert paused['time'] == still['time'], 'published while not saved'
    assert share_paused == share_still
    assert ledger_during is not None
    assert log_during.count('Cannot save the ledger to %s'
                            % rig.ledger_path) == 1, log_during[-2000:]
    assert 'No space left on device' in log_during
    assert 'Ledger saved again' in log
    assert resume_s < 4 * INTERVAL + 1.0
    assert after_i['total_uj'] >= before_i['total_uj']
    assert all(v > 0 for v in gap.values()), gap
    assert diff == {'package-0': 0, 'dram-0': 0}, diff
    assert leftovers == ['ledger.json'], leftovers
    assert support.log_tracebacks(log) == 0, log[-3000:]


def test_kill_while_state_dir_full_never_lowers_a_published_counter(
        make_rig, tmp_path, record_property):
    """Counting went on in memory while the disk was full; the agent is
    killed before it could save. The restarted agent starts from the
    ledger on disk, which is ahead of nothing a reader was shown."""
    rig, state = rig_on_tiny_state_dir(make_rig, tmp_path)
    agent = rig.start()
    key = ('snapshot', rig.uuid, 'total_uj')
    share_key = ('energy', rig.share_file('intel-rapl:0', 'energy_uj'))
    with rig.watcher() as watcher:
        time.sleep(1.0)
        filler = fill(state)
        time.sleep(1.5)
        published = watcher.last(key)
        agent.kill()
        os.unlink(filler)
        started = time.time()
        agent.start()
        support.wait_snapshot(agent.snapshot_path, newer_than=started,
                              agent=agent, timeout=60)
        support.wait_snapshot(
            agent.snapshot_path, agent=agent, timeout=30,
            predicate=lambda d: (support.instance(d, rig.uuid) or {}).get(
                'total_uj', 0) > published)
        support.wait_ticks(agent.snapshot_path, 2, agent=agent)
    log = agent.log_text()
    agent.stop()
    support.summary(
        record_property, 'kill-while-full',
        'state dir full 1.5s, then SIGKILL, disk freed, restart: instance '
        'counter published before the kill %d uJ, after the restart %d uJ '
        '(%d distinct values, share energy_uj %d); %d reads, %d failures' % (
            published, watcher.last(key), watcher.distinct(key),
            watcher.distinct(share_key), sum(watcher.reads.values()),
            len(watcher.failures)))
    assert not watcher.failures, watcher.failures[:10]
    assert watcher.last(key) > published
    assert support.log_tracebacks(log) == 0, log[-3000:]


def zone_phase(rig, breaks):
    """Break zones ({fixture zone: how}) for a few ticks, then repair;
    (snapshot during, snapshot later during, snapshot after repair)."""
    agent = rig.agent
    for zone, how in breaks.items():
        rig.rapl.break_zone(zone, how)
    broke_at = time.time()
    time.sleep(3 * INTERVAL)
    during = support.snapshot_doc(agent.snapshot_path)
    time.sleep(5 * INTERVAL)
    later = support.snapshot_doc(agent.snapshot_path)
    for zone in breaks:
        rig.rapl.repair_zone(zone)
    after = support.wait_ticks(agent.snapshot_path, 2, agent=agent)
    return broke_at, during, later, after


def test_unreadable_and_garbage_sysfs_zones(make_rig, record_property):
    rig = make_rig()
    agent = rig.start()
    worker = support.worker_pid(agent)
    results = {}
    with rig.watcher() as watcher:
        for label, breaks in (
                ('package-0 garbage', {'intel-rapl:0': 'garbage'}),
                ('dram-0 directory', {'intel-rapl:0:0': 'directory'}),
                ('both: package-0 missing, dram-0 directory',
                 {'intel-rapl:0': 'missing',
                  'intel-rapl:0:0': 'directory'})):
            results[label] = zone_phase(rig, breaks)
            time.sleep(0.5)
        doc, diff = rig.exact()
    log = agent.log_text()
    same_worker = support.worker_pid(agent) == worker
    agent.stop()

    def grew(label, zone):
        _at, during, later, _after = results[label]
        return support.zones(later)[zone] - support.zones(during)[zone]

    _at, both_during, both_later, both_after = results[
        'both: package-0 missing, dram-0 directory']
    support.summary(
        record_property, 'sysfs',
        'package-0 garbage: package +%d, dram +%d uJ over 5 ticks; dram-0 '
        'a directory: package +%d, dram +%d; both unreadable: snapshot '
        'paused %s; after repair measured - fixture = %s uJ; worker alive '
        '%s; %d reads, %d failures' % (
            grew('package-0 garbage', 'package-0'),
            grew('package-0 garbage', 'dram-0'),
            grew('dram-0 directory', 'package-0'),
            grew('dram-0 directory', 'dram-0'),
            both_during['time'] == both_later['time'], diff, same_worker,
            sum(watcher.reads.values()), len(watcher.failures)))
    assert same_worker, 'the agent worker died and was respawned'
    assert not watcher.failures, watcher.failures[:10]
    # one zone broken: the other goes on, the broken one waits
    assert grew('package-0 garbage', 'package-0') == 0
    assert grew('package-0 garbage', 'dram-0') > 0
    assert grew('dram-0 directory', 'dram-0') == 0
    assert grew('dram-0 directory', 'package-0') > 0
    # nothing readable: the tick is skipped, nothing is published
    assert both_during['time'] == both_later['time']
    assert both_after['time'] > both_later['time']
    assert "Zone package-0 unreadable" in log
    assert "holds 'garbage'" in log
    assert 'Zone dram-0 unreadable' in log and 'Is a directory' in log
    assert 'Cannot read energy: no readable RAPL zone' in log
    assert 'Energy source readable again' in log
    # the energy counted while a zone could not be read is not lost
    assert diff == {'package-0': 0, 'dram-0': 0}, diff
    assert not support.conservation_errors(doc)
    assert support.log_tracebacks(log) == 0, log[-3000:]


def test_zone_failure_is_logged_each_time_it_starts_and_ends(
        make_rig, record_property):
    """doc/design.md: each condition is logged once when it starts and
    once when it ends. A zone that breaks, recovers and breaks again is
    two conditions."""
    rig = make_rig()
    agent = rig.start()
    for _ in range(2):
        zone_phase(rig, {'intel-rapl:0': 'garbage'})
    log = agent.log_text()
    agent.stop()
    lines = [line for line in log.splitlines() if 'package-0' in line]
    failed = [line for line in lines if 'unreadable' in line]
    recovered = [line for line in lines if 'unreadable' not in line
                 and 'again' in line]
    support.summary(
        record_property, 'sysfs-logging',
        'package-0 broke twice and recovered twice: %d failure lines, %d '
        'recovery lines in the log' % (len(failed), len(recovered)))
    assert len(failed) == 2 and len(recovered) == 2, (
        'expected 2 "Zone package-0 unreadable" and 2 recovery lines; '
        'the log says:\n%s' % '\n'.join(lines))


@pytest.mark.parametrize('fault', ['missing', 'directory', 'unparsable'])
def test_bad_config_file_exits_with_a_clear_message(tmp_path, fault,
                                                    record_property):
    path = str(tmp_path / 'scaph-openstack.conf')
    if fault == 'directory':
        os.mkdir(path)              # a real read error, even for root
    elif fault == 'unparsable':
        with open(path, 'w') as f:
            f.write('[agent\ninterval = 0.2\n')
    executable = agent_helper.venv_bin('scaph-openstack-agent')
    result = subprocess.run([executable, '--config-file', path],
                            capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    last = [line for line in output.splitlines() if line.strip()][-1:]
    support.summary(
        record_property, 'config-%s' % fault,
        'config file %s: exit status %d, file named: %s, traceback: %s, '
        'last line: %s' % (fault, result.returncode, path in output,
                           'Traceback' in output, last))
    assert result.returncode != 0
    assert path in output
    assert 'Traceback' not in output, (
        'a %s config file gives a Python traceback, not a clear message:\n'
        '%s' % (fault, output[-1500:]))


def test_default_source_without_rapl_refuses_to_start_in_one_line(tmp_path):
    """[energy] source defaults to rapl for services: on a host without
    RAPL the agent says so and how to fix it, and exits, instead of
    metering a model silently or being respawned forever."""
    path = str(tmp_path / 'scaph-openstack.conf')
    agent_helper.write_config(path, {
        'agent': {'state_dir': str(tmp_path / 'state')},
        'energy': {'powercap_path': str(tmp_path / 'no-powercap')}})
    executable = agent_helper.venv_bin('scaph-openstack-agent')
    result = subprocess.run([executable, '--config-file', path],
                            capture_output=True, text=True, timeout=60)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 2, output
    assert 'Traceback' not in output
    # (Python may print library deprecation warnings before it.)
    last = output.splitlines()[-1]
    assert last.startswith('scaph-openstack-agent: no usable energy'), output
    assert 'source = auto' in last and 'no-powercap' in last
