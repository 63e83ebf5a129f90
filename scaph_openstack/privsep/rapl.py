"""Root-only RAPL counters (CVE-2020-8694), one zone at a time.

The caller names a zone; the file is ``<powercap_path>/<zone>/energy_uj``
with the daemon's own ``[energy] powercap_path``. Each step is opened
relative to the previous descriptor, the file with ``O_NOFOLLOW``, and
each descriptor is checked to be on sysfs, where nobody can plant a
symlink or a file. Only digits come back.
"""

import errno
import os
import re

from scaph_openstack import privsep
from scaph_openstack.privsep import fs

ZONE_RE = re.compile(r'intel-rapl:[0-9]{1,6}(?::[0-9]{1,6})?')
COUNTER_RE = re.compile(rb'[0-9]{1,20}\n?')


def _open_zone(root, zone, require_sysfs):
    try:
        return os.open(zone, fs.DIR_FLAGS, dir_fd=root)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        if not require_sysfs:
            raise privsep.Refused('%s is a symlink or not a directory; '
                                  'not followed' % zone) from None
    # /sys/class/powercap/intel-rapl:N is the kernel's symlink into
    # /sys/devices. Followed only from a directory checked to be on sysfs
    # (where only the kernel makes symlinks), and what it leads to is
    # checked again by the caller.
    return os.open(zone, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC,
                   dir_fd=root)


def read_counter(powercap_path, zone, require_sysfs=True):
    """In this process: the text of ``<powercap_path>/<zone>/energy_uj``;
    ``require_sysfs`` false (tests' fixture trees) skips the sysfs
    checks, never the others."""
    if not isinstance(zone, str) or not ZONE_RE.fullmatch(zone):
        raise privsep.Refused('%r is not a RAPL zone (intel-rapl:N or '
                              'intel-rapl:N:M)' % (zone,))
    privsep.check_path(powercap_path, '[energy] powercap_path')
    parent, root = fs.open_path(powercap_path)
    os.close(parent)
    try:
        if require_sysfs:
            fs.require_fs(root, fs.SYSFS_MAGIC, powercap_path)
        zone_fd = _open_zone(root, zone, require_sysfs)
    finally:
        os.close(root)
    what = '%s/%s/energy_uj' % (powercap_path, zone)
    try:
        if require_sysfs:
            fs.require_fs(zone_fd, fs.SYSFS_MAGIC, what)
        fd = fs.regular_file_at(zone_fd, 'energy_uj', what)
    finally:
        os.close(zone_fd)
    try:
        if require_sysfs:
            fs.require_fs(fd, fs.SYSFS_MAGIC, what)
        data = os.read(fd, 64)
    finally:
        os.close(fd)
    if not COUNTER_RE.fullmatch(data):
        # Say nothing of what it held.
        raise privsep.Refused('%s does not hold a counter' % what)
    return data.decode('ascii')


@privsep.sys_admin.entrypoint
def read_energy_uj(zone):
    """Contents of the energy_uj file of one RAPL zone, and nothing else."""
    return read_counter(privsep.powercap_path(), zone,
                        privsep.require_sysfs())


def read_energy_uj_file(path):
    """RaplSource's privileged reader (path -> text), unprivileged side:
    only the zone, the name of the file's directory, is sent; the daemon
    reads it under its own powercap_path."""
    return read_energy_uj(os.path.basename(os.path.dirname(path)))
