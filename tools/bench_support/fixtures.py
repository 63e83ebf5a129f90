"""Fixture trees and host facts for the benchmark.

* a powercap tree shaped like an Intel two-socket server with DRAM
  (the files of /sys/class/powercap) whose counters the bench advances;
* the tmpfs the shares are written to, mounted with the agent's own
  mount code (scaph_openstack.privsep.mounts) when running as root;
* what the report header says about the host.
"""

import contextlib
import datetime
import json
import os
import platform
import random
import shutil
import sys
import tempfile

INTEL_RANGE = 262143328850
# (directory, zone name, idle watts, watts at full load)
INTEL_TWO_SOCKETS_DRAM = (
    ('intel-rapl:0', 'package-0', 45.0, 165.0),
    ('intel-rapl:0:0', 'core', 20.0, 125.0),
    ('intel-rapl:0:1', 'dram', 4.0, 14.0),
    ('intel-rapl:1', 'package-1', 42.0, 160.0),
    ('intel-rapl:1:0', 'dram', 4.0, 13.0),
)


def load_profile(seed=42):
    """Host load per interval: idle first, then busy between 30 and 90 %
    (a varying load, from which the agent learns the zones' idle power;
    the bench measures cost, doc/accuracy.md the numbers)."""
    rng = random.Random(seed)
    yield 0.0
    while True:
        yield rng.uniform(0.3, 0.9)


class PowercapFixture:
    """A powercap tree the bench advances between ticks (outside timing).

    Counters are rewritten with write-temp-then-rename: a reader opening
    ``energy_uj`` sees a whole number, as with sysfs.
    """

    def __init__(self, root, zones=INTEL_TWO_SOCKETS_DRAM):
        self.root = root
        self.zones = zones
        self.energy = {}
        self.loads = load_profile()
        for dirname, name, _idle, _max in zones:
            zone = os.path.join(root, dirname)
            os.makedirs(zone, exist_ok=True)
            for fname, value in (('name', name), ('energy_uj', 1000),
                                 ('max_energy_range_uj', INTEL_RANGE),
                                 ('enabled', 1)):
                with open(os.path.join(zone, fname), 'w') as f:
                    f.write('%s\n' % value)
            self.energy[dirname] = 1000

    def energy_paths(self):
        return [os.path.join(self.root, z[0], 'energy_uj')
                for z in self.zones]

    def advance(self, seconds):
        load = next(self.loads)
        for dirname, _name, idle, full in self.zones:
            watts = idle + (full - idle) * load
            value = (self.energy[dirname] + int(watts * seconds * 1e6)) \
                % INTEL_RANGE
            self.energy[dirname] = value
            path = os.path.join(self.root, dirname, 'energy_uj')
            with open(path + '.tmp', 'w') as f:
                f.write('%d\n' % value)
            os.rename(path + '.tmp', path)


def _mount_type(path):
    path = os.path.realpath(path)
    best, fstype = '', None
    with open('/proc/self/mountinfo') as f:
        for line in f:
            left, _, right = line.partition(' - ')
            point = left.split()[4].replace('\\040', ' ')
            if (path == point or path.startswith(point.rstrip('/') + '/')) \
                    and len(point) >= len(best):
                best, fstype = point, right.split()[0]
    return fstype


class Scratch:
    """Where the bench writes: a tmpfs for shares, snapshot and powercap,
    a disk directory for the ledger (the agent's state_dir is on disk and
    fsynced).

    As root (and unless ``mount`` is False) a fresh tmpfs is mounted in a
    temporary directory with the agent's mount code, with its read-only
    view, and unmounted by ``close()``; otherwise an existing tmpfs
    (/dev/shm) is used, and the header says so.
    """

    def __init__(self, mount=True, size='512m'):
        self.mounted = False
        self.base = None
        self.state_dir = tempfile.mkdtemp(prefix='scaph-bench-state-',
                                          dir='/var/tmp')
        if mount and os.geteuid() == 0:
            self._mount(size)
        if not self.mounted:
            shm = '/dev/shm'
            parent = shm if os.path.isdir(shm) and os.access(
                shm, os.W_OK) else None
            self.base = tempfile.mkdtemp(prefix='scaph-bench-', dir=parent)
            self.work = self.base
        self.fstype = _mount_type(self.work)
        self.state_fstype = _mount_type(self.state_dir)

    def _mount(self, size):
        from scaph_openstack.privsep import mounts
        self.base = tempfile.mkdtemp(prefix='scaph-bench-')
        self.work = os.path.join(self.base, 'work')
        self.export = os.path.join(self.base, 'export')
        try:
            mounts.ensure_share_mounts_unprivileged(self.work, self.export,
                                                    size)
        except OSError as exc:
            self.mount_error = str(exc)
            with contextlib.suppress(OSError):
                mounts.remove_share_mounts_unprivileged(self.work,
                                                        self.export)
            shutil.rmtree(self.base, ignore_errors=True)
            return
        self.mounted = True

    def describe(self):
        if self.mounted:
            how = ('a tmpfs mounted for this run by the agent\'s own mount '
                   'code (scaph_openstack.privsep.mounts), with its '
                   'read-only view')
        else:
            how = ('%s (%s, not mounted by the bench: %s)'
                   % (self.work, self.fstype,
                      getattr(self, 'mount_error', 'not root or --quick')))
        return how

    def subdir(self, name):
        path = os.path.join(self.work, name)
        os.makedirs(path, exist_ok=True)
        return path

    def close(self):
        if self.mounted:
            from scaph_openstack.privsep import mounts
            with contextlib.suppress(OSError):
                mounts.remove_share_mounts_unprivileged(self.work,
                                                        self.export)
            self.mounted = False
        if self.base:
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None
        if self.state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)
            self.state_dir = None


def cpu_model():
    with contextlib.suppress(OSError):
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    return platform.processor() or 'unknown CPU'


def loadavg():
    with contextlib.suppress(OSError):
        with open('/proc/loadavg') as f:
            return ' '.join(f.read().split()[:3])
    return '?'


def os_release():
    with contextlib.suppress(OSError):
        with open('/etc/os-release') as f:
            for line in f:
                if line.startswith('PRETTY_NAME='):
                    return line.split('=', 1)[1].strip().strip('"')
    return platform.system()


def package_version(name):
    from importlib import metadata
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def libvirt_library_version():
    try:
        import libvirt
    except ImportError:
        return None
    v = libvirt.getVersion()
    return '%d.%d.%d' % (v // 1000000, v // 1000 % 1000, v % 1000)


def host_facts():
    return {
        'cpu': cpu_model(),
        'cores': os.cpu_count(),
        'memory_gb': round(os.sysconf('SC_PAGE_SIZE')
                           * os.sysconf('SC_PHYS_PAGES') / 2 ** 30),
        'os': os_release(),
        'kernel': platform.release(),
        'python': platform.python_version(),
        'libvirt_python': package_version('libvirt-python'),
        'libvirt_library': libvirt_library_version(),
        'ceilometer': package_version('ceilometer'),
        'date': datetime.datetime.now(datetime.timezone.utc).strftime(
            '%Y-%m-%d %H:%M UTC'),
        'loadavg': loadavg(),
    }


def libvirtd_pids():
    pids = []
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                with open('/proc/%s/comm' % entry) as f:
                    if f.read().strip() in ('libvirtd', 'virtqemud'):
                        pids.append(int(entry))
    return pids


def cpu_ns_of(pids):
    """CPU time (ns) of every thread of ``pids`` (schedstat: ns, unlike
    /proc/PID/stat's clock ticks)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for tid in os.listdir('/proc/%d/task' % pid):
                with contextlib.suppress(OSError, ValueError):
                    with open('/proc/%d/task/%s/schedstat'
                              % (pid, tid)) as f:
                        total += int(f.read().split()[0])
    return total



def worker_main(run, argv=None):
    """A bench worker's entry: params JSON in argv[0], result to argv[1]."""
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0]) as f:
        params = json.load(f)
    result = run(params)
    with open(argv[1], 'w') as f:
        json.dump(result, f)
    return 0
