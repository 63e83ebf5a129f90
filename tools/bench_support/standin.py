"""A libvirt connection stand-in built from recorded real replies.

libvirt's own ``test:///default`` driver returns no ``cpu.time`` from
``getAllDomainStats``, so it cannot drive the inventory. Instead, one
real running guest is recorded (``record()``): the exact
``getAllDomainStats(CPU_TOTAL|VCPU|STATE, RUNNING)`` reply, the
``domainListGetStats([dom], 0)`` reply Ceilometer's inspector asks for,
``info()``, ``state()``, ``memoryStats()``, the live domain XML and its
Nova metadata element. ``StandInConnection`` then serves N domains made
from that recording: same keys in the same order, same Python types,
per-vCPU keys repeated for multi-vCPU domains, UUIDs, names, owners and
flavours substituted in the XML, and cumulative CPU counters that
``advance()`` moves forward between ticks.

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
# The inventory's bulk call (scaph_openstack/inventory/libvirt.py).
STATS = (libvirt.VIR_DOMAIN_STATS_CPU_TOTAL | libvirt.VIR_DOMAIN_STATS_VCPU
         | libvirt.VIR_DOMAIN_STATS_STATE)
FLAGS = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_RUNNING
# Flavour mix of the generated instances: (vcpus, memory MiB, name).
FLAVOURS = ((1, 512, 'm1.tiny'), (1, 2048, 'm1.small'),
            (2, 4096, 'm1.medium'), (4, 8192, 'm1.large'))
PROJECTS = 20
USERS = 50
_SEED_NS = uuidlib.UUID('5c0e6b8a-3f0e-4a53-9d2c-7a1f6c2b9e10')
_VCPU_KEY = re.compile(r'^vcpu\.(\d+)\.(.+)$')


class RecordingError(RuntimeError):
    pass


def _types(stats):
    return {key: type(value).__name__ for key, value in stats.items()}


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
    """What all generated domains share, built once per recording."""

    def __init__(self, recording):
        self.xml = _template(recording, recording['xml'])
        self.metadata = _template(recording, recording['nova_metadata'])
        self.current, self.full = [], []
        for vcpus, memory_mb, _name in FLAVOURS:
            self.current.append(_expand_vcpus(
                recording['all_domain_stats'], vcpus))
            full = _expand_vcpus(recording['domain_list_stats'], vcpus)
            for key in ('balloon.current', 'balloon.maximum'):
                if key in full:
                    full[key] = memory_mb * 1024
            self.full.append(full)


class _Record:
    """One generated domain: the values its XML differs by, and its live
    counters (the only per-domain data kept)."""

    __slots__ = ('uuid', 'name', 'values', 'flavour', 'vcpus', 'info',
                 'current', 'busy', 'templates', 'recording')

    def __init__(self, recording, templates, i):
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
        self.current = templates.current[self.flavour].copy()
        info = list(recording['info'])
        info[1] = info[2] = memory_mb * 1024
        info[3] = vcpus
        self.info = info
        # Busy fraction of its vCPUs: a spread from nearly idle to busy.
        self.busy = random.Random(i).uniform(0.02, 0.9)

    def xml(self):
        return self.templates.xml % self.values

    def metadata(self):
        return self.templates.metadata % self.values

    def advance(self, seconds):
        used = int(seconds * 1e9 * self.busy * self.vcpus)
        cur = self.current
        cur['cpu.time'] += used
        cur['cpu.user'] += used * 4 // 5
        cur['cpu.system'] += used - used * 4 // 5
        for n in range(self.vcpus):
            key = 'vcpu.%d.time' % n
            if key in cur:
                cur[key] += used * 9 // 10 // self.vcpus
        self.info[4] = cur['cpu.time']

    def full_stats(self):
        stats = self.templates.full[self.flavour].copy()
        stats.update(self.current)
        return stats


class StandInDomain:
    """What libvirt-python's virDomain offers to the code under test."""

    __slots__ = ('_record',)

    def __init__(self, record):
        self._record = record

    def UUIDString(self):
        return self._record.uuid

    def name(self):
        return self._record.name

    def XMLDesc(self, flags=0):
        return self._record.xml()

    def metadata(self, type, uri, flags=0):
        if type == libvirt.VIR_DOMAIN_METADATA_ELEMENT and uri == NOVA_NS:
            return self._record.metadata()
        raise libvirt.libvirtError('metadata not found: %s' % uri)

    def info(self):
        return list(self._record.info)

    def state(self, flags=0):
        return list(self._record.recording['state'])

    def memoryStats(self):
        return dict(self._record.recording['memory_stats'])

    def isActive(self):
        return 1


class StandInConnection:
    """A read-only libvirt connection serving N recorded domains.

    Like libvirt-python, every call returns fresh domain objects and fresh
    stats dicts; the generated data is built once, before timing starts.
    """

    def __init__(self, recording, count):
        self.recording = recording
        templates = _Templates(recording)
        self._records = [_Record(recording, templates, i)
                         for i in range(count)]
        self._by_uuid = {r.uuid: r for r in self._records}
        self._by_name = {r.name: r for r in self._records}
        self.calls = 0

    def __len__(self):
        return len(self._records)

    def advance(self, seconds):
        """Move every domain's CPU counters ``seconds`` forward."""
        for record in self._records:
            record.advance(seconds)

    # -- the libvirt API used by the agent and by Ceilometer --------------
    def getAllDomainStats(self, stats=0, flags=0):
        self.calls += 1
        if stats != STATS or flags & ~FLAGS:
            raise NotImplementedError(
                'the stand-in serves the inventory call only (stats=%d, '
                'flags=%d)' % (STATS, FLAGS))
        return [(StandInDomain(r), r.current.copy()) for r in self._records]

    def domainListGetStats(self, doms, stats=0, flags=0):
        if stats:
            raise NotImplementedError('only stats=0 (all) was recorded')
        return [(d, self._by_uuid[d.UUIDString()].full_stats())
                for d in doms]

    def listAllDomains(self, flags=0):
        return [StandInDomain(r) for r in self._records]

    def lookupByUUIDString(self, uuid):
        try:
            return StandInDomain(self._by_uuid[uuid])
        except KeyError:
            raise libvirt.libvirtError('Domain not found: %s' % uuid)

    def lookupByName(self, name):
        try:
            return StandInDomain(self._by_name[name])
        except KeyError:
            raise libvirt.libvirtError('Domain not found: %s' % name)

    def isAlive(self):
        return 1

    def getLibVersion(self):
        major, minor, micro = (int(x) for x in self.recording[
            'libvirt_daemon_version'].split('.'))
        return major * 1000000 + minor * 1000 + micro

    def close(self):
        return 0


def calibrate(recording, count=1000, reps=20):
    """The stand-in's own cost per domain of the bulk call (µs), measured
    like RealGuests.calibrate_rpc."""
    def measure(k):
        conn = StandInConnection(recording, k)
        conn.getAllDomainStats(STATS, FLAGS)
        start = time.process_time_ns()
        for _ in range(reps):
            conn.getAllDomainStats(STATS, FLAGS)
        return (time.process_time_ns() - start) / reps / 1e3

    one, many = measure(1), measure(count)
    per = (many - one) / (count - 1)
    return {'count': count, 'fixed_us': one - per, 'per_domain_us': per}
