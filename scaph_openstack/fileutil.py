"""Atomic file replacement relative to a directory file descriptor.

Every file a reader may look at (share, snapshot, ledger) is replaced by
write-to-temp + rename, so a reader sees the old or the new content, never
a torn or empty file. Names are resolved inside an already opened
directory with O_NOFOLLOW, so a symlink planted in the tree is never
followed.
"""

import contextlib
import itertools
import os
import re

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_dir(path, dir_fd=None):
    return os.open(path, DIR_FLAGS, dir_fd=dir_fd)


@contextlib.contextmanager
def opened_dir(path, dir_fd=None):
    fd = open_dir(path, dir_fd=dir_fd)
    try:
        yield fd
    finally:
        os.close(fd)


_TEMPORARY_RE = re.compile(r'^\..+\.(\d+)\.\d+\.tmp$')
_TEMPORARY_FLAGS = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                    | os.O_CLOEXEC)
_sequence = itertools.count()


def _create_temporary(dir_fd, name, mode):
    """(name, fd) of a new temporary file beside ``name``. pid + sequence
    is unique among live writers; a leftover of a killed one is skipped."""
    while True:
        tmp = '.%s.%d.%d.tmp' % (name, os.getpid(), next(_sequence))
        try:
            return tmp, os.open(tmp, _TEMPORARY_FLAGS, mode, dir_fd=dir_fd)
        except FileExistsError:
            continue


def replace_at(dir_fd, name, data, mode=0o644, fsync=False, gid=None):
    """Atomically make ``name`` in ``dir_fd`` hold ``data`` (bytes), with
    ``mode`` and, when given, group ``gid`` (set before the rename: the
    file is never visible with other permissions).

    On any error (ENOSPC on a full disk, ...) the temporary file is removed
    and the old content stays in place; the error propagates.
    """
    tmp, fd = _create_temporary(dir_fd, name, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if gid is not None:
                os.fchown(fd, -1, gid)
            os.fchmod(fd, mode)  # the umask must not decide what guests see
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    if fsync:
        os.fsync(dir_fd)


def replace_file(path, data, mode=0o644, fsync=True, gid=None):
    """replace_at for a path; the parent directory is created if missing."""
    parent, name = os.path.split(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    with opened_dir(parent) as dir_fd:
        replace_at(dir_fd, name, data, mode=mode, fsync=fsync, gid=gid)


def _pid_alive(pid):
    """A zombie counts as dead: its writes are over."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except (OSError, IndexError):
        return False


def remove_stale_temporaries(directory, recursive=False):
    """Remove the temporaries of writers that died (kill -9) between
    creating and renaming them; returns how many. Live writers' are kept."""
    removed = 0
    for dirpath, _dirs, filenames in os.walk(directory):
        for name in filenames:
            match = _TEMPORARY_RE.match(name)
            if match and not _pid_alive(int(match.group(1))):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(dirpath, name))
                    removed += 1
        if not recursive:
            break
    return removed
