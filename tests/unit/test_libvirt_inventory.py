"""The libvirt inventory: what it asks, its deadline, domain states and
the identity cache, against fake connections (the real libvirtd is in
tests/functional/faults/test_hangs.py and test_lifecycle.py)."""

import threading
import time

import libvirt
import pytest

from scaph_openstack.inventory import base
from scaph_openstack.inventory import libvirt as libvirt_inventory
from tests.unit import fakes

XML = """<domain><name>%s</name><uuid>%s</uuid>%s</domain>"""
ONE_VCPU = '<vcpu>1</vcpu>'
# vCPU 0 on CPU 0, vCPU 1 on CPU 1: per-vCPU times are needed.
SPLIT_PINS = ("<vcpu>2</vcpu><cputune><vcpupin vcpu='0' cpuset='0'/>"
              "<vcpupin vcpu='1' cpuset='1'/><emulatorpin cpuset='0'/>"
              "</cputune>")
TIMEOUT = 0.1


def no_domain():
    return fakes.libvirt_error(
        'Domain not found',
        (libvirt.VIR_ERR_NO_DOMAIN, 0, 'Domain not found', 0, '', None,
         None, 0, 0))


class Domain:
    def __init__(self, uuid, dom_id=1, name=None, body=ONE_VCPU,
                 gone=False, vcpu_ns=None):
        self.uuid, self.dom_id, self.gone = uuid, dom_id, gone
        self._name = name or 'd-' + uuid
        self.body = body
        self.vcpu_ns = vcpu_ns
        self.xml_reads = self.vcpu_reads = 0

    def UUIDString(self):
        return self.uuid

    def ID(self):
        return self.dom_id

    def name(self):
        return self._name

    def XMLDesc(self, flags):
        self.xml_reads += 1
        if self.gone:
            raise no_domain()
        return XML % (self._name, self.uuid, self.body)

    def vcpus(self):
        self.vcpu_reads += 1
        if self.vcpu_ns is None:
            raise fakes.libvirt_error('domain is not running')
        return ([(n, 1, ns, n) for n, ns in enumerate(self.vcpu_ns)],
                [(True,)] * len(self.vcpu_ns))


def record(domain, cpu=10, state=libvirt.VIR_DOMAIN_RUNNING):
    stats = {'state.state': state, 'state.reason': 1}
    if cpu is not None:
        stats['cpu.time'] = cpu
    return domain, stats


class Connection:
    """A libvirt connection; getAllDomainStats blocks while ``block`` (an
    Event) is not set."""

    def __init__(self, records=(), block=None, error=None):
        self.records = list(records)
        self.block = block
        self.error = error
        self.alive = True
        self.calls = []
        self.closed = 0

    def getAllDomainStats(self, stats, flags):
        self.calls.append((stats, flags))
        if self.block is not None:
            self.block.wait()
        if self.error is not None:
            raise self.error
        return list(self.records)

    def isAlive(self):
        return self.alive

    def close(self):
        self.closed += 1
        return 0


class Opener:
    """libvirt.openReadOnly: hands out ``conns`` in turn; blocks while
    ``block`` is not set."""

    def __init__(self, *conns, block=None):
        self.conns = list(conns)
        self.block = block
        self.opened = 0

    def __call__(self, uri):
        self.opened += 1
        if self.block is not None:
            self.block.wait()
        conn = self.conns.pop(0)
        if isinstance(conn, Exception):
            raise conn
        return conn


def inventory(*conns, block=None, **kwargs):
    opener = Opener(*conns, block=block)
    kwargs.setdefault('call_timeout', TIMEOUT)
    return (libvirt_inventory.LibvirtInventory(opener=opener, **kwargs),
            opener)


def timed(fn):
    started = time.monotonic()
    try:
        return fn(), time.monotonic() - started
    except base.InventoryUnavailable as exc:
        return exc, time.monotonic() - started


def wait_for(predicate, timeout=5):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, 'never happened'
        time.sleep(0.005)


# -- what is asked -----------------------------------------------------------

def test_asks_state_and_cpu_total_of_every_domain_without_waiting():
    """No VCPU group (a monitor command per domain), no RUNNING filter
    (paused and shut-off domains are instances), NOWAIT (skip the
    monitor part of a domain whose job another call holds)."""
    conn = Connection([record(Domain('a'))])
    inv, _ = inventory(conn)
    inv.list_instances()
    ((stats, flags),) = conn.calls
    assert stats == (libvirt.VIR_DOMAIN_STATS_STATE |
                     libvirt.VIR_DOMAIN_STATS_CPU_TOTAL)
    assert not stats & libvirt.VIR_DOMAIN_STATS_VCPU
    assert flags == libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT
    assert not flags & (libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE |
                        libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_RUNNING)


def test_per_vcpu_times_only_for_domains_pinned_across_sockets():
    split = Domain('split', body=SPLIT_PINS, vcpu_ns=[700, 300])
    plain = Domain('plain', vcpu_ns=[5])
    inv, _ = inventory(Connection([record(split, 1500), record(plain)]))
    usage = {u.uuid: u for u in inv.list_instances()}
    assert usage['split'].vcpu_time_ns == {0: 700, 1: 300}
    assert usage['split'].vcpus == 2
    assert usage['plain'].vcpu_time_ns is None
    assert (split.vcpu_reads, plain.vcpu_reads) == (1, 0)


def test_per_vcpu_times_of_a_domain_that_just_stopped_are_left_out():
    split = Domain('split', body=SPLIT_PINS, vcpu_ns=None)
    inv, _ = inventory(Connection([record(split, 1500)]))
    (usage,) = inv.list_instances()
    assert usage.cpu_time_ns == 1500 and usage.vcpu_time_ns is None


# -- states ------------------------------------------------------------------

@pytest.mark.parametrize('code, expected', [
    (libvirt.VIR_DOMAIN_RUNNING, base.STATE_RUNNING),
    (libvirt.VIR_DOMAIN_BLOCKED, base.STATE_RUNNING),
    (libvirt.VIR_DOMAIN_SHUTDOWN, base.STATE_RUNNING),
    (libvirt.VIR_DOMAIN_NOSTATE, base.STATE_RUNNING),
    (libvirt.VIR_DOMAIN_PAUSED, base.STATE_PAUSED),
    (libvirt.VIR_DOMAIN_PMSUSPENDED, base.STATE_PAUSED),
    (libvirt.VIR_DOMAIN_CRASHED, base.STATE_PAUSED),
    (libvirt.VIR_DOMAIN_SHUTOFF, base.STATE_SHUTOFF),
])
def test_domain_states(code, expected):
    inv, _ = inventory(Connection([record(Domain('a'), 42, code)]))
    (usage,) = inv.list_instances()
    assert usage.state == expected
    assert usage.cpu_time_ns == (0 if expected == base.STATE_SHUTOFF
                                 else 42)


def test_a_shut_off_domain_has_no_cpu_time_and_no_vcpu_times():
    split = Domain('split', dom_id=-1, body=SPLIT_PINS, vcpu_ns=[1, 2])
    inv, _ = inventory(Connection([
        record(split, None, libvirt.VIR_DOMAIN_SHUTOFF)]))
    (usage,) = inv.list_instances()
    assert (usage.state, usage.cpu_time_ns, usage.vcpu_time_ns,
            usage.vcpus) == (base.STATE_SHUTOFF, 0, None, 2)
    assert split.vcpu_reads == 0


def test_an_active_domain_without_cpu_time_is_left_out_this_tick():
    """Its QEMU is exiting: 0 would look like a restart to the tick."""
    inv, _ = inventory(Connection([
        record(Domain('a'), None, libvirt.VIR_DOMAIN_RUNNING),
        record(Domain('b'), 7, libvirt.VIR_DOMAIN_PAUSED)]))
    (usage,) = inv.list_instances()
    assert (usage.uuid, usage.state) == ('b', base.STATE_PAUSED)


# -- identities --------------------------------------------------------------

def test_xml_is_read_once_per_start_not_every_tick():
    dom = Domain('a', dom_id=-1)
    conn = Connection([record(dom, None, libvirt.VIR_DOMAIN_SHUTOFF)])
    inv, _ = inventory(conn)
    for _ in range(3):
        inv.list_instances()
    assert dom.xml_reads == 1
    dom.dom_id = 7                                   # started
    conn.records = [record(dom, 5)]
    for _ in range(3):
        inv.list_instances()
    assert dom.xml_reads == 2
    conn.records = [record(dom, 6, libvirt.VIR_DOMAIN_PAUSED)]
    inv.list_instances()                             # paused: same domain
    assert dom.xml_reads == 2
    dom._name = 'renamed'
    inv.list_instances()
    assert dom.xml_reads == 3
    dom.dom_id = 8                                   # restarted
    inv.list_instances()
    assert dom.xml_reads == 4


def test_a_domain_defined_again_is_described_again():
    """A domain undefined and defined again with the same UUID (resize)
    may carry new metadata."""
    first = Domain('a', dom_id=-1, name='old')
    conn = Connection([record(first, None, libvirt.VIR_DOMAIN_SHUTOFF)])
    inv, _ = inventory(conn)
    (usage,) = inv.list_instances()
    assert usage.identity.name == 'old'
    conn.records = []
    assert inv.list_instances() == ()
    again = Domain('a', dom_id=-1, name='old')
    again.body = '<vcpu>4</vcpu>'
    conn.records = [record(again, None, libvirt.VIR_DOMAIN_SHUTOFF)]
    (usage,) = inv.list_instances()
    assert again.xml_reads == 1 and usage.vcpus == 4


def test_a_domain_that_vanishes_mid_tick_is_skipped_not_an_outage():
    inv, _ = inventory(Connection([
        record(Domain('a'), 10),
        record(Domain('b', gone=True), 20)]))
    (usage,) = inv.list_instances()
    assert usage.uuid == 'a' and usage.cpu_time_ns == 10


def test_a_connection_that_breaks_mid_tick_is_an_outage():
    conn = Connection([record(Domain('a', gone=True))])
    conn.alive = False
    inv, opener = inventory(conn, Connection([record(Domain('a'))]),
                            reconnect_min=0.01)
    with pytest.raises(base.InventoryUnavailable):
        inv.list_instances()
    wait_for(lambda: conn.closed == 1)
    time.sleep(0.02)                                 # the backoff
    (usage,) = inv.list_instances()
    assert usage.uuid == 'a' and opener.opened == 2


# -- the deadline ------------------------------------------------------------

def test_a_stuck_call_is_left_behind_and_the_next_tick_uses_a_new_connection():
    """A QEMU in D state: the call that entered its monitor hangs; the
    next one, on a new connection, skips it (NOWAIT) and answers."""
    release = threading.Event()
    stuck = Connection([record(Domain('a'))], block=release)
    fresh = Connection([record(Domain('a'), 20), record(Domain('b'), 30)])
    inv, opener = inventory(stuck, fresh)
    error, took = timed(inv.list_instances)
    assert isinstance(error, base.InventoryUnavailable)
    assert 'did not answer within 0.1s' in str(error)
    assert TIMEOUT <= took < TIMEOUT + 0.5
    usage, took = timed(inv.list_instances)
    assert {u.uuid: u.cpu_time_ns for u in usage} == {'a': 20, 'b': 30}
    assert took < TIMEOUT and opener.opened == 2
    assert len(stuck.calls) == 1 and stuck.closed == 0
    release.set()                                    # the QEMU answers
    wait_for(lambda: all(c.done.is_set() for c in inv._abandoned))
    usage = inv.list_instances()                     # its result dropped
    assert {u.uuid: u.cpu_time_ns for u in usage} == {'a': 20, 'b': 30}
    wait_for(lambda: stuck.closed == 1)              # and its connection
    assert fresh.closed == 0 and len(fresh.calls) == 2


def test_a_hung_libvirtd_gets_no_pile_of_calls():
    """Two calls left behind: no third until one returns, and the tick
    is told at once."""
    release = threading.Event()
    stuck = Connection([record(Domain('a'))], block=release)
    late = Connection([record(Domain('a'), 5)])
    good = Connection([record(Domain('a'), 50)])
    inv, opener = inventory(stuck, late, good)
    for _ in range(2):                 # the bulk call, then a new connect
        opener.block = None if opener.opened == 0 else release
        error, took = timed(inv.list_instances)
        assert isinstance(error, base.InventoryUnavailable)
        assert took >= TIMEOUT
    for _ in range(3):
        error, took = timed(inv.list_instances)
        assert isinstance(error, base.InventoryUnavailable)
        assert 'still waiting since' in str(error)
        assert took < TIMEOUT / 2
    assert opener.opened == 2 and len(stuck.calls) == 1
    release.set()                      # libvirtd answers again
    opener.block = None
    wait_for(lambda: all(c.done.is_set() for c in inv._abandoned))
    (usage,) = inv.list_instances()
    assert usage.cpu_time_ns == 50 and opener.opened == 3
    # the stuck call's connection and the one opened too late: closed
    wait_for(lambda: stuck.closed == 1 and late.closed == 1)
    assert good.closed == 0


def test_connecting_is_under_the_deadline():
    release = threading.Event()
    inv, opener = inventory(Connection([record(Domain('a'))]),
                            block=release)
    error, took = timed(inv.list_instances)
    assert isinstance(error, base.InventoryUnavailable)
    assert TIMEOUT <= took < TIMEOUT + 0.5
    release.set()


def test_close_does_not_wait_for_a_stuck_call():
    release = threading.Event()
    stuck = Connection([record(Domain('a'))], block=release)
    inv, _ = inventory(stuck)
    with pytest.raises(base.InventoryUnavailable):
        inv.list_instances()
    started = time.monotonic()
    inv.close()
    assert time.monotonic() - started < TIMEOUT / 2
    assert stuck.closed == 0           # never closed under a call
    release.set()


def test_close_closes_an_idle_connection():
    conn = Connection([record(Domain('a'))])
    inv, _ = inventory(conn)
    inv.list_instances()
    inv.close()
    assert conn.closed == 1


def test_an_outage_is_logged_once_and_its_end_once(caplog):
    refused = fakes.libvirt_error('Connection refused')
    conn = Connection([record(Domain('a'))])
    inv, _ = inventory(refused, refused, refused, conn, reconnect_min=0.01,
                       reconnect_max=0.01)
    caplog.set_level('INFO', logger='scaph_openstack.inventory.libvirt')
    for _ in range(3):
        with pytest.raises(base.InventoryUnavailable):
            inv.list_instances()
        time.sleep(0.02)
    inv.list_instances()
    messages = [r.getMessage() for r in caplog.records]
    assert sum('unavailable, retrying' in m for m in messages) == 1
    assert sum('answers again' in m for m in messages) == 1


def test_call_timeout_comes_from_the_configuration():
    from oslo_config import cfg

    from scaph_openstack import conf as scaph_conf
    conf = cfg.ConfigOpts()
    scaph_conf.register_opts(conf)
    conf([])
    assert libvirt_inventory.from_conf(conf).call_timeout == 5.0
    conf.set_override('call_timeout', 0.3, group='libvirt')
    assert libvirt_inventory.from_conf(conf).call_timeout == 0.3
