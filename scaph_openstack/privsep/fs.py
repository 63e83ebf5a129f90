"""File system primitives of the privileged side: nothing here resolves a
path the way open(2) does by default.

- A directory is reached from ``/`` one component at a time, each opened
  with ``O_NOFOLLOW`` relative to its parent's descriptor: a symlink
  anywhere on the way is refused, never followed, and whatever is swapped
  in after a check is not what gets used (the descriptor is).
- What a descriptor is on is asked of the kernel (``fstatfs`` f_type, the
  ``st_dev``/``st_ino`` of ``fstat``), not inferred from path strings.
- mount(2) is called directly on ``/proc/self/fd/N``: the mount lands on
  the directory that was opened and checked, and no argv exists in which
  an option or a leading ``-`` could be injected.
"""

import ctypes
import ctypes.util
import errno
import os
import platform
import stat

from scaph_openstack import privsep

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

TMPFS_MAGIC = 0x01021994
SYSFS_MAGIC = 0x62656572
FS_NAMES = {TMPFS_MAGIC: 'tmpfs', SYSFS_MAGIC: 'sysfs'}

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000

_libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6',
                    use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                        ctypes.c_ulong, ctypes.c_char_p)
_libc.fstatfs.argtypes = (ctypes.c_int, ctypes.c_void_p)
# struct statfs starts with __fsword_t f_type: a long, but an unsigned int
# on s390x.
_FSWORD = ctypes.c_uint if platform.machine() == 's390x' else ctypes.c_long


def fs_type(fd):
    """f_type of fstatfs(2) on ``fd``."""
    buf = ctypes.create_string_buffer(256)     # struct statfs: 120 bytes
    if _libc.fstatfs(fd, buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, 'fstatfs: %s' % os.strerror(err))
    return _FSWORD.from_buffer(buf).value & 0xffffffff


def require_fs(fd, magic, what):
    found = fs_type(fd)
    if found != magic:
        raise privsep.Refused('%s is not on %s (f_type 0x%x)'
                              % (what, FS_NAMES[magic], found))


def open_path(path, create=False, mode=0o755):
    """(parent fd, fd) of the directory ``path`` (checked absolute and
    normalised by the caller), reached from / without following any
    symlink. ``create`` makes missing directories with ``mode`` (set on
    the descriptor, whatever the umask). The caller closes both."""
    parent, fd = None, os.open('/', DIR_FLAGS)
    try:
        for name in path.strip('/').split('/'):
            child = open_child(fd, name, path, create, mode)
            if parent is not None:
                os.close(parent)
            parent, fd = fd, child
        return parent, fd
    except BaseException:
        for held in (parent, fd):
            if held is not None:
                os.close(held)
        raise


def open_child(dir_fd, name, what, create=False, mode=0o755):
    """The directory ``name`` in ``dir_fd``, opened with O_NOFOLLOW;
    created with ``mode`` (fchmod, not chmod: nothing swapped in between
    mkdir and open is touched) when ``create`` and missing."""
    made = False
    if create:
        try:
            os.mkdir(name, mode, dir_fd=dir_fd)
            made = True
        except FileExistsError:
            pass
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise privsep.Refused('%s: %r is a symlink or not a directory; '
                                  'not followed' % (what, name)) from None
        raise
    if made:
        try:
            os.fchmod(fd, mode)
        except BaseException:
            os.close(fd)
            raise
    return fd


def is_mount_root(parent_fd, fd):
    """Whether ``fd`` is the root of a mount: another device than its
    parent directory's (device numbers, not mount table strings)."""
    return os.fstat(fd).st_dev != os.fstat(parent_fd).st_dev


def identity(fd):
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def is_empty(fd):
    with os.scandir(fd) as entries:
        return next(iter(entries), None) is None


def _fd_path(fd):
    return ('/proc/self/fd/%d' % fd).encode()


def mount(source, target_fd, fstype, flags, data=None, source_fd=None):
    """mount(2) onto the directory ``target_fd`` is (its magic link in
    /proc/self/fd), from ``source`` or from the directory ``source_fd``."""
    if source_fd is not None:
        source = _fd_path(source_fd)
    elif source is not None:
        source = source.encode()
    if _libc.mount(source, _fd_path(target_fd),
                   fstype.encode() if fstype else None, flags,
                   data.encode() if data else None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, 'mount(%s) failed: %s'
                      % (fstype or 'bind/remount', os.strerror(err)))


def regular_file_at(dir_fd, name, what):
    """A descriptor of the regular file ``name`` in ``dir_fd``: opened with
    O_NOFOLLOW (a symlink fails, ELOOP) and O_NONBLOCK (a FIFO swapped in
    cannot hang the daemon), then checked with fstat."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK |
                     os.O_CLOEXEC | os.O_NOCTTY, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise privsep.Refused('%s is a symlink; not followed'
                                  % what) from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise privsep.Refused('%s is not a regular file' % what)
    except BaseException:
        os.close(fd)
        raise
    return fd
