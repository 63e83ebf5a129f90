"""Writes instance trees under the read-write share root, safely.

Nothing is ever read back from a share (doc/design.md, Facts 5). Files
are updated in place (fileutil.update_at), keeping the inode a guest
looked up: virtiofsd can migrate a guest's open inodes only while they
have a path (doc/share.md, "Update protocol"). Everything is resolved
relative to directory file descriptors opened with O_NOFOLLOW, so a
symlink planted in the tree (which the read-only export should already
make impossible) is never followed. Files are 0444 and directories 0555:
the agent writes as root.
"""

import errno
import os
import shutil

from scaph_openstack import fileutil
from scaph_openstack.share import layout


class ShareTree:
    """Instance trees under ``root``.

    With ``keep_open`` the root directory stays open between calls (a tick
    writes hundreds of trees); ``refresh()`` reopens it when ``root`` is no
    longer the same directory (a tmpfs mounted over it since). Directories
    this object made are remembered, so a tick does not retry mkdir on
    each; ``forget(uuid)`` drops that memory after a failure.
    """

    def __init__(self, root, keep_open=False):
        self.root = root
        # Only a long-lived writer (the share publisher) keeps the root
        # open: a one-shot caller must not pin the mount (umount: busy).
        self.keep_open = keep_open
        self._root_fd = None
        self._made = set()          # (dirname, subdir) known to exist

    def _root(self):
        if self._root_fd is None:
            self._root_fd = fileutil.open_dir(self.root)
        return self._root_fd

    def _done(self):
        if not self.keep_open:
            self.close()

    def refresh(self):
        """True when the open root was stale and has been let go."""
        if self._root_fd is None:
            return False
        try:
            now = os.stat(self.root, follow_symlinks=False)
            held = os.fstat(self._root_fd)
            if (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
                return False
        except OSError:
            pass
        self.close()
        return True

    def close(self):
        if self._root_fd is not None:
            os.close(self._root_fd)
        self._root_fd = None
        self._made.clear()

    def forget(self, uuid):
        self._made = {key for key in self._made if key[0] != uuid}

    def _subdir(self, parent_fd, dirname, subdir):
        name = subdir or dirname
        created = False
        if (dirname, subdir) not in self._made:
            try:
                os.mkdir(name, layout.DIR_MODE, dir_fd=parent_fd)
                created = True
            except FileExistsError:
                pass
            self._made.add((dirname, subdir))
        fd = fileutil.open_dir(name, dir_fd=parent_fd)
        if created:
            # On the opened directory (O_NOFOLLOW), not by name: a symlink
            # swapped in after mkdir is never chmod'ed. The umask must not
            # decide what guests see.
            os.fchmod(fd, layout.DIR_MODE)
        return fd

    def write_instance(self, uuid, files, only_missing=False):
        """Write {(subdir, name): bytes} under <root>/<uuid>/.

        ``only_missing`` creates absent files and leaves present ones
        alone (the Nova hook: never lower a counter the agent wrote).
        """
        dirname = layout.instance_dir_name(uuid)
        instance_fd = self._subdir(self._root(), dirname, '')
        try:
            for subdir, subfiles in files_by_dir(files):
                fd = (self._subdir(instance_fd, dirname, subdir) if subdir
                      else instance_fd)
                try:
                    write_files(fd, subfiles, only_missing)
                finally:
                    if fd != instance_fd:
                        os.close(fd)
        finally:
            os.close(instance_fd)
            self._done()

    def remove_instance(self, uuid):
        dirname = layout.instance_dir_name(uuid)
        self.forget(dirname)
        path = os.path.join(self.root, dirname)
        # rmtree uses fd-based, symlink-safe traversal on Linux.
        shutil.rmtree(path, ignore_errors=False,
                      onerror=_ignore_missing)

    def instance_names(self):
        """The name of every instance directory."""
        with os.scandir(self.root) as entries:
            return [entry.name for entry in entries
                    if entry.is_dir(follow_symlinks=False)
                    and not entry.name.startswith('.')]


def files_by_dir(files):
    """{(subdir, name): bytes} as [(subdir, {name: bytes})], sorted: the
    instance directory ('') first, then its zone directories."""
    by_dir = {}
    for (subdir, name), data in files.items():
        by_dir.setdefault(subdir, {})[name] = data
    return sorted(by_dir.items())


def write_files(dir_fd, files, only_missing):
    """Write each {name: bytes} in ``dir_fd`` in place (the inode stays);
    with ``only_missing``, present files (even symlinks) are left alone."""
    for name, data in files.items():
        if only_missing and _exists(dir_fd, name):
            continue
        fileutil.update_at(dir_fd, name, data, mode=layout.FILE_MODE,
                           pad=layout.padding(name))


def _exists(dir_fd, name):
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False


def _ignore_missing(function, path, exc_info):
    if not (isinstance(exc_info[1], OSError)
            and exc_info[1].errno == errno.ENOENT):
        raise exc_info[1]
