"""The share's tmpfs and read-only view, mounted for real through the
real privsep daemon, and the share publisher writing into them."""

import contextlib
import errno
import os
import uuid as uuidlib

import pytest

from scaph_openstack.privsep import mounts
from scaph_openstack.share import layout
from scaph_openstack.share import tree
from tests.functional import helpers
from tests.functional.helpers import privsep_daemon


def mounted(path):
    return path in mounts._mountinfo()


@pytest.fixture
def share_dirs(tmp_path):
    """(work, export, daemon): daemon(size) is a privsep daemon whose own
    [share] options name work and export, with that tmpfs_size."""
    helpers.require(os.geteuid() == 0, 'mounting needs root')
    work, export = str(tmp_path / 'work'), str(tmp_path / 'export')

    def daemon(size):
        return privsep_daemon.running({'share': {
            'work_dir': work, 'export_dir': export, 'tmpfs_size': size,
            'manage_mounts': True}})
    with contextlib.ExitStack() as stack:
        yield work, export, lambda size: stack.enter_context(daemon(size))
    for path in (export, work):
        for _attempt in range(5):
            if not mounted(path):
                break
            os.system('umount %s' % path)
        else:
            os.system('umount -l %s' % path)   # never hang the run
        assert not mounted(path), '%s still mounted' % path


def test_mounts_are_idempotent_and_export_is_read_only(share_dirs):
    work, export, daemon = share_dirs
    daemon('4m')
    mounts.ensure_share_mounts()
    mounts.ensure_share_mounts()     # agent restart
    info = mounts._mountinfo()
    assert info[work][0] == 'tmpfs'
    assert 'ro' in info[export][1].split(',')
    assert sum(1 for p in info if p in (work, export)) == 2
    tree.ShareTree(work).write_instance('u1', layout.initial_files('u1'))
    assert os.path.exists(os.path.join(export, 'u1', 'intel-rapl:0',
                                       'energy_uj'))
    for attempt in (lambda: open(os.path.join(export, 'u1', 'x'), 'w'),
                    lambda: os.symlink('/etc/passwd',
                                       os.path.join(export, 'u1', 'l')),
                    lambda: os.mkdir(os.path.join(export, 'd'))):
        with pytest.raises(OSError) as err:
            attempt()
        assert err.value.errno == errno.EROFS


def test_export_remounted_read_only_if_someone_made_it_writable(share_dirs):
    work, export, daemon = share_dirs
    daemon('4m')
    mounts.ensure_share_mounts()
    os.system('mount -o remount,bind,rw %s' % export)
    mounts.ensure_share_mounts()
    assert 'ro' in mounts._mountinfo()[export][1].split(',')


def test_size_limit_gives_enospc_not_a_full_host(share_dirs):
    work, export, daemon = share_dirs
    daemon('1m')
    mounts.ensure_share_mounts()
    with pytest.raises(OSError) as err:
        tree.ShareTree(work).write_instance(
            'big', {('', 'blob'): b'x' * (2 * 1024 * 1024)})
    assert err.value.errno == errno.ENOSPC
    assert [n for n in os.listdir(os.path.join(work, 'big'))] == []


def test_instance_share_via_privsep_and_thousand_cycles_leak_nothing(
        share_dirs):
    work, export, daemon = share_dirs
    daemon('8m')
    mounts.ensure_share_mounts()
    shares = tree.ShareTree(work)
    for i in range(1000):
        uuid = str(uuidlib.UUID(int=i))
        mounts.create_instance_share(uuid, True)
        shares.remove_instance(uuid)
    assert os.listdir(work) == []
    assert not [fd for fd in os.listdir('/proc/self/fd')
                if os.path.realpath('/proc/self/fd/%s' % fd).startswith(
                    work)], 'a file descriptor on the share leaked'
    statvfs = os.statvfs(work)
    assert statvfs.f_bfree == statvfs.f_blocks
