"""Instances from QEMU processes in /proc, for hosts without libvirt.

Proxmox VE starts ``/usr/bin/kvm -id 100 -name web,debug-threads=on
-smbios type=1,uuid=...``; plain QEMU is ``qemu-system-x86_64``; RHEL ships
``/usr/libexec/qemu-kvm``. CPU time is utime + stime of the whole process
(every thread: vCPUs, iothreads, the main loop).

Whom to believe. Any local user can start a process whose command line
says ``qemu-system-x86_64 -uuid <someone else's>`` (``exec -a``, or the
real QEMU binary, which anyone may run). Such a process would take over
that instance's counters or get a share directory of its choosing. A
process counts only when:

- its real, effective, saved and filesystem uids (``Uid:`` of
  /proc/PID/status) are all in ``[qemu] allowed_users``. Not the owners
  in /proc/PID: the directory's is the effective uid alone (a setuid
  program's caller keeps its real uid), and the files inside are root's
  for any process that made itself non-dumpable
  (``prctl(PR_SET_DUMPABLE, 0)``, which needs no privilege);
- /proc/PID/exe, the binary the kernel actually runs (not argv[0], which
  the caller chooses), is one of ``[qemu] binaries``. A binary replaced by
  a package upgrade while QEMU runs reads ``<path> (deleted)``: the path
  is what is checked. Reading another user's exe needs CAP_SYS_PTRACE; a
  process whose exe cannot be read does not count (logged once).

Every file of one process is read through one descriptor of its /proc/PID
directory, so a PID reused between two reads fails the read instead of
mixing two processes.

Keys (the ledger's and the share directory's name):

- ``-id VMID`` (Proxmox): ``proxmox-<VMID>-<SMBIOS uuid>``, the uuid of
  ``-smbios type=1,uuid=...`` (the VM's ``smbios1:``). It survives the
  VM's restarts and migrations; Proxmox generates a new one when it
  creates or clones a VM, so a VMID reused for another VM is another key.
  The VMID in the key keeps two VMs apart even if someone copies a uuid.
  Without ``smbios1`` (VMs from before Proxmox generated it): ``proxmox-
  <VMID>-boot-<host boot id, 8 hex>-<start time in ticks since boot>``, a
  key per QEMU process: counters start from zero at each VM start, and no
  ``args:`` line can name its share directory. ``qm set VMID --smbios1
  uuid=$(cat /proc/sys/kernel/random/uuid)`` gives such a VM a stable key.
- ``-uuid`` (libvirt, most plain QEMU): that uuid.
- neither: ``qemu-name-<name>``.
"""

import fnmatch
import os
import pwd
import re

from oslo_log import log as logging

from scaph_openstack.inventory import base
from scaph_openstack.inventory import hoststat

LOG = logging.getLogger(__name__)

QEMU_BINARIES = ('qemu-system-', 'qemu-kvm')
DEFAULT_BINARIES = ('/usr/bin/qemu-system-*', '/usr/bin/kvm',
                    '/usr/libexec/qemu-kvm')
DEFAULT_USERS = ('root',)
DELETED = ' (deleted)'
UUID_RE = re.compile(r'[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}')


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


def _options(argv, flag):
    return [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == flag]


def qemu_opts(value):
    """'a=1,b=x,,y' -> [('a', '1'), ('b', 'x,y')]: QEMU's option syntax,
    where ',,' is a literal comma. A part without '=' has the key ''."""
    parts, current, index = [], [], 0
    while index < len(value):
        char = value[index]
        if char == ',':
            if value[index + 1:index + 2] == ',':
                current.append(',')
                index += 2
                continue
            parts.append(''.join(current))
            current = []
        else:
            current.append(char)
        index += 1
    parts.append(''.join(current))
    pairs = []
    for part in parts:
        key, sep, val = part.partition('=')
        pairs.append((key, val) if sep else ('', key))
    return pairs


def smbios_uuid(argv):
    """The uuid of the last ``-smbios type=1,...,uuid=U`` (QEMU: the last
    one wins), lowercased; None without a well-formed one."""
    found = None
    for value in _options(argv, '-smbios'):
        pairs = qemu_opts(value)
        if ('type', '1') not in pairs:
            continue
        for key, val in pairs:
            if key == 'uuid':
                found = val
    if found is None or not UUID_RE.fullmatch(found):
        return None
    return found.lower()


def _name(value):
    """Guest name of '-name guest=NAME,debug-threads=on' or '-name NAME'."""
    if value is None:
        return None
    parts = value.split(',')
    for part in parts:
        if part.startswith('guest='):
            return part[len('guest='):]
    return parts[0] or None


def identity_from_argv(argv, pid, start_ticks=None, boot_id=''):
    """The instance's identity; ``start_ticks`` (field 22 of stat) and
    ``boot_id`` key a Proxmox VM without an SMBIOS uuid (module doc)."""
    name = _name(_option(argv, '-name'))
    vmid = _option(argv, '-id')
    uuid = _option(argv, '-uuid')
    if name is None:
        name = 'vm-%s' % vmid if vmid else 'qemu-%d' % pid
    if vmid and vmid.isascii() and vmid.isdigit():
        smbios = smbios_uuid(argv)
        if smbios:
            key = 'proxmox-%s-%s' % (vmid, smbios)
        else:
            key = 'proxmox-%s-boot-%s-%s' % (vmid, boot_id[:8] or 'unknown',
                                             start_ticks)
    else:
        key = uuid or 'qemu-name-%s' % name
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


def _stat_fields(stat_text):
    """The fields after 'pid (comm)', from the state (field 3) on."""
    return stat_text.rsplit(')', 1)[1].split()


def parse_stat_cpu_ns(stat_text):
    """utime + stime in ns from /proc/PID/stat (comm may hold spaces)."""
    fields = _stat_fields(stat_text)
    # fields[0] is the state (field 3); utime and stime are fields 14, 15.
    return (int(fields[11]) + int(fields[12])) * hoststat.NS_PER_TICK


def parse_stat_start_ticks(stat_text):
    """starttime (field 22): clock ticks after boot when it started."""
    return int(_stat_fields(stat_text)[19])


def parse_status_uids(status_text):
    """The four uids of the ``Uid:`` line (real, effective, saved, fs)."""
    for line in status_text.splitlines():
        if line.startswith('Uid:'):
            uids = tuple(int(v) for v in line.split()[1:])
            if len(uids) == 4:
                return uids
    raise ValueError('no Uid line')


def binary_allowed(exe, patterns):
    """Whether the path /proc/PID/exe names matches one of ``patterns``
    (fnmatch, where '*' does not cross a '/')."""
    if exe.endswith(DELETED):
        exe = exe[:-len(DELETED)]
    return any(fnmatch.fnmatchcase(exe, pattern)
               and exe.count('/') == pattern.count('/')
               for pattern in patterns)


def resolve_users(names):
    """User names or numeric uids -> a frozenset of uids; unknown names
    are logged and left out."""
    uids = set()
    for name in names:
        name = name.strip()
        if name.isdigit():
            uids.add(int(name))
            continue
        try:
            uids.add(pwd.getpwnam(name).pw_uid)
        except KeyError:
            LOG.warning('[qemu] allowed_users: no user %r on this host; '
                        'ignored', name)
    return frozenset(uids)


class QemuProcessInventory(base.Inventory):

    name = 'qemu'

    def __init__(self, proc_path='/proc', allowed_uids=frozenset([0]),
                 binaries=DEFAULT_BINARIES):
        self.proc_path = proc_path
        self.allowed_uids = frozenset(allowed_uids)
        self.binaries = tuple(binaries)
        self._boot_id = None
        # pid -> reason, so that a refused process is logged once.
        self._refused = {}

    @property
    def boot_id(self):
        if self._boot_id is None:
            try:
                with open(os.path.join(self.proc_path, 'sys', 'kernel',
                                       'random', 'boot_id')) as f:
                    self._boot_id = f.read().strip().replace('-', '')
            except OSError:
                self._boot_id = ''
        return self._boot_id

    @staticmethod
    def _read(dir_fd, name, binary=False):
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
        with open(fd, 'rb' if binary else 'r') as f:
            return f.read()

    def _refuse(self, pid, argv, reason):
        if self._refused.get(pid) != reason:
            self._refused[pid] = reason
            LOG.warning('process %s (%s) looks like QEMU but is not counted: '
                        '%s', pid, ' '.join(argv[:3])[:200], reason)
        return None

    def _trusted(self, pid, dir_fd, argv):
        """None if the process may be counted, else why not."""
        uids = parse_status_uids(self._read(dir_fd, 'status'))
        if not set(uids) <= self.allowed_uids:
            return 'runs as uid %s, not one of [qemu] allowed_users' % (
                '/'.join(str(u) for u in uids))
        try:
            exe = os.readlink('exe', dir_fd=dir_fd)
        except PermissionError as exc:
            return ('cannot read its /proc/PID/exe (%s): the agent needs '
                    'the same uid or CAP_SYS_PTRACE' % exc)
        if not binary_allowed(exe, self.binaries):
            return 'its executable %r is not one of [qemu] binaries' % exe
        return None

    def _instance(self, pid):
        try:
            dir_fd = os.open(os.path.join(self.proc_path, pid),
                             os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None  # the process ended while we looked
        try:
            argv = [a.decode(errors='replace') for a in
                    self._read(dir_fd, 'cmdline', True).split(b'\0') if a]
            if not is_qemu(argv):
                return None
            reason = self._trusted(pid, dir_fd, argv)
            stat = self._read(dir_fd, 'stat')
            cpu_ns = parse_stat_cpu_ns(stat)
            start = parse_stat_start_ticks(stat)
        except (OSError, IndexError, ValueError):
            return None  # the process ended while we looked, or garbage
        finally:
            os.close(dir_fd)
        if reason:
            return self._refuse(pid, argv, reason)
        self._refused.pop(pid, None)
        identity = identity_from_argv(argv, int(pid), start, self.boot_id)
        return base.InstanceUsage(identity, cpu_ns, _vcpus(argv))

    def list_instances(self):
        try:
            pids = [p for p in os.listdir(self.proc_path) if p.isdigit()]
        except OSError as exc:
            raise base.InventoryUnavailable('cannot list %s: %s'
                                            % (self.proc_path, exc))
        for gone in set(self._refused) - set(pids):
            del self._refused[gone]
        instances = {}
        for pid in pids:
            usage = self._instance(pid)
            if usage is not None:
                instances[usage.uuid] = usage
        return tuple(instances.values())


def from_conf(conf):
    return QemuProcessInventory(conf.qemu.proc_path,
                                resolve_users(conf.qemu.allowed_users),
                                conf.qemu.binaries)
