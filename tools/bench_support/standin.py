"""A libvirt connection stand-in built from recorded real replies.

libvirt's own ``test:///default`` driver returns no ``cpu.time`` from
``getAllDomainStats``, so it cannot drive the inventory. Instead, one
real running guest is recorded (``record()``): the
``getAllDomainStats(STATE|CPU_TOTAL|VCPU, RUNNING)`` reply, the
``domainListGetStats([dom], 0)`` reply (every stats group), ``info()``,
``state()``, ``memoryStats()``, the live domain XML and its Nova metadata
element. ``StandInConnection`` then serves N domains made from that
recording, answering as libvirt 9 does:

* ``getAllDomainStats(stats, flags)`` and ``domainListGetStats(doms,
  stats, flags)`` for any set of stats groups (0: all): the recorded keys
  of those groups, in libvirt's order, with the same Python types;
  per-vCPU keys repeated for multi-vCPU flavours; the state filters
  (ACTIVE, INACTIVE, PERSISTENT, TRANSIENT, RUNNING, PAUSED, SHUTOFF,
  OTHER) and NOWAIT, BACKING, ENFORCE_STATS accepted; filters with a
  domain list, or unknown flags, are errors as in libvirt;
* domains in any state (``set_state``): a shut-off domain has ID -1, no
  ``cpu.*`` keys, only ``state.*``, ``balloon.current|maximum``,
  ``vcpu.current|maximum`` and ``block.count`` (what libvirt 9's QEMU
  driver reports for an inactive domain), its inactive XML (no ``id``),
  and ``vcpus()`` / ``memoryStats()`` fail with VIR_ERR_OPERATION_INVALID;
  a paused one keeps its CPU counters, which stand still; a domain
  started again gets a new ID;
* ``listAllDomains(flags)``, ``lookupByUUIDString``, ``lookupByName``,
  ``lookupByID``, and on domains ``ID``, ``name``, ``UUIDString``,
  ``XMLDesc``, ``metadata``, ``info``, ``state``, ``memoryStats``,
  ``vcpus``, ``isActive``, ``isPersistent``.

Like libvirt-python, every call returns fresh domain objects and fresh
dicts; what they are built from is prepared before timing starts, and the
cumulative CPU counters move only when ``advance()`` is called.

The real ``LibvirtInventory`` and Ceilometer's real ``LibvirtInspector``
and ``InstanceDiscovery`` run unchanged on top of it; only the RPC to
libvirtd is missing, which is what the real-guest row of the benchmark
measures.
"""

import json
import os
import random
import re
import time
import uuid as uuidlib

import libvirt

FORMAT = 'scaph-openstack.bench.libvirt-recording'
VERSION = 1
FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                       'recorded_libvirt.json')
NOVA_NS = 'http://openstack.org/xmlns/libvirt/nova/1.1'
# What record() asks of the real guest (a superset of what the inventory
# asks now; the stand-in serves any subset of the groups recorded).
STATS = (libvirt.VIR_DOMAIN_STATS_CPU_TOTAL | libvirt.VIR_DOMAIN_STATS_VCPU
         | libvirt.VIR_DOMAIN_STATS_STATE)
FLAGS = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_RUNNING
# Stats groups by key prefix, in the order libvirt's QEMU driver reports
# them (qemuDomainGetStatsWorkers).
GROUPS = (('state', libvirt.VIR_DOMAIN_STATS_STATE),
          ('cpu', libvirt.VIR_DOMAIN_STATS_CPU_TOTAL),
          ('balloon', libvirt.VIR_DOMAIN_STATS_BALLOON),
          ('vcpu', libvirt.VIR_DOMAIN_STATS_VCPU),
          ('net', libvirt.VIR_DOMAIN_STATS_INTERFACE),
          ('block', libvirt.VIR_DOMAIN_STATS_BLOCK),
          ('perf', libvirt.VIR_DOMAIN_STATS_PERF),
          ('iothread', libvirt.VIR_DOMAIN_STATS_IOTHREAD),
          ('memory', libvirt.VIR_DOMAIN_STATS_MEMORY),
          ('dirtyrate', libvirt.VIR_DOMAIN_STATS_DIRTYRATE),
          ('vm', libvirt.VIR_DOMAIN_STATS_VM))
GROUP_OF = dict(GROUPS)
ALL_GROUPS = 0
for _prefix, _bit in GROUPS:
    ALL_GROUPS |= _bit
# Keys libvirt 9 reports for an inactive domain (no cgroup, no QEMU).
INACTIVE_KEYS = ('state.state', 'state.reason', 'balloon.current',
                 'balloon.maximum', 'vcpu.current', 'vcpu.maximum',
                 'block.count')

_S = libvirt
STATE_RUNNING, STATE_PAUSED, STATE_SHUTOFF = 'running', 'paused', 'shutoff'
# (state code, reason) as libvirt reports them for each stand-in state.
STATE_CODES = {
    STATE_RUNNING: (_S.VIR_DOMAIN_RUNNING, _S.VIR_DOMAIN_RUNNING_BOOTED),
    STATE_PAUSED: (_S.VIR_DOMAIN_PAUSED, _S.VIR_DOMAIN_PAUSED_USER),
    STATE_SHUTOFF: (_S.VIR_DOMAIN_SHUTOFF, _S.VIR_DOMAIN_SHUTOFF_SHUTDOWN),
}
# virConnectGetAllDomainStats / virConnectListAllDomains filter flags.
_FILTER_ACTIVE = ((_S.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE, True),
                  (_S.VIR_CONNECT_GET_ALL_DOMAINS_STATS_INACTIVE, False))
_FILTER_PERSISTENT = (
    (_S.VIR_CONNECT_GET_ALL_DOMAINS_STATS_PERSISTENT, True),
    (_S.VIR_CONNECT_GET_ALL_DOMAINS_STATS_TRANSIENT, False))
_FILTER_STATE = ((_S.VIR_CONNECT_GET_ALL_DOMAINS_STATS_RUNNING,
                  STATE_RUNNING),
                 (_S.VIR_CONNECT_GET_ALL_DOMAINS_STATS_PAUSED, STATE_PAUSED),
                 (_S.VIR_CONNECT_GET_ALL_DOMAINS_STATS_SHUTOFF,
                  STATE_SHUTOFF),
                 (_S.VIR_CONNECT_GET_ALL_DOMAINS_STATS_OTHER, None))
STATS_FILTERS = 0
for _bit, _value in _FILTER_ACTIVE + _FILTER_PERSISTENT + _FILTER_STATE:
    STATS_FILTERS |= _bit
STATS_OTHER_FLAGS = (_S.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT
                     | _S.VIR_CONNECT_GET_ALL_DOMAINS_STATS_BACKING
                     | _S.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ENFORCE_STATS)
# listAllDomains: the same eight filters (same bits), and properties no
# stand-in domain has (managed save, autostart, snapshot, checkpoint).
LIST_HAS = (_S.VIR_CONNECT_LIST_DOMAINS_MANAGEDSAVE
            | _S.VIR_CONNECT_LIST_DOMAINS_AUTOSTART
            | _S.VIR_CONNECT_LIST_DOMAINS_HAS_SNAPSHOT
            | _S.VIR_CONNECT_LIST_DOMAINS_HAS_CHECKPOINT)
LIST_HAS_NOT = (_S.VIR_CONNECT_LIST_DOMAINS_NO_MANAGEDSAVE
                | _S.VIR_CONNECT_LIST_DOMAINS_NO_AUTOSTART
                | _S.VIR_CONNECT_LIST_DOMAINS_NO_SNAPSHOT
                | _S.VIR_CONNECT_LIST_DOMAINS_NO_CHECKPOINT)
# Flavour mix of the generated instances: (vcpus, memory MiB, name).
FLAVOURS = ((1, 512, 'm1.tiny'), (1, 2048, 'm1.small'),
            (2, 4096, 'm1.medium'), (4, 8192, 'm1.large'))
PROJECTS = 20
USERS = 50
_SEED_NS = uuidlib.UUID('5c0e6b8a-3f0e-4a53-9d2c-7a1f6c2b9e10')
_VCPU_KEY = re.compile(r'^vcpu\.(\d+)\.(.+)$')


class RecordingError(RuntimeError):
    pass


def libvirt_error(code, message, domain=_S.VIR_FROM_QEMU):
    """A libvirtError carrying ``code`` (get_error_code()), as libvirt
    raises it; not built from this thread's last real libvirt error."""
    exc = libvirt.libvirtError.__new__(libvirt.libvirtError)
    Exception.__init__(exc, message)
    exc.err = (code, domain, message, _S.VIR_ERR_ERROR, None, None, None,
               0, 0)
    return exc


def _types(stats):
    return {key: type(value).__name__ for key, value in stats.items()}


def groups_of(stats):
    """The stats groups a request names (0: every group)."""
    return stats or ALL_GROUPS


def record(conn, dom, source):
    """The recording of one running domain on a real connection."""
    dom_uuid = dom.UUIDString()
    replies = [s for d, s in conn.getAllDomainStats(STATS, FLAGS)
               if d.UUIDString() == dom_uuid]
    if not replies or 'cpu.time' not in replies[0]:
        raise RecordingError('getAllDomainStats gave no cpu.time for %s'
                             % dom_uuid)
    full = conn.domainListGetStats([dom], 0)[0][1]
    version = conn.getLibVersion()
    return {
        'format': FORMAT, 'version': VERSION,
        'recorded_at': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
        'source': source,
        'libvirt_daemon_version': '%d.%d.%d' % (
            version // 1000000, version // 1000 % 1000, version % 1000),
        'uuid': dom_uuid,
        'name': dom.name(),
        'xml': dom.XMLDesc(0),
        'nova_metadata': dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                                      NOVA_NS),
        'info': list(dom.info()),
        'state': list(dom.state()),
        'memory_stats': dom.memoryStats(),
        'all_domain_stats': replies[0],
        'all_domain_stats_types': _types(replies[0]),
        'domain_list_stats': full,
        'domain_list_stats_types': _types(full),
    }


def save(recording, path=FIXTURE):
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(recording, f, indent=1, sort_keys=False)
        f.write('\n')
    os.replace(tmp, path)


def load(path=FIXTURE):
    """A recording from a file; checks that JSON kept every value's type."""
    with open(path) as f:
        recording = json.load(f)
    if recording.get('format') != FORMAT or \
            recording.get('version') != VERSION:
        raise RecordingError('%s is not a version %d libvirt recording'
                             % (path, VERSION))
    for key in ('all_domain_stats', 'domain_list_stats'):
        if _types(recording[key]) != recording[key + '_types']:
            raise RecordingError('%s: %s types changed in the file'
                                 % (path, key))
    return recording


def instance_uuid(i):
    return str(uuidlib.uuid5(_SEED_NS, 'instance-%d' % i))


def _owner(kind, i):
    return uuidlib.uuid5(_SEED_NS, '%s-%d' % (kind, i)).hex


def _group_bit(key):
    return GROUP_OF.get(key.partition('.')[0], 0)


def _expand_vcpus(template, vcpus):
    """The stats dict of a domain with ``vcpus`` vCPUs: vcpu.0.* repeated
    as vcpu.N.*, in libvirt's order, vcpu.current/maximum set."""
    out = {}
    per_vcpu = [(m.group(2), v) for m, v in
                ((_VCPU_KEY.match(k), v) for k, v in template.items())
                if m and m.group(1) == '0']
    for key, value in template.items():
        match = _VCPU_KEY.match(key)
        if match:
            if match.group(1) == '0':
                for n in range(vcpus):
                    for suffix, v in per_vcpu:
                        out['vcpu.%d.%s' % (n, suffix)] = v
            continue
        out[key] = value
    for key in ('vcpu.current', 'vcpu.maximum'):
        if key in out:
            out[key] = vcpus
    return out


def _full_stats(recording):
    """Every recorded key, in libvirt's order: the all-groups reply, with
    the bulk reply's values for the keys both have."""
    full = dict(recording['domain_list_stats'])
    for key, value in recording['all_domain_stats'].items():
        if key in full:
            full[key] = value
    missing = [k for k in recording['all_domain_stats'] if k not in full]
    if missing:
        raise RecordingError('keys of the bulk reply missing from the '
                             'all-groups reply: %s' % ', '.join(missing))
    return full


def _template(recording, text):
    """Recorded XML (domain or metadata) as a %-template of the values
    that differ between instances (``_Record.values``)."""
    meta = recording['nova_metadata']
    old_user = re.search(r'<user uuid="([^"]*)">', meta).group(1)
    old_project = re.search(r'<project uuid="([^"]*)">', meta).group(1)
    text = re.sub(r'\s*<description>.*?</description>', '', text,
                  flags=re.S).replace('%', '%%')
    for old, new in ((recording['uuid'], '%(uuid)s'),
                     (recording['name'], '%(name)s'),
                     (old_user, '%(user_id)s'),
                     (old_project, '%(project_id)s')):
        text = text.replace(old, new)
    # The live XML's domain ID: absent from an inactive domain's XML.
    text = re.sub(r"(<domain\b[^>]*?) id=['\"]-?\d+['\"]",
                  lambda m: m.group(1) + '%(id_attr)s', text, count=1)
    # Nova's elements carry the nova: prefix in the domain XML, none in
    # what metadata() returns; the domain's own <name> must stay.
    ns = re.escape('nova:' if '<nova:' in text else '')
    for pattern, value in (
            (r'(<%sname>)[^<]*(<)' % ns, '%(display_name)s'),
            (r'(<%suser uuid="[^"]*">)[^<]*(<)' % ns, '%(user_name)s'),
            (r'(<%sproject uuid="[^"]*">)[^<]*(<)' % ns,
             '%(project_name)s'),
            (r'(<%svcpus>)\d+(<)' % ns, '%(vcpus)d'),
            (r'(<%smemory>)\d+(<)' % ns, '%(memory_mb)d'),
            (r'(<%sflavor name=")[^"]*(")' % ns, '%(flavour)s'),
            (r'(<vcpu\b[^>]*>)\d+(<)', '%(vcpus)d')):
        text = re.sub(pattern,
                      lambda m, v=value: m.group(1) + v + m.group(2), text)
    return text


class _Templates:
    """What all generated domains share, built once per recording: per
    flavour and state, the full stats dict; per (flavour, state, groups),
    the reply libvirt would give."""

    def __init__(self, recording):
        self.xml = _template(recording, recording['xml'])
        self.metadata = _template(recording, recording['nova_metadata'])
        base = _full_stats(recording)
        self.full = {}
        for index, (vcpus, memory_mb, _name) in enumerate(FLAVOURS):
            full = _expand_vcpus(base, vcpus)
            for key in ('balloon.current', 'balloon.maximum'):
                if key in full:
                    full[key] = memory_mb * 1024
            for state, (code, reason) in STATE_CODES.items():
                stats = dict(full)
                stats['state.state'], stats['state.reason'] = code, reason
                if state == STATE_SHUTOFF:
                    stats = {k: v for k, v in stats.items()
                             if k in INACTIVE_KEYS}
                self.full[index, state] = stats
        self._replies = {}

    def reply(self, flavour, state, groups):
        key = (flavour, state, groups)
        reply = self._replies.get(key)
        if reply is None:
            reply = self._replies[key] = {
                k: v for k, v in self.full[flavour, state].items()
                if _group_bit(k) & groups}
        return reply


class _Record:
    """One generated domain: the values its XML differs by, its state and
    its live counters (the only per-domain data kept), and the replies
    asked of it so far, kept up to date by ``advance()``."""

    __slots__ = ('uuid', 'name', 'id', 'state', 'values', 'flavour',
                 'vcpus', 'info', 'counters', 'busy', 'templates',
                 'recording', 'replies')

    def __init__(self, recording, templates, i, state=STATE_RUNNING):
        self.flavour = i % len(FLAVOURS)
        vcpus, memory_mb, flavour = FLAVOURS[self.flavour]
        self.vcpus = vcpus
        self.uuid = instance_uuid(i)
        self.name = 'instance-%08x' % (i + 1)
        project, user = i % PROJECTS, i % USERS
        self.values = {
            'uuid': self.uuid, 'name': self.name,
            'display_name': 'bench-vm-%04d' % i,
            'project_id': _owner('project', project),
            'project_name': 'project-%d' % project,
            'user_id': _owner('user', user), 'user_name': 'user-%d' % user,
            'vcpus': vcpus, 'memory_mb': memory_mb, 'flavour': flavour}
        self.templates = templates
        self.recording = recording
        recorded = recording['all_domain_stats']
        self.counters = {k: recorded[k] for k in (
            'cpu.time', 'cpu.user', 'cpu.system') if k in recorded}
        if 'vcpu.0.time' in recorded:
            for n in range(vcpus):
                self.counters['vcpu.%d.time' % n] = recorded['vcpu.0.time']
        info = list(recording['info'])
        info[1] = info[2] = memory_mb * 1024
        info[3] = vcpus
        self.info = info
        self.replies = {}
        self.id = -1
        self.state = None
        # Busy fraction of its vCPUs: a spread from nearly idle to busy.
        self.busy = random.Random(i).uniform(0.02, 0.9)
        self.set_state(state, i + 1)

    @property
    def active(self):
        return self.state != STATE_SHUTOFF

    def set_state(self, state, domain_id):
        if state not in STATE_CODES:
            raise ValueError('unknown stand-in state %r' % state)
        if state == STATE_SHUTOFF:
            self.id = -1
        elif self.id < 0:
            self.id = domain_id
        self.state = state
        self.values['id_attr'] = " id='%d'" % self.id if self.id > 0 else ''
        self.info[0] = STATE_CODES[state][0]
        self.info[4] = self.counters.get('cpu.time', 0) \
            if self.active else 0
        self.replies = {}

    def reply(self, groups):
        reply = self.replies.get(groups)
        if reply is None:
            reply = dict(self.templates.reply(self.flavour, self.state,
                                              groups))
            if self.active:
                for key, value in self.counters.items():
                    if key in reply:
                        reply[key] = value
            self.replies[groups] = reply
        return reply

    def xml(self):
        return self.templates.xml % self.values

    def metadata(self):
        return self.templates.metadata % self.values

    def advance(self, seconds):
        if self.state != STATE_RUNNING:
            return
        used = int(seconds * 1e9 * self.busy * self.vcpus)
        cur = self.counters
        cur['cpu.time'] += used
        cur['cpu.user'] += used * 4 // 5
        cur['cpu.system'] += used - used * 4 // 5
        for n in range(self.vcpus):
            key = 'vcpu.%d.time' % n
            if key in cur:
                cur[key] += used * 9 // 10 // self.vcpus
        self.info[4] = cur['cpu.time']
        for reply in self.replies.values():
            for key, value in cur.items():
                if key in reply:
                    reply[key] = value


class StandInDomain:
    """What libvirt-python's virDomain offers to the code under test."""

    __slots__ = ('_record',)

    def __init__(self, record):
        self._record = record

    def UUIDString(self):
        return self._record.uuid

    def name(self):
        return self._record.name

    def ID(self):
        return self._record.id

    def XMLDesc(self, flags=0):
        return self._record.xml()

    def metadata(self, type, uri, flags=0):
        if type == libvirt.VIR_DOMAIN_METADATA_ELEMENT and uri == NOVA_NS:
            return self._record.metadata()
        raise libvirt_error(_S.VIR_ERR_NO_DOMAIN_METADATA,
                            'metadata not found: Requested metadata '
                            'element is not present')

    def info(self):
        return list(self._record.info)

    def state(self, flags=0):
        return list(STATE_CODES[self._record.state])

    def _require_active(self):
        if not self._record.active:
            raise libvirt_error(_S.VIR_ERR_OPERATION_INVALID,
                                'Requested operation is not valid: domain '
                                'is not running')

    def memoryStats(self):
        self._require_active()
        return dict(self._record.recording['memory_stats'])

    def vcpus(self):
        """([(number, state, cpu ns, host CPU)], [cpumap]) like
        virDomainGetVcpus; host CPUs 0..vcpus-1, 2 host CPUs in the map."""
        self._require_active()
        record = self._record
        info = [(n, libvirt.VIR_VCPU_RUNNING,
                 record.counters.get('vcpu.%d.time' % n, 0), n % 2)
                for n in range(record.vcpus)]
        return info, [(True, True) for _ in range(record.vcpus)]

    def isActive(self):
        return 1 if self._record.active else 0

    def isPersistent(self):
        return 1


class StandInConnection:
    """A read-only libvirt connection serving N recorded domains.

    Like libvirt-python, every call returns fresh domain objects and fresh
    stats dicts; the generated data is built once, before timing starts.
    ``states``: {domain index: 'running' | 'paused' | 'shutoff'} for the
    domains that do not run (default: all run).
    """

    def __init__(self, recording, count, states=None):
        self.recording = recording
        templates = _Templates(recording)
        states = states or {}
        self._records = [_Record(recording, templates, i,
                                 states.get(i, STATE_RUNNING))
                         for i in range(count)]
        self._by_uuid = {r.uuid: r for r in self._records}
        self._by_name = {r.name: r for r in self._records}
        self._next_id = count + 1
        self.calls = 0

    def __len__(self):
        return len(self._records)

    def advance(self, seconds):
        """Move every running domain's CPU counters ``seconds`` forward."""
        for record in self._records:
            record.advance(seconds)

    def set_state(self, index, state):
        """Shut off, pause or start domain ``index``; a domain started
        again gets a new ID, as in libvirt."""
        record = self._records[index]
        if not record.active and state != STATE_SHUTOFF:
            self._next_id += 1
        record.set_state(state, self._next_id)

    # -- filters -----------------------------------------------------------
    @staticmethod
    def _matches(record, flags):
        """Does ``record`` pass libvirt's filter ``flags`` (within each
        group of filters, any; groups ANDed; an empty group passes)?"""
        for group in (_FILTER_ACTIVE, _FILTER_PERSISTENT, _FILTER_STATE):
            asked = [value for bit, value in group if flags & bit]
            if not asked:
                continue
            if group is _FILTER_ACTIVE:
                ok = record.active in asked
            elif group is _FILTER_PERSISTENT:
                ok = True in asked      # every stand-in domain persists
            else:
                ok = record.state in asked
            if not ok:
                return False
        return True

    def _filtered(self, flags):
        if not flags & STATS_FILTERS:
            return self._records
        return [r for r in self._records if self._matches(r, flags)]

    @staticmethod
    def _check_flags(flags, allowed, call):
        if flags & ~allowed:
            raise libvirt_error(
                _S.VIR_ERR_INVALID_ARG, 'invalid argument: %s: unsupported '
                'flags (0x%x)' % (call, flags & ~allowed), _S.VIR_FROM_DOMAIN)

    # -- the libvirt API used by the agent and by Ceilometer --------------
    def getAllDomainStats(self, stats=0, flags=0):
        self.calls += 1
        self._check_flags(flags, STATS_FILTERS | STATS_OTHER_FLAGS,
                          'virConnectGetAllDomainStats')
        groups = groups_of(stats)
        return [(StandInDomain(r), r.reply(groups).copy())
                for r in self._filtered(flags)]

    def domainListGetStats(self, doms, stats=0, flags=0):
        # libvirt: "filtering flags are not supported with domain list".
        self._check_flags(flags, STATS_OTHER_FLAGS,
                          'virDomainListGetStats')
        groups = groups_of(stats)
        return [(d, self._by_uuid[d.UUIDString()].reply(groups).copy())
                for d in doms]

    def listAllDomains(self, flags=0):
        self._check_flags(flags, STATS_FILTERS | LIST_HAS | LIST_HAS_NOT,
                          'virConnectListAllDomains')
        if flags & LIST_HAS:
            return []
        return [StandInDomain(r) for r in self._filtered(flags)]

    def _lookup(self, table, key):
        try:
            return StandInDomain(table[key])
        except KeyError:
            raise libvirt_error(_S.VIR_ERR_NO_DOMAIN,
                                'Domain not found: %s' % key)

    def lookupByUUIDString(self, uuid):
        return self._lookup(self._by_uuid, uuid)

    def lookupByName(self, name):
        return self._lookup(self._by_name, name)

    def lookupByID(self, domain_id):
        for record in self._records:
            if record.id == domain_id and record.active:
                return StandInDomain(record)
        raise libvirt_error(_S.VIR_ERR_NO_DOMAIN,
                            'Domain not found: no domain with matching id '
                            '%d' % domain_id)

    def isAlive(self):
        return 1

    def getLibVersion(self):
        major, minor, micro = (int(x) for x in self.recording[
            'libvirt_daemon_version'].split('.'))
        return major * 1000000 + minor * 1000 + micro

    def close(self):
        return 0


def calibrate(recording, stats, flags, count=1000, reps=20):
    """The stand-in's own cost per domain of the bulk call ``(stats,
    flags)`` (µs), measured like RealGuests.calibrate_rpc."""
    def measure(k):
        conn = StandInConnection(recording, k)
        conn.getAllDomainStats(stats, flags)
        start = time.process_time_ns()
        for _ in range(reps):
            conn.getAllDomainStats(stats, flags)
        return (time.process_time_ns() - start) / reps / 1e3

    one, many = measure(1), measure(count)
    per = (many - one) / (count - 1)
    return {'count': count, 'fixed_us': one - per, 'per_domain_us': per}
