"""File updates relative to a directory file descriptor.

The snapshot and the ledger are replaced by write-to-temp + rename
(``replace_at``), so a reader sees the old or the new content, never a torn
or empty file. Share files are updated in place (``update_at``): a guest
that looked a file up holds its inode, and virtiofsd migrates only inodes
that still have a path (doc/share.md, "Update protocol"). Names are
resolved inside an already opened directory with O_NOFOLLOW, so a symlink
planted in the tree is never followed.
"""

import contextlib
import itertools
import os
import re
import stat

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


# O_NONBLOCK: a FIFO planted in the tree fails (ENXIO) instead of blocking.
_UPDATE_FLAGS = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def update_at(dir_fd, name, data, mode=0o644, pad=None):
    """Make ``name`` in ``dir_fd`` hold ``data``, keeping its inode.

    The new bytes are written over the old from offset 0 with one
    pwrite, without truncating first, so a reader never sees an empty
    file. That needs ``data`` at least as long as the file: a counter that
    only grows always is; ``pad`` (one byte, e.g. b' ' for JSON) fills a
    shorter ``data`` up to the old length. Anything else (no such file, a
    shorter content without ``pad``, something that is not one plain file
    with one link, a write refused) is left to ``replace_at``: a new
    inode, but the right content. Returns True when written in place.
    """
    try:
        fd = os.open(name, _UPDATE_FLAGS, dir_fd=dir_fd)
    except OSError:
        # Missing, a symlink (ELOOP), a FIFO without reader (ENXIO), not
        # writable: a fresh file is the answer to each.
        replace_at(dir_fd, name, data, mode=mode)
        return False
    try:
        st = os.fstat(fd)
        if len(data) < st.st_size and pad is not None:
            data = data + pad * (st.st_size - len(data))
        # A hard link would carry the write to another name; a file that
        # shrinks would keep a tail of the old content.
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or \
                len(data) < st.st_size:
            in_place = False
        else:
            _pwrite_all(fd, data)
            if stat.S_IMODE(st.st_mode) != mode:
                os.fchmod(fd, mode)
            in_place = True
    finally:
        os.close(fd)
    if not in_place:
        replace_at(dir_fd, name, data, mode=mode)
    return in_place


def _pwrite_all(fd, data):
    # A share file is one page of tmpfs: one pwrite writes it all or,
    # failing to allocate, nothing (the error propagates).
    view, offset = memoryview(data), 0
    while offset < len(view):
        offset += os.pwrite(fd, view[offset:], offset)


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
