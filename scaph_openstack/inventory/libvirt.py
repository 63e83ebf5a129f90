"""Instances from libvirt: every defined domain, one bulk call per tick,
under a deadline.

What is asked, and what may block:

- ``getAllDomainStats(STATE | CPU_TOTAL, NOWAIT)`` over every domain
  libvirt defines (running, paused, shut off). ``cpu.time`` is the domain
  cgroup's CPU time (vCPUs, emulator and iothreads together; without a
  cgroup libvirt reads /proc/PID/stat), which is why we ask libvirt rather
  than reading cgroup files ourselves. STATE needs no QEMU monitor job.
  CPU_TOTAL does in libvirt 9.0 (qemu_driver.c: it asks QEMU's
  ``query-stats`` for halt-polling times under a query job): NOWAIT makes
  libvirt skip that part, instead of waiting up to 30 s, for a domain
  whose job another call holds, for instance a call of ours stuck in the
  monitor of a QEMU in D state. ``vcpu.N.time`` (the VCPU group) is not
  asked in bulk: it would add a monitor command for every domain.
- Per-vCPU times, needed only for domains whose vCPUs are pinned to
  different sockets (``pins.per_vcpu``), come from ``virDomainGetVcpus``
  for those domains only: /proc per vCPU thread, no monitor job.
- The domain XML (Nova metadata, pinning) is read when a domain is first
  seen and again when it starts (a new domain ID) or is renamed, not on
  every tick.

Every call of a tick (connect, the bulk call, those per-domain calls) runs
in a worker thread under ``call_timeout`` (libvirt-python releases the
GIL). A tick whose call is late raises InventoryUnavailable and leaves the
call behind; its result is dropped when it returns. While a call is left
behind, the next tick still tries once, on a new connection: if a QEMU
hung (the common case: NFS, Ceph), the stuck call holds that domain's job
and NOWAIT lets the new one skip it, so every other instance is metered.
Once ``MAX_ABANDONED`` calls are left behind (libvirtd itself is hung),
no new call is made until one returns: ticks raise at once. The
connection of a stuck call is closed when that call returns.

No libvirt keepalive: it needs a process-wide event loop thread, and all
it would add is turning the calls stuck on a hung libvirtd into errors,
after which connecting again hangs the same way; the deadline already
bounds the tick, MAX_ABANDONED the threads, and a libvirtd that dies or
restarts closes its socket, which fails the calls at once.
"""

import threading
import time
import xml.etree.ElementTree as ET

import libvirt
from oslo_log import log as logging

from scaph_openstack.inventory import base
from scaph_openstack.inventory import nova_metadata
from scaph_openstack.inventory import topology
from scaph_openstack import statelog

LOG = logging.getLogger(__name__)

STATS = libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
# No state filter: every defined domain, running, paused or shut off.
FLAGS = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT
# Calls left behind before the inventory stops calling libvirt: one stuck
# in a hung QEMU's monitor is no reason to stop metering the others; a
# second one stuck as well means libvirtd itself does not answer.
MAX_ABANDONED = 2

# libvirt's domain states. A QEMU that exists but whose vCPUs do not run
# (paused, suspended to RAM, crashed and preserved) is "paused": its CPU
# time is still read (the emulator may still work) and it keeps its share.
# BLOCKED and SHUTDOWN (being shut down) still run. NOSTATE is decided by
# whether libvirt reported a CPU time.
DOMAIN_STATES = {
    libvirt.VIR_DOMAIN_RUNNING: base.STATE_RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: base.STATE_RUNNING,
    libvirt.VIR_DOMAIN_SHUTDOWN: base.STATE_RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: base.STATE_PAUSED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: base.STATE_PAUSED,
    libvirt.VIR_DOMAIN_CRASHED: base.STATE_PAUSED,
    libvirt.VIR_DOMAIN_SHUTOFF: base.STATE_SHUTOFF,
}


def _silence_libvirt_stderr():
    # libvirt prints every error to stderr by default; we log them instead.
    libvirt.registerErrorHandler(lambda ctx, err: None, None)


def instance_state(code, cpu_time):
    """base.STATE_* of a domain from its ``state.state`` and whether it
    reported a CPU time; None when it cannot be said (skip it this tick)."""
    state = DOMAIN_STATES.get(code)
    if state == base.STATE_SHUTOFF:
        return state
    has_cpu = isinstance(cpu_time, int) and cpu_time >= 0
    if not has_cpu:
        # An active domain without CPU time (its QEMU exiting right now):
        # reporting 0 would look like a restart; say nothing this tick.
        return None
    return state or base.STATE_RUNNING


class _Call:
    """One function run in a daemon thread (it must never keep the agent
    from exiting), whose caller may stop waiting for it."""

    def __init__(self, fn, conn, now, wall):
        self.fn = fn
        self.conn = conn            # the connection it uses, or None
        self.started = now          # monotonic
        self.started_wall = wall
        self.done = threading.Event()
        self.result = self.error = None
        threading.Thread(target=self._run, name='libvirt-call',
                         daemon=True).start()

    def _run(self):
        try:
            self.result = self.fn()
        except BaseException as exc:  # handed to the caller, never lost
            self.error = exc
        finally:
            self.done.set()


class _Fetched:
    """What one tick got from libvirt (built in the worker thread)."""

    def __init__(self, conn, opened, instances, identities):
        self.conn = conn            # the connection used
        self.opened = opened        # True when this call opened it
        self.instances = instances
        self.identities = identities


class _ConnectionLost(Exception):
    def __init__(self, error, conn):
        super().__init__(str(error))
        self.error, self.conn = error, conn


class LibvirtInventory(base.Inventory):

    name = 'libvirt'

    def __init__(self, uri='qemu:///system', reconnect_min=0.5,
                 reconnect_max=4.0, call_timeout=5.0, clock=time.monotonic,
                 opener=None, wallclock=time.time):
        _silence_libvirt_stderr()
        self.uri = uri
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.call_timeout = call_timeout
        self.clock = clock
        self.wallclock = wallclock
        self._open = opener or libvirt.openReadOnly
        self._conn = None
        # uuid -> ((domain ID, name), identity, CpuPins or None, vCPUs)
        self._identities = {}
        self._backoff = reconnect_min
        self._next_attempt = 0.0
        self._abandoned = []        # _Calls the ticks stopped waiting for
        self._retired = []          # connections to close when unused
        self._states = statelog.StateLog(LOG)

    # -- calls under a deadline ---------------------------------------------
    def _reap(self):
        """Forget left-behind calls that returned; their results are
        dropped (a later tick has read newer values). A connection a late
        call opened is closed, one a late call found broken is retired."""
        for call in [c for c in self._abandoned if c.done.is_set()]:
            self._abandoned.remove(call)
            LOG.info('A libvirt call left behind %.1fs ago returned (%s); '
                     'its result was dropped',
                     self.clock() - call.started,
                     'failed: %s' % call.error if call.error else 'ok')
            if isinstance(call.result, _Fetched) and call.result.opened:
                self._retire(call.result.conn)
            elif isinstance(call.error, _ConnectionLost):
                self._retire(call.error.conn)
        self._close_retired()

    def _retire(self, conn):
        if conn is None:
            return
        if conn is self._conn:
            self._conn = None
        if conn not in self._retired:
            self._retired.append(conn)

    def _close_retired(self):
        """Close retired connections no call is using any more, in a
        thread of their own: closing sends libvirtd one more RPC."""
        busy = [c.conn for c in self._abandoned]
        for conn in [c for c in self._retired
                     if not any(c is b for b in busy)]:
            self._retired.remove(conn)
            _Call(lambda conn=conn: _close_quietly(conn), None,
                  self.clock(), self.wallclock())

    def _call(self, fn, conn):
        """fn() in a worker, waiting at most call_timeout; raises
        InventoryUnavailable when late (the call is left behind)."""
        call = _Call(fn, conn, self.clock(), self.wallclock())
        if not call.done.wait(self.call_timeout):
            self._abandoned.append(call)
            # No further call on that connection: next to a stuck call,
            # libvirt 9.0's client sometimes leaves another call on the
            # same connection unanswered (a new connection always
            # worked). It is closed once the stuck call returns.
            self._retire(conn)
            self._states.failed(
                'libvirt', 'libvirt at %s did not answer within %.1fs '
                '(a hung QEMU or libvirtd): the call is left behind, '
                'trying again on a new connection', self.uri,
                self.call_timeout,
                level=logging.WARNING, state='hung')
            raise base.InventoryUnavailable(
                'libvirt did not answer within %.1fs' % self.call_timeout)
        if call.error is not None:
            raise call.error
        return call.result

    # -- connection ----------------------------------------------------------
    def _check_reachable(self):
        self._reap()
        if len(self._abandoned) >= MAX_ABANDONED:
            oldest = min(self._abandoned, key=lambda c: c.started)
            raise base.InventoryUnavailable(
                'libvirt still waiting since %s (%.0fs): no new call until '
                'one returns' % (
                    time.strftime('%H:%M:%S',
                                  time.localtime(oldest.started_wall)),
                    self.clock() - oldest.started))
        if self._conn is None:
            now = self.clock()
            if now < self._next_attempt:
                raise base.InventoryUnavailable(
                    'libvirt unavailable, next attempt in %.1fs'
                    % (self._next_attempt - now))

    def _failed(self, exc):
        self._next_attempt = self.clock() + self._backoff
        self._backoff = min(self._backoff * 2, self.reconnect_max)
        self._states.failed(
            'libvirt', 'libvirt at %s unavailable, retrying with backoff: '
            '%s', self.uri, exc, level=logging.WARNING, state='error')

    # -- one tick ------------------------------------------------------------
    def _fetch(self, conn, known):
        """Everything one tick needs from libvirt. Runs in the worker:
        reads ``known`` and changes nothing else, so a late one is simply
        dropped."""
        opened = conn is None
        if opened:
            conn = self._open(self.uri)
        try:
            records = conn.getAllDomainStats(STATS, FLAGS)
        except libvirt.libvirtError as exc:
            if opened:
                _close_quietly(conn)
            raise _ConnectionLost(exc, None if opened else conn)
        instances, identities = [], {}
        for domain, stats in records:
            usage, entry = self._usage(conn, domain, stats, known)
            if usage is not None:
                instances.append(usage)
                identities[usage.uuid] = entry
        return _Fetched(conn, opened, tuple(instances), identities)

    def _describe(self, conn, domain, known):
        """((domain ID, name), identity, CpuPins, vCPUs) of a domain: from
        the cache while it runs as the same domain, else from its XML."""
        uuid = domain.UUIDString()
        key = (domain.ID(), domain.name())
        entry = known.get(uuid)
        if entry is not None and entry[0] == key:
            return entry
        xml_text = self._per_domain(conn, domain, lambda: domain.XMLDesc(0))
        if xml_text is None:
            return None
        try:
            identity = nova_metadata.identity_from_xml(xml_text)
        except nova_metadata.MetadataError as exc:
            LOG.warning('Domain %s: unusable metadata (%s); counting it '
                        'under its domain name', domain.name(), exc)
            identity = base.InstanceIdentity(uuid=uuid, name=domain.name())
        try:
            root = ET.fromstring(xml_text)
        except ET.ParseError:
            return key, identity, None, identity.vcpus or 1
        return (key, identity, topology.pins_from_xml(root),
                _vcpu_count(root) or identity.vcpus or 1)

    @staticmethod
    def _per_domain(conn, domain, fn):
        """fn()'s value, or None when the domain changed under us (gone,
        stopped): not an outage, just not known this tick. A connection
        that broke is one."""
        try:
            return fn()
        except libvirt.libvirtError as exc:
            if not conn.isAlive():
                raise _ConnectionLost(exc, conn)
            LOG.debug('Domain changed while being read: %s', exc)
            return None

    def _vcpu_times(self, conn, domain, pins):
        """{vCPU: cumulative ns} from virDomainGetVcpus (no monitor job),
        or None."""
        reply = self._per_domain(conn, domain, domain.vcpus)
        if not reply:
            return None
        times = {number: cpu_ns for number, _state, cpu_ns, _cpu
                 in reply[0]}
        wanted = {index: times.get(index)
                  for index in range(len(pins.vcpus))}
        if not all(isinstance(t, int) for t in wanted.values()):
            return None
        return wanted

    def _usage(self, conn, domain, stats, known):
        cpu_time = stats.get('cpu.time')
        state = instance_state(stats.get('state.state'), cpu_time)
        if state is None:
            return None, None
        entry = self._describe(conn, domain, known)
        if entry is None:
            return None, None
        _key, identity, pins, vcpus = entry
        if state == base.STATE_SHUTOFF:
            return base.InstanceUsage(identity, 0, vcpus, pins, None,
                                      state), entry
        vcpu_times = None
        if pins is not None and pins.per_vcpu:
            # vCPUs pinned apart (a guest across NUMA nodes): each vCPU's
            # time tells which socket it used (topology.socket_cpu_ns).
            vcpu_times = self._vcpu_times(conn, domain, pins)
        return base.InstanceUsage(identity, cpu_time, vcpus, pins,
                                  vcpu_times, state), entry

    def list_instances(self):
        self._check_reachable()
        conn, known = self._conn, dict(self._identities)
        try:
            fetched = self._call(lambda: self._fetch(conn, known), conn)
        except _ConnectionLost as exc:
            self._retire(exc.conn)
            self._close_retired()
            self._failed(exc.error)
            raise base.InventoryUnavailable(str(exc.error))
        except libvirt.libvirtError as exc:     # opening failed
            self._failed(exc)
            raise base.InventoryUnavailable(str(exc))
        if fetched.opened:
            self._conn = fetched.conn
            self._backoff, self._next_attempt = self.reconnect_min, 0.0
            LOG.info('Connected to libvirt at %s', self.uri)
        self._states.recovered('libvirt', 'libvirt at %s answers again',
                               self.uri)
        # Identities of domains no longer defined are forgotten: a domain
        # defined again with the same UUID may carry new metadata.
        self._identities = fetched.identities
        return fetched.instances

    def close(self):
        # A deliberate close is not an outage: no "unavailable" warning.
        # A connection a left-behind call still uses is not closed under
        # it (the agent is exiting; the call's thread is a daemon).
        self._reap()
        if self._conn is not None:
            self._retire(self._conn)
        busy = [c.conn for c in self._abandoned]
        for conn in list(self._retired):
            if not any(conn is b for b in busy):
                self._retired.remove(conn)
                call = _Call(lambda conn=conn: _close_quietly(conn), None,
                             self.clock(), self.wallclock())
                call.done.wait(self.call_timeout)


def _vcpu_count(root):
    """The vCPUs a domain XML says it runs (``<vcpu current=N>``, else
    its text); None if unreadable. A live hot-plug is seen at the next
    start, like pinning (the XML is read once per start)."""
    vcpu = root.find('vcpu')
    if vcpu is None:
        return None
    try:
        count = int((vcpu.get('current') or vcpu.text or '').strip())
    except ValueError:
        return None
    return count if count > 0 else None


def _close_quietly(conn):
    try:
        conn.close()
    except libvirt.libvirtError:
        pass  # a broken connection is what we are closing


def from_conf(conf):
    return LibvirtInventory(conf.libvirt.connection_uri,
                            conf.libvirt.reconnect_min,
                            conf.libvirt.reconnect_max,
                            conf.libvirt.call_timeout)
