"""One snapshot read per polling cycle, and staleness logged per change."""

from concurrent import futures
import logging
import os
import time

from ceilometer.compute import discovery as compute_discovery

from scaph_openstack.ceilometer import discovery
from scaph_openstack import snapshot
from tests.unit.ceilometer import snapshots
from tests.unit.ceilometer import test_pollsters

ALL = test_pollsters.ALL_POLLSTERS
LOGGER = 'scaph_openstack.ceilometer'


# Samples of one cycle of new pollsters on a snapshot: 3 energy meters and
# carbon per instance (power.instance has none on a first poll), 2 host
# meters per zone.
FIRST_CYCLE = 4 * 2 + 2 * 2


def one_cycle(conf, resources, cache=None, classes=ALL):
    """What a Ceilometer polling cycle does: every pollster, one cache.
    New pollster objects: a first poll for each."""
    cache = {} if cache is None else cache
    return [s for cls in classes
            for s in cls(conf).get_samples(None, cache, resources)]


def warnings_of(caplog):
    return [r for r in caplog.records
            if r.name.startswith(LOGGER) and r.levelno == logging.WARNING]


def test_one_read_per_cycle_for_all_pollsters(conf, reads):
    snapshots.write(conf.scaphandre.snapshot_path)
    # Resources as Ceilometer's local_instances gives them: nothing to reuse.
    resources = [test_pollsters.nova_like_server(snapshots.UUID_A),
                 test_pollsters.nova_like_server(snapshots.UUID_B)]
    samples = one_cycle(conf, resources)
    assert len(samples) == FIRST_CYCLE
    assert len(reads) == 1
    one_cycle(conf, resources)
    assert len(reads) == 2  # a new cycle reads a new snapshot


def test_discovery_read_is_reused_by_pollsters(conf, reads):
    snapshots.write(conf.scaphandre.snapshot_path)
    resources = discovery.SnapshotInstanceDiscovery(conf).discover(None)
    assert len(reads) == 1
    samples = one_cycle(conf, resources)
    assert len(samples) == FIRST_CYCLE
    assert len(reads) == 1


def test_missing_snapshot_is_read_once_per_cycle(conf, reads):
    resources = [compute_discovery.NovaLikeServer(id=snapshots.UUID_A)]
    assert one_cycle(conf, resources) == []
    assert len(reads) == 1


def test_parallel_pollsters_share_one_read(conf, monkeypatch):
    # [polling] threads_to_process_pollsters > 1 runs pollsters of one
    # cycle in threads: a slow read must not be repeated by the others.
    snapshots.write(conf.scaphandre.snapshot_path)
    calls = []
    real = snapshot.read

    def slow(*args, **kwargs):
        calls.append(args)
        time.sleep(0.05)
        return real(*args, **kwargs)

    monkeypatch.setattr(snapshot, 'read', slow)
    cache = {}
    resources = [test_pollsters.nova_like_server(snapshots.UUID_A)]
    with futures.ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(
            lambda cls: cls(conf).get_samples(None, cache, resources),
            ALL * 2))
    # 3 energy meters and carbon x 1 instance, 2 host meters x 2 zones,
    # twice
    assert sum(len(r) for r in results) == 2 * (4 * 1 + 2 * 2)
    assert len(calls) == 1


def test_stale_values_are_never_reported(conf):
    path = conf.scaphandre.snapshot_path
    snapshots.write(path)
    resources = [test_pollsters.nova_like_server(snapshots.UUID_A)]
    assert one_cycle(conf, resources)
    snapshots.write(path, age=60)
    assert one_cycle(conf, resources) == []
    assert discovery.SnapshotInstanceDiscovery(conf).discover(None) == []
    os.unlink(path)
    assert one_cycle(conf, resources) == []


def test_one_warning_per_state_change(conf, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    path = conf.scaphandre.snapshot_path
    disco = discovery.SnapshotInstanceDiscovery(conf)

    def cycles(count):
        produced = 0
        for _ in range(count):
            produced += len(one_cycle(conf, disco.discover(None)))
        return produced

    snapshots.write(path)
    assert cycles(3) == 3 * FIRST_CYCLE
    assert warnings_of(caplog) == []

    snapshots.write(path, age=60)           # the agent stopped
    assert cycles(5) == 0
    (stale,) = warnings_of(caplog)
    assert 'stale' in stale.getMessage()
    assert stale.exc_info is None

    caplog.clear()
    snapshots.write(path)                   # the agent is back
    assert cycles(3) == 3 * FIRST_CYCLE
    assert warnings_of(caplog) == []
    assert 'fresh again' in caplog.text

    caplog.clear()
    os.unlink(path)                         # and gone for good
    assert cycles(4) == 0
    (missing,) = warnings_of(caplog)
    assert 'no snapshot' in missing.getMessage()

    caplog.clear()
    with open(path, 'w') as f:              # something else wrote there
        f.write('not json')
    assert cycles(2) == 0
    (invalid,) = warnings_of(caplog)
    assert 'cannot read snapshot' in invalid.getMessage()


def test_first_fresh_read_is_not_a_warning(conf, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    snapshots.write(conf.scaphandre.snapshot_path)
    one_cycle(conf, [conf.host], classes=test_pollsters.HOST_POLLSTERS)
    assert warnings_of(caplog) == []
    assert 'Reading scaph-openstack energy from' in caplog.text
