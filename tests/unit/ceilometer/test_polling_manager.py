"""Our plugins driven by Ceilometer's own polling manager, in-process.

The AgentManager loads them from the entry points, the PollingTask runs
a cycle exactly as ceilometer-polling does (discovery cache, shared
``cache`` dict, sample timestamps), without its process or exporter.
"""

import time

from ceilometer.polling import manager
import pytest

from tests.unit.ceilometer import snapshots

METERS = ('energy.instance', 'energy.instance.dynamic',
          'energy.instance.idle', 'power.instance', 'energy.host.zone',
          'energy.host.unattributed')


@pytest.fixture
def polling_task(conf, tmp_path, monkeypatch):
    polling_yaml = tmp_path / 'polling.yaml'
    polling_yaml.write_text(
        'sources:\n  - name: scaph\n    interval: 60\n    meters:\n' +
        ''.join('      - %s\n' % m for m in METERS))
    conf.set_override('cfg_file', str(polling_yaml), group='polling')
    conf.set_override('enable_notifications', False, group='polling')
    try:
        mgr = manager.AgentManager(0, conf, namespaces=['compute'])
        mgr.polling_manager = manager.PollingManager(conf)
        (task,) = mgr.setup_polling_tasks().values()
        sent = []
        monkeypatch.setattr(task, '_send_notification', sent.extend)
        task.sent = sent
        yield task
    finally:
        conf.clear_override('cfg_file', group='polling')
        conf.clear_override('enable_notifications', group='polling')


def test_a_polling_cycle(conf, polling_task, reads):
    snapshots.write(conf.scaphandre.snapshot_path)
    polling_task.poll_and_notify()
    got = {(s['counter_name'], s['resource_id']): s
           for s in polling_task.sent}
    a, b = snapshots.UUID_A, snapshots.UUID_B
    assert set(got) == {
        ('energy.instance', a), ('energy.instance', b),
        ('energy.instance.dynamic', a), ('energy.instance.dynamic', b),
        ('energy.instance.idle', a), ('energy.instance.idle', b),
        # no power.instance: a first poll has no period
        ('energy.host.zone', 'compute-1-package-0'),
        ('energy.host.zone', 'compute-1-dram-0'),
        ('energy.host.unattributed', 'compute-1-package-0'),
        ('energy.host.unattributed', 'compute-1-dram-0')}
    energy = got[('energy.instance', a)]
    assert energy['counter_volume'] == 34.0
    assert energy['counter_type'] == 'cumulative'
    assert energy['project_id'] == snapshots.PROJECT
    assert energy['user_id'] == snapshots.USER
    assert energy['timestamp']  # set by the manager at polling time
    # dynamic + idle == energy.instance: 27 + 7 J for web, 11.5 + 3.5 J
    # for db
    assert {(name, uuid): got[(name, uuid)]['counter_volume']
            for name in ('energy.instance', 'energy.instance.dynamic',
                         'energy.instance.idle') for uuid in (a, b)} == {
        ('energy.instance', a): 34.0, ('energy.instance', b): 15.0,
        ('energy.instance.dynamic', a): 27.0,
        ('energy.instance.dynamic', b): 11.5,
        ('energy.instance.idle', a): 7.0, ('energy.instance.idle', b): 3.5}
    for name in ('energy.instance.dynamic', 'energy.instance.idle'):
        part = got[(name, a)]
        assert (part['counter_type'], part['counter_unit']) == (
            'cumulative', 'J')
        assert (part['project_id'], part['user_id']) == (
            snapshots.PROJECT, snapshots.USER)
        assert part['resource_metadata'] == energy['resource_metadata']
    assert energy['resource_metadata']['idle_estimate'] == 'learned'
    assert energy['resource_metadata']['idle_estimate_w'] == 14.75
    assert energy['resource_metadata']['epoch'] == snapshots.EPOCH
    # One read for the pollsters (through the cache), at most one more by
    # the discovery when a host pollster happened to run first.
    assert 1 <= len(reads) <= 2


def test_power_over_the_polling_period(conf, polling_task):
    # The manager polls the pollster objects it loaded once: the second
    # cycle has the average power since the first one's snapshot.
    path = conf.scaphandre.snapshot_path
    now = time.time()
    snapshots.write(path, at=now - 20, scale=1)
    polling_task.poll_and_notify()
    assert not [s for s in polling_task.sent
                if s['counter_name'] == 'power.instance']
    snapshots.write(path, at=now, scale=11)
    polling_task.poll_and_notify()
    power = {s['resource_id']: s for s in polling_task.sent
             if s['counter_name'] == 'power.instance'}
    a, b = snapshots.UUID_A, snapshots.UUID_B
    assert set(power) == {a, b}
    # 10 x 34 J and 10 x 15 J more, in 20 s
    assert power[a]['counter_volume'] == pytest.approx(17.0)
    assert power[b]['counter_volume'] == pytest.approx(7.5)
    assert (power[a]['counter_type'], power[a]['counter_unit']) == (
        'gauge', 'W')
    assert power[a]['resource_metadata']['period_s'] == 20.0
    assert power[a]['project_id'] == snapshots.PROJECT
    # And nothing on a third cycle reading the same snapshot.
    before = len(polling_task.sent)
    polling_task.poll_and_notify()
    assert not [s for s in polling_task.sent[before:]
                if s['counter_name'] == 'power.instance']


def test_stale_snapshot_gives_nothing(conf, polling_task):
    snapshots.write(conf.scaphandre.snapshot_path, age=3600)
    polling_task.poll_and_notify()
    polling_task.poll_and_notify()
    assert polling_task.sent == []
