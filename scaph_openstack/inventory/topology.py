"""Which socket each host CPU belongs to, and which CPUs an instance may
run on.

A package (and its DRAM) zone measures one socket: its energy must be split
by the CPU time spent on that socket's CPUs, so an instance pinned to
socket 0 (Nova's ``hw:cpu_policy=dedicated``, NUMA flavors) never pays for
socket 1. The socket of a CPU is
``/sys/devices/system/cpu/cpuN/topology/physical_package_id``, the same
index as the ``intel-rapl:N`` package zone.
"""

import dataclasses
import os
import re

from oslo_log import log as logging

LOG = logging.getLogger(__name__)

_CPU_DIR = re.compile(r'^cpu(\d+)$')


def read_topology(cpu_path='/sys/devices/system/cpu'):
    """{cpu number: socket}; {} when the topology cannot be read (every
    zone is then split host-wide, and outputs say so)."""
    try:
        entries = os.listdir(cpu_path)
    except OSError as exc:
        LOG.warning('Cannot read the CPU topology under %s (%s): energy is '
                    'split by host-wide CPU time, not per socket',
                    cpu_path, exc)
        return {}
    sockets = {}
    for entry in entries:
        match = _CPU_DIR.match(entry)
        if not match:
            continue
        path = os.path.join(cpu_path, entry, 'topology',
                            'physical_package_id')
        try:
            with open(path, encoding='ascii') as f:
                socket = int(f.read().strip())
        except (OSError, ValueError):
            continue  # an offline CPU has no topology directory
        if socket >= 0:
            sockets[int(match.group(1))] = socket
    return sockets


def parse_cpuset(text):
    """'0-3,^2,8' -> frozenset({0, 1, 3, 8}) (libvirt's cpuset syntax);
    ValueError if it is not one."""
    included, excluded = set(), set()
    for part in text.replace(' ', '').split(','):
        if not part:
            continue
        target = included
        if part.startswith('^'):
            target, part = excluded, part[1:]
        low, _, high = part.partition('-')
        low, high = int(low), int(high or low)
        if low < 0 or high < low:
            raise ValueError('bad CPU range %r' % part)
        target.update(range(low, high + 1))
    if not included:
        raise ValueError('empty cpuset %r' % text)
    return frozenset(included - excluded)


def socket_of(cpus, topology):
    """The one socket every CPU of ``cpus`` is on; None if they span
    sockets, are unknown, or ``cpus`` is None (may run anywhere)."""
    if not cpus or not topology:
        return None
    sockets = {topology.get(cpu) for cpu in cpus}
    if len(sockets) == 1 and None not in sockets:
        return sockets.pop()
    return None


def _cpuset_attr(element):
    if element is None or not element.get('cpuset'):
        return None
    return parse_cpuset(element.get('cpuset'))


def _count(text, default):
    try:
        return max(int((text or '').strip()), 0)
    except ValueError:
        return default


@dataclasses.dataclass(frozen=True)
class CpuPins:
    """Where a domain's threads may run: each vCPU's CPUs, and the CPUs of
    everything else (emulator, I/O threads). None: anywhere."""
    vcpus: tuple
    others: frozenset | None

    @property
    def per_vcpu(self):
        """Every vCPU pinned, not all to the same CPUs as everything else:
        only then can per-vCPU times say more than ``allowed``."""
        return all(cpus is not None for cpus in self.vcpus) and \
            len(set(self.vcpus) | {self.others}) > 1

    @property
    def allowed(self):
        """Every CPU any of its threads may run on; None: anywhere."""
        sets = list(self.vcpus) + [self.others]
        if any(cpus is None for cpus in sets):
            return None
        return frozenset().union(*sets)


def pins_from_xml(root):
    """CpuPins of a libvirt domain from its XML (an ElementTree root):
    each vCPU's ``<vcpupin>``, the emulator's ``<emulatorpin>`` and the
    I/O threads' ``<iothreadpin>``, each defaulting to ``<vcpu
    cpuset=...>``; None when nothing usable is pinned
    (``placement='auto'`` is left to numad).

    Pinning changed on a running domain (``virsh vcpupin --live``) is seen
    when the domain is next started: the XML is read once per domain.
    """
    vcpu = root.find('vcpu')
    if vcpu is not None and vcpu.get('placement') == 'auto':
        return None
    try:
        default = _cpuset_attr(vcpu)
        cputune = root.find('cputune')
        pins = {}
        emulator = iothread_pins = None
        if cputune is not None:
            for pin in cputune.findall('vcpupin'):
                pins[_count(pin.get('vcpu'), -1)] = _cpuset_attr(pin)
            emulator = _cpuset_attr(cputune.find('emulatorpin'))
            iothread_pins = [_cpuset_attr(p)
                             for p in cputune.findall('iothreadpin')]
    except ValueError as exc:
        LOG.warning('Unusable CPU pinning in domain XML (%s): counted as '
                    'unpinned', exc)
        return None
    vcpus = _count(vcpu.text if vcpu is not None else None, 1)
    others = [emulator or default]
    iothreads = _count(root.findtext('iothreads'), 0)
    if iothreads:
        pinned = [p for p in (iothread_pins or []) if p]
        others.extend(pinned if len(pinned) >= iothreads else [default])
    others = None if any(o is None for o in others) \
        else frozenset().union(*others)
    result = CpuPins(tuple(pins.get(index) or default
                           for index in range(vcpus)), others)
    if others is None and all(v is None for v in result.vcpus):
        return None
    return result


def allowed_cpus_from_xml(root):
    """The CPUs all of a domain's threads may run on; None: anywhere."""
    pins = pins_from_xml(root)
    return pins.allowed if pins is not None else None


def socket_cpu_ns(cpu_ns, pins, vcpu_deltas, topology):
    """{socket: CPU ns} of one instance over an interval, for the part of
    ``cpu_ns`` whose socket is known; the rest may have run anywhere.

    All on one socket when every thread is pinned within it. Otherwise,
    where vCPUs are pinned to different sockets (a guest spanning NUMA
    nodes), each vCPU's own time (``vcpu_deltas``, from libvirt's
    ``vcpu.N.time``) goes to its socket, and the remainder (emulator, I/O
    threads) to the socket of ``pins.others`` if it has one.
    """
    if pins is None or not topology:
        return {}
    socket = socket_of(pins.allowed, topology)
    if socket is not None:
        return {socket: cpu_ns}
    if not vcpu_deltas:
        return {}
    known, vcpu_total = {}, 0
    for index, cpus in enumerate(pins.vcpus):
        socket = socket_of(cpus, topology)
        delta = vcpu_deltas.get(index)
        if socket is None or delta is None:
            return {}   # one vCPU floats: keep it simple, all floats
        known[socket] = known.get(socket, 0) + delta
        vcpu_total += delta
    if vcpu_total > cpu_ns:
        # Sampled together, but not to the same resolution (without a
        # cgroup libvirt sums threads' jiffies): the vCPUs' split of the
        # instance's own time, its rounding to the busiest socket.
        scaled = {s: ns * cpu_ns // vcpu_total for s, ns in known.items()}
        busiest = max(known, key=known.get)
        scaled[busiest] += cpu_ns - sum(scaled.values())
        return scaled
    socket = socket_of(pins.others, topology)
    if socket is not None:
        known[socket] = known.get(socket, 0) + cpu_ns - vcpu_total
    return known
