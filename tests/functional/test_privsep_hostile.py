"""The real privsep daemon (forked as root, its capabilities only) called
with hostile arguments and started with hostile configurations: nothing
outside the configured trees is touched, no mount appears but the two
the configuration names.

What is compared: every file, directory and symlink under the test's
directory (mode, owner, content or link target), outside the share
tmpfs; the secret's content; /proc/self/mountinfo before and after.
"""

import os
import subprocess

import pytest

from scaph_openstack import privsep
from scaph_openstack.privsep import fs
from scaph_openstack.privsep import mounts
from scaph_openstack.privsep import rapl
from tests.functional import helpers
from tests.functional.helpers import privsep_daemon
from tests.unit import test_privsep_hostile as hostile

UUID = hostile.UUID
READS = 1000


def others(point, mine):
    """Mount points of other tests that may run on the machine meanwhile
    (their pytest directories, their /run/scaph-test-* mounts)."""
    return not point.startswith(mine) and (
        point.startswith('/tmp/pytest-of-') or
        point.startswith('/run/scaph-test'))


def mount_table(mine):
    """(mount point, fs type, options, root) of every mount but other
    tests'."""
    table = []
    with open('/proc/self/mountinfo') as f:
        for line in f:
            left, _, right = line.partition(' - ')
            fields = left.split()
            if not others(fields[4], mine):
                table.append((fields[4], right.split()[0], fields[5],
                              fields[3]))
    return sorted(table)


def unmount_all(*paths):
    for path in paths:
        for _attempt in range(5):
            if path not in mounts._mountinfo():
                break
            subprocess.run(['umount', '--', path], capture_output=True)
        else:
            subprocess.run(['umount', '-l', '--', path], capture_output=True)
        assert path not in mounts._mountinfo(), '%s still mounted' % path


class Host:
    """A test directory standing for the host: the configured trees, a
    victim directory with a root-only secret, a fixture powercap tree."""

    def __init__(self, tmp_path):
        helpers.require(os.geteuid() == 0, 'mounting needs root')
        self.root = tmp_path
        self.work = str(tmp_path / 'state' / 'shares')
        self.export = str(tmp_path / 'libvirt' / 'scaphandre')
        self.victim = tmp_path / 'victim'
        self.victim.mkdir(mode=0o700)
        (self.victim / 'secret').write_text(hostile.SECRET)
        (self.victim / 'secret').chmod(0o400)
        self.powercap = tmp_path / 'powercap'
        (self.powercap / 'intel-rapl:0').mkdir(parents=True)
        (self.powercap / 'intel-rapl:0' / 'energy_uj').write_text(
            hostile.COUNTER)
        self.initial_mounts = self.mounts = mount_table(str(tmp_path))
        self.files = self.state()

    def sections(self, **share):
        values = {'work_dir': self.work, 'export_dir': self.export,
                  'tmpfs_size': '4m', 'manage_mounts': True}
        values.update(share)
        return {'share': values,
                'energy': {'powercap_path': str(self.powercap)},
                # The fixture powercap tree is no sysfs; the share is a
                # real tmpfs, checked as on a host.
                privsep.CFG_SECTION: {'require_sysfs': False}}

    def artifacts(self):
        """What making the configured trees may add beside them (they and
        their contents are left out of ``state``): their missing parents
        and the lock beside work_dir."""
        return {os.path.relpath(p, self.root) for p in (
            os.path.dirname(self.work), self.work + '.lock',
            os.path.dirname(self.export))}

    def state(self, with_artifacts=False):
        """The test directory, the share tmpfs's contents left out."""
        state = hostile.tree_state(self.root, skip={self.work, self.export})
        if not with_artifacts:
            for path in self.artifacts():
                state.pop(path, None)
        return state

    def new_mounts(self):
        before = set(self.mounts)
        return sorted(m for m in mount_table(str(self.root))
                      if m not in before)

    def assert_untouched(self):
        assert self.state() == self.files
        assert (self.victim / 'secret').read_text() == hostile.SECRET


@pytest.fixture
def host(tmp_path):
    host = Host(tmp_path)
    try:
        yield host
    finally:
        privsep_daemon.stop()
        unmount_all(host.export, host.work)
    assert mount_table(str(host.root)) == host.initial_mounts


def test_hostile_calls_touch_nothing_outside_the_share(host):
    before = host.state(with_artifacts=True)
    with privsep_daemon.running(host.sections()):
        mounts.ensure_share_mounts()
        after = host.state(with_artifacts=True)
        assert set(after) - set(before) == host.artifacts()
        mounts.ensure_share_mounts()     # idempotent: no second mount
        added = host.new_mounts()
        assert [(m[0], m[1], m[3]) for m in added] == sorted(
            [(host.work, 'tmpfs', '/'), (host.export, 'tmpfs', '/')])
        view = [m for m in added if m[0] == host.export][0]
        assert view[2].split(',')[0] == 'ro'

        # Paths, sizes, options: no entry point takes any.
        for args in (('/etc', '/tmp', '1m'), ('--bind',), ('4m,uid=0',)):
            with pytest.raises(TypeError):
                mounts.ensure_share_mounts(*args)
        for uuid in hostile.HOSTILE_UUIDS:
            with pytest.raises(privsep.Refused):
                mounts.create_instance_share(uuid)
        with pytest.raises(privsep.Refused):
            mounts.create_instance_share(str(host.victim), UUID)
        for zone in hostile.HOSTILE_ZONES:
            with pytest.raises(privsep.Refused):
                rapl.read_energy_uj(zone)

        # What it is for still works.
        mounts.create_instance_share(UUID, True)
        assert os.path.isfile(os.path.join(host.export, UUID, 'intel-rapl:0',
                                           'energy_uj'))
        assert rapl.read_energy_uj('intel-rapl:0') == hostile.COUNTER
        assert host.new_mounts() == added
    host.assert_untouched()


def test_symlinks_swapped_in_a_loop_under_the_daemon(host):
    """Another process swaps the counter for a symlink to the secret, and
    an instance directory for a symlink to the victim, as fast as it can,
    while the daemon reads and creates."""
    energy_uj = host.powercap / 'intel-rapl:0' / 'energy_uj'
    with privsep_daemon.running(host.sections()):
        mounts.ensure_share_mounts()
        junk = os.path.join(host.work, 'junk')   # renames stay on the tmpfs
        os.mkdir(junk)
        attacker = hostile.swapper(hostile.SWAP_FILE, energy_uj,
                                   host.victim / 'secret', hostile.COUNTER)
        try:
            seen = hostile.read_outcomes(READS)
        finally:
            hostile.stop(attacker)
        assert hostile.SECRET not in seen
        assert seen.get(hostile.COUNTER) and seen.get('Refused'), seen
        attacker = hostile.swapper(hostile.SWAP_DIR,
                                   os.path.join(host.work, UUID),
                                   host.victim, junk)
        try:
            for _ in range(READS):
                try:
                    mounts.create_instance_share(UUID)
                except (privsep.Refused, OSError):
                    pass
        finally:
            hostile.stop(attacker)
    # The attacker left the counter as a plain file or a symlink.
    os.unlink(energy_uj)
    energy_uj.write_text(hostile.COUNTER)
    for leftover in (str(energy_uj) + '.link', str(energy_uj) + '.plain'):
        if os.path.lexists(leftover):
            os.unlink(leftover)
    host.assert_untouched()


def foreign_export(host):
    os.makedirs(host.export)
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1m', 'foreign',
                    host.export], check=True)


def non_empty_work(host):
    os.makedirs(host.work)
    with open(os.path.join(host.work, 'kept'), 'w') as f:
        f.write('hidden by a mount')


def symlinked_work(host):
    os.makedirs(os.path.dirname(host.work))
    os.symlink(host.victim, host.work)


@pytest.mark.parametrize('case,share,setup,refusal', [
    ('trailing-slash', {'work_dir': '{work}/'}, None, 'normalised'),
    ('dotdot', {'work_dir': '{work}/../../victim'}, None, 'normalised'),
    ('leading-dash', {'work_dir': '--bind'}, None, 'normalised'),
    ('size-injection', {'tmpfs_size': '4m,uid=1000'}, None, 'tmpfs size'),
    ('size-unlimited', {'tmpfs_size': '0'}, None, 'tmpfs size'),
    ('export-in-work', {'export_dir': '{work}/export'}, None, 'apart'),
    ('not-managed', {'manage_mounts': False}, None, 'manage_mounts'),
    ('symlinked-work', {}, symlinked_work, 'symlink'),
    ('non-empty-work', {}, non_empty_work, 'not empty'),
    ('foreign-export', {}, foreign_export, 'not a bind mount of'),
])
def test_hostile_configurations_mount_nothing(host, case, share, setup,
                                              refusal):
    if setup:
        setup(host)
    host.files, host.mounts = host.state(), mount_table(str(host.root))
    share = {k: v.format(work=host.work) if isinstance(v, str) else v
             for k, v in share.items()}
    with privsep_daemon.running(host.sections(**share)):
        with pytest.raises(privsep.Refused, match=refusal):
            mounts.ensure_share_mounts()
        if case != 'foreign-export':      # there work_dir is right
            with pytest.raises((privsep.Refused, FileNotFoundError)):
                mounts.create_instance_share(UUID)
    if case == 'foreign-export':
        # Ours is mounted (its directory was empty), not bound over theirs.
        assert [(m[0], m[1]) for m in host.new_mounts()] == [
            (host.work, 'tmpfs')]
        unmount_all(host.work)
    assert host.new_mounts() == []
    host.assert_untouched()


def test_export_of_a_replaced_tmpfs_is_refused(host):
    """work_dir's tmpfs unmounted and mounted again: the view still shows
    the old one. Compared by device and inode, it is refused instead of
    being kept as if it were the share."""
    with privsep_daemon.running(host.sections()):
        mounts.ensure_share_mounts()
        subprocess.run(['umount', '-l', '--', host.work], check=True)
        with pytest.raises(privsep.Refused, match='not a bind mount of'):
            mounts.ensure_share_mounts()
        fd = os.open(host.work, fs.DIR_FLAGS)
        try:
            assert fs.fs_type(fd) == fs.TMPFS_MAGIC    # the new one
        finally:
            os.close(fd)
