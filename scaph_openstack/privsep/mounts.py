"""tmpfs for the shares and its read-only bind mount (doc/design.md,
Facts 2).

libvirt 9.0 refuses ``<readonly/>`` on virtiofs, so the guest's view is
made read-only on the host: virtiofsd exports a bind mount remounted
``ro``, while the agent writes the same tmpfs through ``work_dir``.
"""

import fcntl
import os
import subprocess

from scaph_openstack import privsep
from scaph_openstack.share import layout


def _mountinfo():
    """{mount point: (fs type, options)} of the current namespace."""
    mounts = {}
    with open('/proc/self/mountinfo') as f:
        for line in f:
            left, _, right = line.partition(' - ')
            fields = left.split()
            fstype = right.split()[0]
            point = fields[4].replace('\\040', ' ')
            mounts[point] = (fstype, fields[5])
    return mounts


def _run(*argv):
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode:
        raise OSError('%s failed: %s' % (' '.join(argv),
                                         result.stderr.strip()))


def ensure_share_mounts_unprivileged(work_dir, export_dir, size):
    # nova-compute (hook) and the agent may both set the mounts up at host
    # boot: one at a time, or both could mount a tmpfs over work_dir.
    os.makedirs(os.path.dirname(os.path.abspath(work_dir)), exist_ok=True)
    lock_path = os.path.abspath(work_dir).rstrip('/') + '.lock'
    with open(lock_path, 'a') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _ensure_share_mounts(work_dir, export_dir, size)


def _ensure_share_mounts(work_dir, export_dir, size):
    mounts = _mountinfo()
    for path in (work_dir, export_dir):
        os.makedirs(path, exist_ok=True)
    if mounts.get(work_dir, ('',))[0] != 'tmpfs':
        _run('mount', '-t', 'tmpfs', '-o',
             'size=%s,mode=0755,nosuid,nodev,noexec' % size,
             'scaph-shares', work_dir)
    current = _mountinfo().get(export_dir)
    if current is None:
        _run('mount', '--bind', work_dir, export_dir)
        current = ('tmpfs', 'rw')
    if 'ro' not in current[1].split(','):
        _run('mount', '-o', 'remount,bind,ro,nosuid,nodev,noexec',
             export_dir)
    os.chmod(work_dir, 0o755)


def remove_share_mounts_unprivileged(work_dir, export_dir):
    mounts = _mountinfo()
    for path in (export_dir, work_dir):
        if path in mounts:
            _run('umount', path)


@privsep.sys_admin.entrypoint
def ensure_share_mounts(work_dir, export_dir, size):
    """Idempotent: mount what is missing, fix a view that is not ro."""
    ensure_share_mounts_unprivileged(work_dir, export_dir, size)


@privsep.sys_admin.entrypoint
def create_instance_share(work_dir, uuid, with_dram=False):
    """For nova-compute: the instance's initial tree, before its domain
    starts, whether or not the agent runs. Present files are kept."""
    from scaph_openstack.share import tree
    tree.ShareTree(work_dir).write_instance(
        uuid, layout.initial_files(uuid, with_dram), only_missing=True)
