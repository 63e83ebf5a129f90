import json

import pytest

from scaph_openstack import snapshot
from tests.unit import test_share


def written(tmp_path, now=100.0):
    path = str(tmp_path / 'run' / 'snapshot.json')
    report = test_share.make_report(test_share.make_ledger(5_000_000, 7),
                                    now=now)
    snapshot.write(path, snapshot.build(report))
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
                                         'version': 1}).encode()])
def test_invalid(tmp_path, content):
    path = tmp_path / 's.json'
    path.write_bytes(content)
    with pytest.raises(snapshot.SnapshotInvalid):
        snapshot.read(str(path))
