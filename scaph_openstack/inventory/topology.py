"""Which socket each host CPU belongs to, and which CPUs an instance may
run on.

A package (and its DRAM) zone measures one socket: its energy must be split
by the CPU time spent on that socket's CPUs, so an instance pinned to
socket 0 (Nova's ``hw:cpu_policy=dedicated``, NUMA flavors) never pays for
socket 1. The socket of a CPU is
``/sys/devices/system/cpu/cpuN/topology/physical_package_id``, the same
index as the ``intel-rapl:N`` package zone.
"""

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


def allowed_cpus_from_xml(root):
    """Host CPUs a libvirt domain's threads may run on, from its XML
    (an ElementTree root): the union of every vCPU's pinning, the
    emulator's and the I/O threads', each defaulting to
    ``<vcpu cpuset=...>``. None when any of them may run anywhere
    (unpinned, or ``placement='auto'`` left to numad).

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
    sets = [pins.get(index) or default for index in range(vcpus)]
    sets.append(emulator or default)
    iothreads = _count(root.findtext('iothreads'), 0)
    if iothreads:
        pinned = [p for p in (iothread_pins or []) if p]
        sets.extend(pinned if len(pinned) >= iothreads else [default])
    if any(s is None for s in sets):
        return None
    return frozenset().union(*sets)
