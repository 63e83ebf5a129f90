import json
import os
import stat

import pytest

from scaph_openstack import fileutil
from scaph_openstack.inventory import base as inventory_base
from scaph_openstack import ledger as ledger_mod
from scaph_openstack.publishers import share as share_publisher
from scaph_openstack.share import layout
from scaph_openstack.share import tree
from tests.unit import fakes

UUID = '6f1c7a9e-2f4b-4f0e-9a55-3b5c1d2e8f01'


def read_like_scaphandre(base):
    """What scaphandre's powercap_rapl sensor does in --vm mode
    (doc/design.md, Facts 1): sockets from intel-rapl:N:M folders, or from
    intel-rapl:N with a readable name that is not psys; trimmed u64."""
    entries = os.listdir(base)
    sockets = {e.split(':')[1] for e in entries if e.count(':') == 2}
    for entry in entries:
        if entry.count(':') == 1 and entry.startswith('intel-rapl'):
            with open(os.path.join(base, entry, 'name')) as f:
                if f.read().strip() != 'psys':
                    sockets.add(entry.split(':')[1])
    assert sockets, 'scaphandre would panic: no socket found'
    readings = {}
    for socket in sockets:
        with open(os.path.join(base, 'intel-rapl:%s' % socket,
                               'energy_uj')) as f:
            readings['package'] = int(f.read().strip())
        dram = os.path.join(base, 'intel-rapl:%s:0' % socket)
        if os.path.isdir(dram):
            with open(os.path.join(dram, 'name')) as f:
                name = f.read().strip()
            with open(os.path.join(dram, 'energy_uj')) as f:
                readings[name] = int(f.read().strip())
    assert readings['package'] < 2 ** 64
    return readings


def make_report(ledger, now=100.0, **fields):
    return fakes.report_of(ledger, now, **fields)


def make_ledger(package_uj, dram_uj=None):
    ledger = ledger_mod.Ledger()
    identity = inventory_base.InstanceIdentity(uuid=UUID, name='i')
    record = ledger_mod.InstanceRecord(identity, {'package-0': package_uj})
    ledger.zones['package-0'] = ledger_mod.ZoneRecord('package-0',
                                                      'package', 0)
    if dram_uj is not None:
        record.energy_uj['dram-0'] = dram_uj
        ledger.zones['dram-0'] = ledger_mod.ZoneRecord('dram-0', 'dram', 0)
    ledger.instances[UUID] = record
    return ledger


def publisher(tmp_path, **kwargs):
    clock = fakes.Clock()
    pub = share_publisher.SharePublisher(
        str(tmp_path), clock=clock, **kwargs)
    pub.start()
    return pub, clock


def test_tree_matches_the_powercap_contract(tmp_path):
    pub, _ = publisher(tmp_path, min_interval=0, resolution_uj=1)
    pub.publish(make_report(make_ledger(1234, 56)))
    base = tmp_path / UUID
    assert read_like_scaphandre(base) == {'package': 1234, 'dram': 56}
    assert (base / 'intel-rapl:0' / 'energy_uj').read_bytes() == b'1234\n'
    assert (base / 'intel-rapl:0' / 'name').read_text() == 'package-0\n'
    assert int((base / 'intel-rapl:0:0' / 'max_energy_range_uj')
               .read_text()) == 2 ** 64 - 1
    meta = json.loads((base / layout.META_FILE).read_text())
    assert meta['source'] == 'simulated' and meta['uuid'] == UUID
    assert meta['updated'] == 100.0 and meta['update_interval_s'] == 2.0


def test_meta_says_epoch_and_how_settled_the_idle_estimate_is(tmp_path):
    ledger = make_ledger(1234, 56)
    ledger.epoch = 3
    ledger.zones['package-0'].idle_estimate_state = 'learned'
    ledger.zones['package-0'].idle_estimate_w = 17.25
    ledger.zones['dram-0'].idle_estimate_state = 'calibrating'
    ledger.zones['dram-0'].idle_estimate_w = 1.5
    pub, _ = publisher(tmp_path, min_interval=0, resolution_uj=1)
    pub.publish(make_report(ledger))
    meta = json.loads((tmp_path / UUID / layout.META_FILE).read_text())
    assert meta['epoch'] == 3
    assert meta['idle_estimate'] == {'state': 'calibrating', 'watts': 18.75}


def test_no_dram_zone_no_dram_dir(tmp_path):
    pub, _ = publisher(tmp_path, min_interval=0, resolution_uj=1)
    pub.publish(make_report(make_ledger(10)))
    assert sorted(os.listdir(tmp_path / UUID)) == [layout.PACKAGE_DIR,
                                                   layout.META_FILE]
    assert read_like_scaphandre(tmp_path / UUID) == {'package': 10}


def test_modes_are_read_only_and_no_temp_files_left(tmp_path):
    pub, _ = publisher(tmp_path, min_interval=0, resolution_uj=1)
    old = os.umask(0o077)
    try:
        pub.publish(make_report(make_ledger(1, 2)))
    finally:
        os.umask(old)
    for dirpath, _dirs, filenames in os.walk(tmp_path / UUID):
        assert stat.S_IMODE(os.stat(dirpath).st_mode) == 0o555
        for name in filenames:
            assert not name.startswith('.'), 'temp file left behind'
            mode = os.stat(os.path.join(dirpath, name)).st_mode
            assert stat.S_IMODE(mode) == 0o444


def test_quantised_and_rate_limited(tmp_path):
    pub, clock = publisher(tmp_path, min_interval=10, resolution_uj=1000)
    ledger = make_ledger(2999)
    pub.publish(make_report(ledger))
    path = tmp_path / UUID / 'intel-rapl:0' / 'energy_uj'
    assert path.read_text() == '2000\n'
    ledger.instances[UUID].energy_uj['package-0'] = 5500
    clock.now += 5
    pub.publish(make_report(ledger))
    assert path.read_text() == '2000\n'          # too soon
    clock.now += 5
    pub.publish(make_report(ledger))
    assert path.read_text() == '5000\n'


def test_symlink_planted_in_tree_is_never_followed(tmp_path):
    victim = tmp_path / 'victim'
    victim.write_text('precious\n')
    shares = tmp_path / 'shares'
    shares.mkdir()
    pub, _ = publisher(shares, min_interval=0, resolution_uj=1)
    pub.publish(make_report(make_ledger(1)))
    package = shares / UUID / 'intel-rapl:0'
    os.chmod(package, 0o755)
    os.unlink(package / 'energy_uj')
    os.symlink(victim, package / 'energy_uj')
    os.rename(package, shares / UUID / 'elsewhere')
    os.symlink(tmp_path, package)               # directory symlink too
    ledger = make_ledger(2)
    with pytest.raises(OSError):
        tree.ShareTree(str(shares)).write_instance(
            UUID, layout.zone_files(2))
    pub.publish(make_report(ledger))            # logged, not followed
    assert victim.read_text() == 'precious\n'
    assert not (tmp_path / 'energy_uj').exists()


def test_initial_files_never_lower_the_agents_counter(tmp_path):
    pub, _ = publisher(tmp_path, min_interval=0, resolution_uj=1)
    pub.publish(make_report(make_ledger(777)))
    tree.ShareTree(str(tmp_path)).write_instance(
        UUID, layout.initial_files(UUID), only_missing=True)
    assert (tmp_path / UUID / 'intel-rapl:0' / 'energy_uj').read_text() \
        == '777\n'


def test_initial_files_before_the_agent(tmp_path):
    tree.ShareTree(str(tmp_path)).write_instance(
        UUID, layout.initial_files(UUID, with_dram=True), only_missing=True)
    assert read_like_scaphandre(tmp_path / UUID) == {'package': 0, 'dram': 0}
    meta = json.loads((tmp_path / UUID / layout.META_FILE).read_text())
    assert meta['updated'] is None


@pytest.mark.parametrize('name', ['..', '.', '../x', 'a/b', '', '.hidden',
                                  'x' * 200, None, UUID + '\n', 'a\nb',
                                  'a\n', UUID + '\r', '\u0661\u0662'])
def test_path_like_names_are_refused(name):
    with pytest.raises(layout.LayoutError):
        layout.instance_dir_name(name)


def test_expired_and_orphan_directories_are_removed(tmp_path):
    """Orphans (no ledger entry) go after ``retention`` seconds of this
    agent's monotonic clock; the wall clock (an NTP step, a directory's
    mtime) decides nothing."""
    pub, clock = publisher(tmp_path, min_interval=0, resolution_uj=1,
                           retention_s=60)
    ledger = make_ledger(5)
    tree.ShareTree(str(tmp_path)).write_instance(
        'orphan', layout.initial_files('orphan'))
    pub.publish(make_report(ledger))          # orphan first seen now
    tree.ShareTree(str(tmp_path)).write_instance(
        'starting', layout.initial_files('starting'))
    old = os.stat(tmp_path / 'starting').st_mtime - 3600
    os.utime(tmp_path / 'starting', (old, old))  # an old mtime is no age
    pub.publish(make_report(ledger, now=1e10))  # the wall clock jumps
    assert sorted(os.listdir(tmp_path)) == [UUID, 'orphan', 'starting']
    clock.now += 120
    pub.publish(make_report(ledger))
    assert sorted(os.listdir(tmp_path)) == [UUID, 'starting']
    del ledger.instances[UUID]
    pub.publish(make_report(ledger, expired=(UUID,)))
    assert os.listdir(tmp_path) == ['starting']


def test_stopped_instances_get_their_tree_back_after_a_host_reboot(
        tmp_path):
    """The tmpfs is empty after a reboot: the agent rewrites the trees of
    every instance it knows, with their ledger values, so their guests can
    start (virtiofsd needs the directory) and their counters continue."""
    ledger = make_ledger(4242)
    ledger.instances[UUID].state = ledger_mod.STATE_SHUTOFF
    pub, clock = publisher(tmp_path, min_interval=0, resolution_uj=1)
    pub.publish(make_report(ledger))
    path = tmp_path / UUID / 'intel-rapl:0' / 'energy_uj'
    assert path.read_text() == '4242\n'
    os.chmod(path.parent, 0o755)
    os.unlink(path)
    clock.now += 100
    pub.publish(make_report(ledger))       # once per lifetime, not again
    assert not path.exists()


def test_only_moved_counters_are_rewritten(tmp_path, monkeypatch):
    pub, clock = publisher(tmp_path, min_interval=0, resolution_uj=1)
    ledger = make_ledger(10, 5)
    pub.publish(make_report(ledger))
    base = tmp_path / UUID

    def inodes():
        return {str(p.relative_to(base)): p.stat().st_ino
                for p in base.rglob('*') if p.is_file()}

    before = inodes()
    written = []
    real_update = fileutil.update_at

    def recording_update(dir_fd, name, data, **kwargs):
        written.append(name)
        return real_update(dir_fd, name, data, **kwargs)

    monkeypatch.setattr(fileutil, 'update_at', recording_update)
    ledger.instances[UUID].energy_uj['package-0'] = 11
    pub.publish(make_report(ledger))
    assert sorted(written) == ['energy_uj', layout.META_FILE]
    # Every file keeps its inode, the counter and the meta file too: a
    # guest's looked-up inodes stay valid (virtiofsd migrates by path).
    assert inodes() == before
    assert read_like_scaphandre(base) == {'package': 11, 'dram': 5}


def test_a_tmpfs_mounted_over_the_root_gets_whole_trees(tmp_path):
    root = tmp_path / 'root'
    root.mkdir()
    pub, _ = publisher(root, min_interval=0, resolution_uj=1)
    ledger = make_ledger(10)
    pub.publish(make_report(ledger))
    os.rename(root, tmp_path / 'old')   # what a mount over root looks like
    root.mkdir()
    pub.publish(make_report(ledger))
    assert read_like_scaphandre(root / UUID) == {'package': 10}
