"""Instances from libvirt: one bulk getAllDomainStats call per tick.

cpu.time is the domain cgroup's CPU time: vCPUs, emulator and iothreads
together, on cgroup v1 and v2 alike, which is why we ask libvirt rather
than reading cgroup files ourselves.
"""

import time
import xml.etree.ElementTree as ET

import libvirt
from oslo_log import log as logging

from scaph_openstack.inventory import base
from scaph_openstack.inventory import nova_metadata
from scaph_openstack.inventory import topology

LOG = logging.getLogger(__name__)

STATS = (libvirt.VIR_DOMAIN_STATS_CPU_TOTAL | libvirt.VIR_DOMAIN_STATS_VCPU
         | libvirt.VIR_DOMAIN_STATS_STATE)
FLAGS = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_RUNNING


def _silence_libvirt_stderr():
    # libvirt prints every error to stderr by default; we log them instead.
    libvirt.registerErrorHandler(lambda ctx, err: None, None)


class LibvirtInventory(base.Inventory):

    name = 'libvirt'

    def __init__(self, uri='qemu:///system', reconnect_min=0.5,
                 reconnect_max=4.0, clock=time.monotonic):
        _silence_libvirt_stderr()
        self.uri = uri
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.clock = clock
        self._conn = None
        self._identities = {}   # uuid -> (identity, CpuPins or None)
        self._backoff = reconnect_min
        self._next_attempt = 0.0
        self._connected_state = None  # None (never tried), True, False

    def _set_state(self, connected, reason=''):
        if connected != self._connected_state:
            if connected:
                LOG.info('Connected to libvirt at %s', self.uri)
            else:
                LOG.warning('libvirt at %s unavailable, retrying with '
                            'backoff: %s', self.uri, reason)
        self._connected_state = connected

    def _connect(self):
        now = self.clock()
        if now < self._next_attempt:
            raise base.InventoryUnavailable(
                'libvirt unavailable, next attempt in %.1fs'
                % (self._next_attempt - now))
        try:
            self._conn = libvirt.openReadOnly(self.uri)
        except libvirt.libvirtError as exc:
            self._next_attempt = now + self._backoff
            self._backoff = min(self._backoff * 2, self.reconnect_max)
            self._set_state(False, exc)
            raise base.InventoryUnavailable(str(exc))
        self._backoff = self.reconnect_min
        self._next_attempt = 0.0
        self._set_state(True)

    def _close_connection(self):
        if self._conn is not None:
            try:
                self._conn.close()
            except libvirt.libvirtError:
                pass  # a broken connection is what we are closing
        self._conn = None

    def _disconnect(self, reason):
        self._close_connection()
        self._set_state(False, reason)

    def _describe(self, domain):
        """(identity, CpuPins) of a domain, from its XML, once."""
        uuid = domain.UUIDString()
        known = self._identities.get(uuid)
        if known is None:
            xml_text = domain.XMLDesc(0)
            try:
                identity = nova_metadata.identity_from_xml(xml_text)
            except nova_metadata.MetadataError as exc:
                LOG.warning('Domain %s: unusable metadata (%s); counting it '
                            'under its domain name', domain.name(), exc)
                identity = base.InstanceIdentity(uuid=uuid,
                                                 name=domain.name())
            try:
                pins = topology.pins_from_xml(ET.fromstring(xml_text))
            except ET.ParseError:
                pins = None
            known = self._identities[uuid] = (identity, pins)
        return known

    def _usage(self, domain, stats):
        cpu_time = stats.get('cpu.time')
        if not isinstance(cpu_time, int) or cpu_time < 0:
            return None
        try:
            identity, pins = self._describe(domain)
        except libvirt.libvirtError as exc:
            # Gone between the bulk call and this one (destroyed, migrated
            # away): not an outage, just not an instance of this tick.
            LOG.debug('Domain vanished while being described: %s', exc)
            return None
        vcpus = stats.get('vcpu.current') or identity.vcpus or 1
        vcpu_times = None
        if pins is not None and pins.per_vcpu:
            # vCPUs pinned apart (a guest across NUMA nodes): each vCPU's
            # time tells which socket it used (topology.socket_cpu_ns).
            vcpu_times = {index: stats.get('vcpu.%d.time' % index)
                          for index in range(len(pins.vcpus))}
            if not all(isinstance(t, int) for t in vcpu_times.values()):
                vcpu_times = None
        return base.InstanceUsage(identity, cpu_time, int(vcpus), pins,
                                  vcpu_times)

    def list_instances(self):
        if self._conn is None:
            self._connect()
        try:
            records = self._conn.getAllDomainStats(STATS, FLAGS)
        except libvirt.libvirtError as exc:
            self._disconnect(exc)
            raise base.InventoryUnavailable(str(exc))
        instances, seen = [], set()
        for domain, stats in records:
            usage = self._usage(domain, stats)
            if usage is not None:
                instances.append(usage)
                seen.add(usage.uuid)
        # Forget identities of domains that stopped: a redefined domain
        # with the same UUID may carry new metadata (resize, rename).
        for uuid in set(self._identities) - seen:
            del self._identities[uuid]
        return tuple(instances)

    def close(self):
        # A deliberate close is not an outage: no "unavailable" warning.
        self._close_connection()


def from_conf(conf):
    return LibvirtInventory(conf.libvirt.connection_uri,
                            conf.libvirt.reconnect_min,
                            conf.libvirt.reconnect_max)
