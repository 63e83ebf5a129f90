"""tmpfs for the shares and its read-only bind mount (doc/design.md,
Facts 2), and the instance share directories nova-compute asks for.

libvirt 9.0 refuses ``<readonly/>`` on virtiofs, so the guest's view is
made read-only on the host: virtiofsd exports a bind mount remounted
``ro``, while the agent writes the same tmpfs through ``work_dir``.

The entry points take no path and no size (doc/security.md, "Privileged
entry points"): ``work_dir``, ``export_dir``, ``tmpfs_size`` and
``manage_mounts`` are the daemon's own configuration
(``privsep.share_settings``). Directories are opened from / with
``O_NOFOLLOW`` (``privsep.fs``); what is mounted where is decided by
device and inode numbers; mount(2) is called on the opened directories.
"""

import contextlib
import errno
import fcntl
import os
import subprocess

from scaph_openstack import handoff
from scaph_openstack import privsep
from scaph_openstack.privsep import fs
from scaph_openstack.share import layout
from scaph_openstack.share import tree

TMPFS_SOURCE = 'scaph-shares'
MOUNT_FLAGS = fs.MS_NOSUID | fs.MS_NODEV | fs.MS_NOEXEC
VIEW_FLAGS = os.ST_RDONLY | os.ST_NOSUID | os.ST_NODEV | os.ST_NOEXEC


def _mountinfo():
    """{mount point: (fs type, options)} of the current namespace (for
    tests and diagnostics: decisions use device and inode numbers)."""
    mounts = {}
    with open('/proc/self/mountinfo') as f:
        for line in f:
            left, _, right = line.partition(' - ')
            fields = left.split()
            fstype = right.split()[0]
            point = fields[4].replace('\\040', ' ')
            mounts[point] = (fstype, fields[5])
    return mounts


def _lock(parent_fd, name):
    """nova-compute (hook) and the agent may both set the mounts up at
    host boot: one at a time, or both could mount a tmpfs over work_dir.
    The lock file is ``<work_dir>.lock``, beside work_dir."""
    try:
        fd = os.open(name + '.lock', os.O_WRONLY | os.O_CREAT |
                     os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise privsep.Refused('%s.lock is a symlink; not followed'
                                  % name) from None
        raise
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _dev(fd):
    st = os.fstat(fd)
    return '%d:%d inode %d' % (os.major(st.st_dev), os.minor(st.st_dev),
                               st.st_ino)


def _mount_work(parent, name, settings):
    """The descriptor of work_dir, a tmpfs mount root (mounted if not)."""
    path = settings.work_dir
    work = fs.open_child(parent, name, path, create=True)
    try:
        if fs.is_mount_root(parent, work):
            fs.require_fs(work, fs.TMPFS_MAGIC, '%s (a mount point)' % path)
        else:
            if not fs.is_empty(work):
                raise privsep.Refused(
                    '%s is not empty: a tmpfs mounted over it would hide its '
                    'files' % path)
            fs.mount(TMPFS_SOURCE, work, 'tmpfs', MOUNT_FLAGS,
                     'size=%s,mode=0755' % settings.tmpfs_size)
            os.close(work)
            work = fs.open_child(parent, name, path)
            if not fs.is_mount_root(parent, work):
                raise OSError('mounted a tmpfs on %s but do not see it there'
                              % path)
            fs.require_fs(work, fs.TMPFS_MAGIC, path)
        os.fchmod(work, 0o755)
        return work
    except BaseException:
        os.close(work)
        raise


def _bind_export(work, settings):
    """export_dir: a read-only bind mount of the tmpfs root ``work`` is,
    as device and inode numbers say; made so if nothing is mounted there,
    refused if something else is."""
    path = settings.export_dir
    name = os.path.basename(path)
    parent, export = fs.open_path(path, create=True)
    try:
        if fs.is_mount_root(parent, export):
            if fs.identity(export) != fs.identity(work):
                raise privsep.Refused(
                    '%s is a mount point (device %s), not a bind mount of '
                    '%s (device %s): unmount it' % (
                        path, _dev(export), settings.work_dir, _dev(work)))
        else:
            if not fs.is_empty(export):
                raise privsep.Refused(
                    '%s is not empty: a bind mount over it would hide its '
                    'files' % path)
            fs.mount(None, export, None, fs.MS_BIND, source_fd=work)
            os.close(export)
            export = fs.open_child(parent, name, path)
            if fs.identity(export) != fs.identity(work):
                raise OSError('bound %s on %s but do not see it there'
                              % (settings.work_dir, path))
        if os.fstatvfs(export).f_flag & VIEW_FLAGS != VIEW_FLAGS:
            fs.mount(None, export, None,
                     fs.MS_REMOUNT | fs.MS_BIND | fs.MS_RDONLY | MOUNT_FLAGS)
            os.close(export)
            export = fs.open_child(parent, name, path)
            if os.fstatvfs(export).f_flag & VIEW_FLAGS != VIEW_FLAGS or \
                    fs.identity(export) != fs.identity(work):
                raise OSError('remounted %s read-only but it is not' % path)
    finally:
        os.close(export)
        os.close(parent)


def _ensure(settings):
    settings.check_mounts()
    name = os.path.basename(settings.work_dir)
    parent, work = fs.open_path(settings.work_dir, create=True)
    os.close(work)
    try:
        lock = _lock(parent, name)
        try:
            work = _mount_work(parent, name, settings)
            try:
                _bind_export(work, settings)
            finally:
                os.close(work)
        finally:
            os.close(lock)
    finally:
        os.close(parent)


def ensure_share_mounts_unprivileged(work_dir, export_dir, size):
    """In this process (already root): what ``ensure_share_mounts`` does
    with the daemon's configuration, here with these values, which get the
    same checks."""
    _ensure(privsep.ShareSettings('arguments', work_dir, export_dir, size,
                                  True))


def remove_share_mounts_unprivileged(work_dir, export_dir):
    """Unmount export_dir then work_dir where a mount is there."""
    for path in (export_dir, work_dir):
        privsep.check_path(path, 'path')
        try:
            parent, fd = fs.open_path(path)
        except FileNotFoundError:
            continue
        try:
            mounted = fs.is_mount_root(parent, fd)
        finally:
            os.close(fd)
            os.close(parent)
        if mounted:
            result = subprocess.run(['umount', '--', path],
                                    capture_output=True, text=True)
            if result.returncode:
                raise OSError('umount %s failed: %s'
                              % (path, result.stderr.strip()))


def _share_dir(parent, name, what):
    fd = fs.open_child(parent, name, what, create=True,
                       mode=layout.DIR_MODE)
    try:
        if os.fstat(fd).st_dev != os.fstat(parent).st_dev:
            raise privsep.Refused('%s: %r is a mount point' % (what, name))
        os.fchmod(fd, layout.DIR_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_instance_share(work_dir, uuid, with_dram=False,
                         require_tmpfs=True, start=None):
    """In this process: the instance's initial tree under ``work_dir``
    (which must be the share tmpfs unless ``require_tmpfs`` is false).
    Present files are kept: counters the agent wrote are never lowered.
    ``start`` (handoff.Counters) raises the counters to what the guest saw
    on the host it came from, before its domain runs here."""
    privsep.check_share_name(uuid)
    if not isinstance(with_dram, bool):
        raise privsep.Refused('with_dram must be true or false, not %r'
                              % (with_dram,))
    privsep.check_path(work_dir, 'work_dir')
    by_dir = tree.files_by_dir(layout.initial_files(uuid, with_dram))
    parent, root = fs.open_path(work_dir)
    try:
        if require_tmpfs:
            if not fs.is_mount_root(parent, root):
                raise privsep.Refused('%s is not a mount point: the share '
                                      'tmpfs is not mounted' % work_dir)
            fs.require_fs(root, fs.TMPFS_MAGIC, work_dir)
        instance = _share_dir(root, uuid, work_dir)
        try:
            for subdir, files in by_dir:
                fd = (_share_dir(instance, subdir, '%s/%s' % (work_dir, uuid))
                      if subdir else instance)
                try:
                    tree.write_files(fd, files, only_missing=True)
                    if start is not None:
                        _raise_counters(fd, subdir, start)
                finally:
                    if fd != instance:
                        os.close(fd)
        finally:
            os.close(instance)
    finally:
        os.close(root)
        os.close(parent)


_COUNTER_DIRS = {layout.PACKAGE_DIR: 'package', layout.DRAM_DIR: 'dram'}


def _raise_counters(dir_fd, subdir, start):
    """energy_uj up to ``start``'s shown value, never down. The only read
    of a share: by root, of a file only root writes, to not lower what
    the agent here already wrote (a domain back on a host it left)."""
    kind = _COUNTER_DIRS.get(subdir)
    shown = start.shown_uj.get(kind) if kind else None
    if shown is None:
        return
    try:
        fd = os.open('energy_uj', os.O_RDONLY | os.O_NOFOLLOW |
                     os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
        try:
            present = int(os.read(fd, 32).strip() or b'0')
        finally:
            os.close(fd)
    except (OSError, ValueError):
        present = -1      # garbage or missing: write ours
    if shown > present:
        tree.write_files(dir_fd, {'energy_uj': b'%d\n' % shown},
                         only_missing=False)


@privsep.sys_admin.entrypoint
def ensure_share_mounts():
    """Idempotent: mount what is missing, make a view that is not
    read-only so; refuse what is mounted but is not ours."""
    settings = privsep.share_settings()
    if not settings.manage_mounts:
        raise privsep.Refused('[%s] manage_mounts is false: the share mounts '
                              'are not this daemon\'s to make'
                              % settings.group)
    _ensure(settings)


@privsep.sys_admin.entrypoint
def create_instance_share(uuid, with_dram=False):
    """For nova-compute: the instance's initial tree, before its domain
    starts, whether or not the agent runs. Present files are kept."""
    privsep.check_uuid(uuid)
    write_instance_share(privsep.share_settings().work_dir, uuid, with_dram,
                         privsep.require_tmpfs())


@privsep.sys_admin.entrypoint
def create_proxmox_share(key):
    """For the Proxmox hookscript: VM ``key``'s initial tree (key of
    scaph_openstack.proxmox.share_key), before QEMU or virtiofsd opens it.
    Present files are kept."""
    privsep.check_proxmox_key(key)
    write_instance_share(privsep.share_settings().work_dir, key, False,
                         privsep.require_tmpfs())


# -- counters that follow the instance (handoff.py) --

def _counters(doc):
    try:
        return handoff.Counters.from_dict(doc)
    except handoff.HandoffError as exc:
        raise privsep.Refused(str(exc))


def _token(token):
    try:
        return handoff.check_token(token)
    except handoff.HandoffError as exc:
        raise privsep.Refused(str(exc))


@contextlib.contextmanager
def _work_dir():
    """(work_dir, fd) of the daemon's own work_dir, reached from / without
    following any symlink."""
    work_dir = privsep.share_settings().work_dir
    privsep.check_path(work_dir, 'work_dir')
    parent, root = fs.open_path(work_dir)
    try:
        yield work_dir, root
    finally:
        os.close(root)
        os.close(parent)


@privsep.sys_admin.entrypoint
def hold_counters(uuid, token, expires=None):
    """Ask this host's agent to freeze the instance's counters, until
    released or the wall-clock time ``expires``."""
    privsep.check_uuid(uuid)
    token = _token(token)
    try:
        handoff.check_expires(expires)
    except handoff.HandoffError as exc:
        raise privsep.Refused(str(exc))
    with _work_dir() as (work_dir, root):
        handoff.request_hold(work_dir, uuid, token, expires, root_fd=root)


@privsep.sys_admin.entrypoint
def held_counters(uuid, token):
    """The agent's answer to the hold ``token`` (a dict), None before."""
    privsep.check_uuid(uuid)
    token = _token(token)
    with _work_dir() as (work_dir, root):
        counters = handoff.answer_of(work_dir, uuid, token, root_fd=root)
    return None if counters is None else counters.as_dict()


@privsep.sys_admin.entrypoint
def release_counters(uuid):
    privsep.check_uuid(uuid)
    with _work_dir() as (work_dir, root):
        handoff.release_hold(work_dir, uuid, root_fd=root)


@privsep.sys_admin.entrypoint
def start_counters(uuid, counters):
    """The instance's share and the agent continue from ``counters`` (a
    dict as held_counters gives) once its domain is here."""
    privsep.check_uuid(uuid)
    start = _counters(counters)
    with _work_dir() as (work_dir, root):
        handoff.offer_start(work_dir, uuid, start, root_fd=root)
    # Every file the guest looked up on the other host must exist here
    # before its domain runs: virtiofsd reopens them by path.
    write_instance_share(privsep.share_settings().work_dir, uuid,
                         'dram' in start.shown_uj, privsep.require_tmpfs(),
                         start=start)
