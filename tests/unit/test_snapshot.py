import grp
import json
import os
import stat

import pytest

from scaph_openstack.publishers import snapshot as snapshot_publisher
from scaph_openstack import snapshot
from tests.unit import test_share


def written(tmp_path, now=100.0):
    path = str(tmp_path / 'run' / 'snapshot.json')
    report = test_share.make_report(test_share.make_ledger(5_000_000, 7),
                                    now=now)
    snapshot_publisher.write(path, snapshot_publisher.build(report))
    return path


def test_roundtrip(tmp_path):
    snap = snapshot.read(written(tmp_path), now=101.0)
    assert snap.version == snapshot.VERSION
    assert snap.source == 'simulated'
    (instance,) = snap.instances
    assert instance['uuid'] == test_share.UUID
    assert instance['package_uj'] == 5_000_000
    assert instance['total_uj'] == 5_000_007
    assert snap.host_totals['energy_uj'] == 0


def test_stale_is_refused(tmp_path):
    path = written(tmp_path)
    with pytest.raises(snapshot.SnapshotStale) as err:
        snapshot.read(path, now=107.0)
    assert err.value.age_s == pytest.approx(7.0)
    assert snapshot.read(path, now=107.0, check_stale=False)


def test_missing_says_what_to_check(tmp_path):
    with pytest.raises(snapshot.SnapshotMissing, match='agent running'):
        snapshot.read(str(tmp_path / 'nothing.json'))


@pytest.mark.parametrize('content', [b'', b'[]', b'{"format": "other"}',
                                     json.dumps({
                                         'format': snapshot.FORMAT,
                                         'version': 2}).encode(),
                                     json.dumps({
                                         'format': snapshot.FORMAT,
                                         'version': 1}).encode(),
                                     json.dumps({
                                         'format': snapshot.FORMAT,
                                         'version': 1, 'time': 'now',
                                         'stale_after_s': 30,
                                         'instances': [], 'zones': [],
                                         'source': 'rapl'}).encode()])
def test_invalid(tmp_path, content):
    path = tmp_path / 's.json'
    path.write_bytes(content)
    with pytest.raises(snapshot.SnapshotInvalid):
        snapshot.read(str(path))
    with pytest.raises(snapshot.SnapshotInvalid):
        snapshot.read(str(path), check_stale=False)


def test_idle_and_dynamic_parts_epoch_and_idle_estimate(tmp_path):
    ledger = test_share.make_ledger(5_000_000, 700)
    record = ledger.instances[test_share.UUID]
    record.idle_uj = {'package-0': 1_250_000, 'dram-0': 100}
    record.placement = 'socket'
    ledger.epoch, ledger.epoch_started = 2, 50.0
    zone = ledger.zones['package-0']
    zone.idle_estimate_state, zone.idle_estimate_w = 'learned', 17.3
    zone.scope = 'socket'
    doc = snapshot_publisher.build(test_share.make_report(ledger))
    (instance,) = doc['instances']
    assert instance['total_uj'] == 5_000_700
    assert (instance['dynamic_uj'], instance['idle_uj']) == (3_750_600,
                                                             1_250_100)
    assert instance['dynamic_energy_uj'] == {'dram-0': 600,
                                             'package-0': 3_750_000}
    assert instance['idle_energy_uj'] == {'dram-0': 100,
                                          'package-0': 1_250_000}
    assert instance['placement'] == 'socket'
    assert (doc['epoch'], doc['epoch_started']) == (2, 50.0)
    zones = {z['name']: z for z in doc['zones']}
    assert zones['package-0']['idle_estimate'] == {'state': 'learned',
                                                   'watts': 17.3}
    assert zones['package-0']['scope'] == 'socket'
    assert zones['dram-0']['idle_estimate'] == {'state': None, 'watts': 0.0}
    assert zones['package-0']['source'] == 'simulated'


def other_group():
    """A group the test process is not in by default (not its gid)."""
    for group in grp.getgrall():
        if group.gr_gid != os.getgid():
            return group
    pytest.skip('this host has a single group')


def test_snapshot_is_0640_and_readable_by_the_configured_group(tmp_path):
    """It holds tenant names and ids: the Ceilometer group may read it,
    other users may not, whatever the umask."""
    group = other_group()
    path = str(tmp_path / 'snapshot.json')
    pub = snapshot_publisher.SnapshotPublisher(path, group=group.gr_name)
    old_umask = os.umask(0)
    try:
        pub.publish(test_share.make_report(test_share.make_ledger(5)))
    finally:
        os.umask(old_umask)
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_gid == group.gr_gid


def test_an_unknown_group_is_refused_with_the_fix(tmp_path):
    with pytest.raises(snapshot_publisher.SnapshotGroupError,
                       match='ceilometer'):
        snapshot_publisher.SnapshotPublisher(str(tmp_path / 's.json'),
                                             group='no-such-group-x')


def test_the_reader_imports_nothing_of_the_agent():
    """Readers (Ceilometer, the CLI) depend on the document only."""
    with open(snapshot.__file__) as f:
        source = f.read()
    assert 'import' in source
    for module in ('ledger', 'report', 'fileutil', 'agent', 'publishers'):
        assert 'import %s' % module not in source
        assert 'from scaph_openstack' not in source
