"""Instances from QEMU processes in /proc, for hosts without libvirt.

Proxmox VE starts ``/usr/bin/kvm -id 100 -name web,debug-threads=on -uuid
...``; plain QEMU is ``qemu-system-x86_64``; RHEL ships
``/usr/libexec/qemu-kvm``. CPU time is utime + stime of the whole process
(every thread: vCPUs, iothreads, the main loop).
"""

import os

from oslo_log import log as logging

from scaph_openstack.inventory import base
from scaph_openstack.inventory import hoststat

LOG = logging.getLogger(__name__)

QEMU_BINARIES = ('qemu-system-', 'qemu-kvm')


def is_qemu(argv):
    if not argv:
        return False
    binary = os.path.basename(argv[0])
    if binary.startswith(QEMU_BINARIES):
        return True
    # Proxmox's /usr/bin/kvm wrapper always passes -id.
    return binary == 'kvm' and '-id' in argv


def _option(argv, flag):
    for index, arg in enumerate(argv[:-1]):
        if arg == flag:
            return argv[index + 1]
    return None


def _name(value):
    """Guest name of '-name guest=NAME,debug-threads=on' or '-name NAME'."""
    if value is None:
        return None
    parts = value.split(',')
    for part in parts:
        if part.startswith('guest='):
            return part[len('guest='):]
    return parts[0] or None


def identity_from_argv(argv, pid):
    name = _name(_option(argv, '-name'))
    vmid = _option(argv, '-id')
    uuid = _option(argv, '-uuid')
    if name is None:
        name = 'vm-%s' % vmid if vmid else 'qemu-%d' % pid
    # Without -uuid the Proxmox VMID, then the name, keep the key stable
    # across restarts; the pid would not.
    key = uuid or ('proxmox-%s' % vmid if vmid else 'qemu-name-%s' % name)
    return base.InstanceIdentity(uuid=key, name=name)


def _vcpus(argv):
    smp = _option(argv, '-smp')
    if not smp:
        return 1
    first = smp.split(',')[0]
    if first.startswith('cpus='):
        first = first[len('cpus='):]
    try:
        return max(int(first), 1)
    except ValueError:
        return 1


def parse_stat_cpu_ns(stat_text):
    """utime + stime in ns from /proc/PID/stat (comm may hold spaces)."""
    fields = stat_text.rsplit(')', 1)[1].split()
    # fields[0] is the state (field 3); utime and stime are fields 14, 15.
    return (int(fields[11]) + int(fields[12])) * hoststat.NS_PER_TICK


class QemuProcessInventory(base.Inventory):

    name = 'qemu'

    def __init__(self, proc_path='/proc'):
        self.proc_path = proc_path

    def _read(self, pid, name, mode='r'):
        with open(os.path.join(self.proc_path, pid, name), mode) as f:
            return f.read()

    def _instance(self, pid):
        try:
            argv = [a.decode(errors='replace') for a in
                    self._read(pid, 'cmdline', 'rb').split(b'\0') if a]
            if not is_qemu(argv):
                return None
            cpu_ns = parse_stat_cpu_ns(self._read(pid, 'stat'))
        except (OSError, IndexError, ValueError):
            return None  # the process ended while we looked
        identity = identity_from_argv(argv, int(pid))
        return base.InstanceUsage(identity, cpu_ns, _vcpus(argv))

    def list_instances(self):
        try:
            pids = [p for p in os.listdir(self.proc_path) if p.isdigit()]
        except OSError as exc:
            raise base.InventoryUnavailable('cannot list %s: %s'
                                            % (self.proc_path, exc))
        instances = {}
        for pid in pids:
            usage = self._instance(pid)
            if usage is not None:
                instances[usage.uuid] = usage
        return tuple(instances.values())


def from_conf(conf):
    return QemuProcessInventory(conf.qemu.proc_path)
