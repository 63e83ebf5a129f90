"""Writes instance trees under the read-write share root, safely.

Contract 3: nothing is ever read back from a share; every file is
replaced with write-temp-then-rename relative to directory file
descriptors opened with O_NOFOLLOW, so a symlink planted in the tree
(which the read-only export should already make impossible) is never
followed. Files are 0444 and directories 0555: the agent writes as root.
"""

import contextlib
import errno
import os
import shutil

from scaph_openstack import fileutil
from scaph_openstack.share import layout


class ShareTree:

    def __init__(self, root):
        self.root = root

    @contextlib.contextmanager
    def _root_fd(self):
        with fileutil.opened_dir(self.root) as fd:
            yield fd

    @staticmethod
    def _ensure_subdir(parent_fd, name):
        try:
            os.mkdir(name, layout.DIR_MODE, dir_fd=parent_fd)
            os.chmod(name, layout.DIR_MODE, dir_fd=parent_fd)  # vs. umask
        except FileExistsError:
            pass
        return fileutil.open_dir(name, dir_fd=parent_fd)

    def write_instance(self, uuid, files, only_missing=False):
        """Write {(subdir, name): bytes} under <root>/<uuid>/.

        ``only_missing`` creates absent files and leaves present ones
        alone (the Nova hook: never lower a counter the agent wrote).
        """
        dirname = layout.instance_dir_name(uuid)
        by_dir = {}
        for (subdir, name), data in files.items():
            by_dir.setdefault(subdir, {})[name] = data
        with self._root_fd() as root_fd:
            instance_fd = self._ensure_subdir(root_fd, dirname)
            try:
                for subdir, subfiles in sorted(by_dir.items()):
                    self._write_dir(instance_fd, subdir, subfiles,
                                    only_missing)
            finally:
                os.close(instance_fd)

    def _write_dir(self, instance_fd, subdir, files, only_missing):
        fd = (self._ensure_subdir(instance_fd, subdir) if subdir
              else os.dup(instance_fd))
        try:
            for name, data in files.items():
                if only_missing and _exists(fd, name):
                    continue
                fileutil.replace_at(fd, name, data, mode=layout.FILE_MODE)
        finally:
            os.close(fd)

    def remove_instance(self, uuid):
        dirname = layout.instance_dir_name(uuid)
        path = os.path.join(self.root, dirname)
        # rmtree uses fd-based, symlink-safe traversal on Linux.
        shutil.rmtree(path, ignore_errors=False,
                      onerror=_ignore_missing)

    def instances(self):
        """(name, mtime) of every instance directory."""
        found = []
        with os.scandir(self.root) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False) and \
                        not entry.name.startswith('.'):
                    found.append((entry.name,
                                  entry.stat(follow_symlinks=False).st_mtime))
        return found


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
