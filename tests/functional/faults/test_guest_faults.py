"""Faults 1, 2, 5 (domain metadata) and 6, around one real guest.

One software-emulated guest is booted for the module, under the real
libvirtd, with:

- a virtiofs share of its directory in the agent's read-only export (the
  share publisher's real tmpfs and bind mount, mounted by the agent
  through privsep, ``manage_mounts = true`` in a temporary directory);
- the hostile probes of tools/guest/init (``scaph.probes=1``): writes,
  creates, symlinks, a 1 MiB fill, a remount, walks out of the share;
- a Nova ``<nova:instance>`` block that is broken: vcpus ``lots``, memory
  ``much``, no owner.

All agents of the module share one state dir, snapshot and share: the
guest's counters must never go down, whichever agent wrote them last.
The energy comes from a fixture RAPL tree (this machine has none); the
rest is real.
"""

import copy
import os
import random
import re
import signal
import time
import uuid as uuidlib

import pytest

from tests.functional import helpers
from tests.functional.faults import support
from tests.functional.helpers import agent as agent_helper
from tests.functional.helpers import guest as guest_helper
from tests.functional.helpers import libvirtd
from scaph_openstack.share import layout
from scaph_openstack.share import tree

INTERVAL = 0.2
KILLS = 30
OUTAGE_S = 2.0
# libvirtd frozen ~1.95 s right after a tick: the counters move about
# 1.75 package wraps between the two energy readings around the freeze,
# where rounding and truncating the number of wraps disagree; a correct
# estimate covers ~2.15 wraps and may be off by 23 % before it errs.
FREEZE_S = 1.95
WRAP_RANGE_UJ = 50_000_000
WRAP_WATTS = {'intel-rapl:0': 50.0, 'intel-rapl:0:0': 40.0}
OTHER = 'a1b2c3d4-0000-4000-8000-00000000beef'
WRITE_PROBES = ('write-existing', 'append', 'truncate', 'chmod', 'create',
                'mkdir', 'symlink', 'hardlink', 'mkfifo', 'rename', 'fill',
                'rm', 'write-after-remount', 'create-after-remount')


def broken_nova_metadata(uuid):
    xml = guest_helper.nova_metadata_xml(
        uuid, 'broken-vm', 'f1b5c0de-0000-4000-8000-00000000a001', 'proj',
        'alice-uuid', 'alice', vcpus=1, memory_mb=128)
    xml = xml.replace('<nova:vcpus>1</nova:vcpus>',
                      '<nova:vcpus>lots</nova:vcpus>')
    xml = xml.replace('<nova:memory>128</nova:memory>',
                      '<nova:memory>much</nova:memory>')
    xml, owners = re.subn(r'\s*<nova:owner>.*?</nova:owner>', '', xml,
                          flags=re.S)
    assert owners == 1 and 'lots' in xml and 'much' in xml
    return xml


class GuestRig:
    """Paths, the guest, the RAPL fixture, and what the host looked like
    before the guest booted and after its probes ran."""

    def __init__(self, root):
        self.root = str(root)
        self.work = os.path.join(self.root, 'work')
        self.export = os.path.join(self.root, 'export')
        self.state = os.path.join(self.root, 'state')
        self.snapshot = os.path.join(self.root, 'snapshot.json')
        self.powercap = os.path.join(self.root, 'powercap')
        self.uuid = str(uuidlib.uuid4())
        self.guest = self.rapl = None
        self.before = self.after = None
        self.agents = []

    def sections(self, **overrides):
        sections = {
            'agent': {'interval': INTERVAL, 'inventory': 'libvirt',
                      'publishers': 'snapshot,share',
                      'state_dir': self.state},
            'snapshot': {'path': self.snapshot},
            'energy': {'source': 'rapl', 'use_privsep': False,
                       'powercap_path': self.powercap},
            'libvirt': {'connection_uri': 'qemu:///system'},
            'attribution': {'idle_power': 'package-0:10,dram-0:1'},
            'share': {'work_dir': self.work, 'export_dir': self.export,
                      'manage_mounts': True, 'tmpfs_size': '4m',
                      'min_interval': 0, 'resolution_uj': 1},
        }
        for section, options in overrides.items():
            sections.setdefault(section, {}).update(options)
        return copy.deepcopy(sections)

    def agent(self, workdir, **overrides):
        agent = agent_helper.Agent(workdir, self.sections(**overrides))
        self.agents.append(agent)
        return agent

    def share_file(self, *parts):
        return os.path.join(self.export, self.uuid, *parts)

    def capture(self):
        state, temporaries = support.tree_state(self.work)
        stat = os.statvfs(self.work)
        host_files = {path: support.file_sha256(path)
                      for path in ('/etc/passwd', '/etc/hostname')
                      if os.path.exists(path)}
        other, _tmp = support.tree_state(os.path.join(self.work, OTHER),
                                         content_of=None)
        return {'tree': state, 'temporaries': temporaries, 'other': other,
                'root': sorted(os.listdir(self.root)),
                'host_files': host_files,
                'mounts': support.mounts_under(self.root),
                'used_kib': (stat.f_blocks - stat.f_bfree) *
                stat.f_frsize // 1024}

    def running(self, doc):
        item = support.instance(doc, self.uuid)
        return item if item and item['running'] else None


@pytest.fixture(scope='module')
def rig(tmp_path_factory):
    helpers.require_guests('needs root: libvirtd and mounts')
    rig = GuestRig(tmp_path_factory.mktemp('guest-faults'))
    rig.rapl = support.SteadyRapl(rig.powercap, paused=False)
    try:
        with rig.rapl:
            boot_dir = os.path.join(rig.root, 'boot')
            os.makedirs(boot_dir)
            agent = rig.agent(boot_dir)
            started = time.time()
            agent.start()       # mounts the tmpfs and its read-only view
            support.wait_snapshot(rig.snapshot, newer_than=started,
                                  timeout=60, agent=agent)
            # what the Nova hook does before the domain starts
            share = tree.ShareTree(rig.work)
            share.write_instance(rig.uuid, layout.initial_files(
                rig.uuid, with_dram=True), only_missing=True)
            share.write_instance(OTHER, layout.initial_files(OTHER, True),
                                 only_missing=True)
            rig.before = rig.capture()
            rig.guest = guest_helper.Guest(
                share_dir=os.path.join(rig.export, rig.uuid), uuid=rig.uuid,
                label='faults', cmdline_params={'probes': 1, 'period': 1},
                nova_metadata=broken_nova_metadata(rig.uuid))
            rig.guest.start()
            rig.guest.wait_for(r'SCAPH-MOUNT ok', timeout=180)
            rig.guest.wait_probes(timeout=180)
            support.wait_snapshot(rig.snapshot, rig.running, agent=agent,
                                  timeout=60)
            # the guest reads what the agent wrote, after its probes
            first = rig.guest.line_count()
            rig.guest.wait_for_read(
                lambda r: r.line_no > first and r.int() > 0, timeout=60)
            rig.after = rig.capture()
            agent.stop()
            yield rig
    finally:
        for agent in rig.agents:
            support.kill_quietly(agent)
        if rig.guest is not None:
            rig.guest.cleanup()
        support.umount(rig.export, rig.work)


def test_hostile_guest_changes_nothing_on_the_host(rig, record_property):
    """Fault 6: what the probes tried, checked on the host side."""
    probes = rig.guest.probes()
    walks = rig.guest.walks()
    before, after = rig.before, rig.after
    new = sorted(set(after['tree']) - set(before['tree']))
    gone = sorted(set(before['tree']) - set(after['tree']))
    changed = sorted(p for p in set(before['tree']) & set(after['tree'])
                     if before['tree'][p] != after['tree'][p])
    reads = [r.int() for r in rig.guest.reads()]
    other_seen = [w for w in walks.values() if OTHER in w]
    support.summary(
        record_property, 'hostile-guest',
        '%d probes, %d refused (%s); host tree %d paths before, %d after: '
        '%d new, %d gone, %d changed in kind/mode/owner/content (agent '
        'temporaries in flight left out: %d, %d); the other instance\'s '
        'tree byte for byte unchanged: %s; tmpfs used %d -> %d KiB; '
        'mounts unchanged: %s; host /etc files unchanged: %s; walks out '
        'saw: %s; guest read %d values %d..%d' % (
            len(probes), sum(1 for rc in probes.values() if rc != 0),
            ' '.join('%s=%d' % kv for kv in sorted(probes.items())),
            len(before['tree']), len(after['tree']), len(new), len(gone),
            len(changed), len(before['temporaries']),
            len(after['temporaries']), before['other'] == after['other'],
            before['used_kib'], after['used_kib'],
            before['mounts'] == after['mounts'],
            before['host_files'] == after['host_files'], walks, len(reads),
            min(reads or [0]), max(reads or [0])))
    for name in WRITE_PROBES:
        assert name in probes, 'probe %s did not run' % name
        assert probes[name] != 0, '%s succeeded inside the guest' % name
    assert not new, 'new paths on the host: %s' % new
    assert not gone, 'paths removed on the host: %s' % gone
    assert not changed, ['%s: %s -> %s' % (p, before['tree'][p],
                                           after['tree'][p])
                         for p in changed]
    assert after['other'] == before['other']
    assert after['root'] == before['root']
    assert after['mounts'] == before['mounts']
    export_opts = dict((p, o) for p, _t, o in after['mounts'])[rig.export]
    assert 'ro' in export_opts.split(',')
    assert after['host_files'] == before['host_files']
    assert after['used_kib'] - before['used_kib'] < 64, (
        'the tmpfs grew by %d KiB' % (after['used_kib'] -
                                      before['used_kib']))
    assert not other_seen, other_seen
    assert reads and reads == sorted(reads) and reads[-1] > 0


def test_kill_minus_nine_at_random_points_of_a_tick(rig, tmp_path,
                                                    record_property):
    """Fault 1: SIGKILL of the agent's whole process group, KILLS times,
    each at a random delay (0 to one interval) after it started ticking,
    while threads read the guest's share files, the snapshot and the
    ledger as fast as they can."""
    seed = random.randrange(2 ** 32)
    rng = random.Random(seed)
    watcher = support.Watcher()
    watcher.energy(rig.share_file('intel-rapl:0', 'energy_uj'))
    watcher.energy(rig.share_file('intel-rapl:0:0', 'energy_uj'))
    watcher.meta(rig.share_file('scaph-openstack.json'))
    watcher.snapshot(rig.snapshot)
    watcher.ledger(os.path.join(rig.state, 'ledger.json'))
    agent = rig.agent(tmp_path)
    key = ('snapshot', rig.uuid, 'total_uj')
    delays = []
    began = time.monotonic()
    with watcher:
        support.wait_until(lambda: watcher.last(key) is not None, 10,
                           what='a first read of the snapshot')
        start_total = watcher.last(key)
        for _ in range(KILLS):
            started = time.time()
            agent.start()
            support.wait_snapshot(rig.snapshot, rig.running,
                                  newer_than=started, timeout=60,
                                  agent=agent, step=0.005)
            delay = rng.uniform(0, INTERVAL)
            time.sleep(delay)
            agent.kill()
            delays.append(delay)
        killing_s = time.monotonic() - began
        started = time.time()
        agent.start()
        support.wait_snapshot(
            rig.snapshot, agent=agent, timeout=60, newer_than=started,
            predicate=lambda d: (rig.running(d) or {}).get(
                'total_uj', 0) > watcher.last(key))
        support.wait_ticks(rig.snapshot, 2, agent=agent)
    log = agent.log_text()
    agent.stop()
    temporaries = sorted(
        name for directory in (os.path.join(rig.work, rig.uuid),
                               os.path.join(rig.work, rig.uuid,
                                            'intel-rapl:0'),
                               os.path.join(rig.work, rig.uuid,
                                            'intel-rapl:0:0'),
                               rig.state, rig.root)
        for name in os.listdir(directory)
        if support.AGENT_TMP_RE.match(name))
    mounts = support.mounts_under(rig.root)
    end_total = watcher.last(key)
    support.summary(
        record_property, 'kill-9',
        '%d SIGKILLs (seed %d, delays %.3f-%.3fs after the first tick) in '
        '%.1fs; reads: %s; 0 torn/empty/missing reads expected, got %d; '
        'counters never went down (%d checked); instance total %d -> %d '
        'uJ over %d distinct values; share energy_uj took %d values; %d '
        'mounts under the rig after %d starts; temporary files left by '
        'the kills: %s' % (
            len(delays), seed, min(delays), max(delays), killing_s,
            watcher.reads, len(watcher.failures), len(watcher.values),
            start_total, end_total, watcher.distinct(key),
            watcher.distinct(('energy',
                              rig.share_file('intel-rapl:0', 'energy_uj'))),
            len(mounts), len(delays) + 1, temporaries))
    assert not watcher.failures, watcher.failures[:10]
    assert all(watcher.reads.get(kind, 0) > 100
               for kind in ('energy', 'meta', 'snapshot', 'ledger'))
    assert end_total > start_total
    assert sorted((p, t) for p, t, _o in mounts) == sorted(
        [(rig.work, 'tmpfs'), (rig.export, 'tmpfs')]), mounts
    assert support.log_tracebacks(log) == 0, log[-3000:]
    # Temporaries left by a kill inside a write are reported above, not
    # asserted here: random kills hit that window too rarely to be a
    # reliable check; test_kill_in_write.py aims at it.


def test_libvirtd_stopped_and_restarted_under_the_agent(rig, tmp_path,
                                                        record_property):
    """Fault 2: libvirtd goes away for OUTAGE_S and comes back; the
    guest keeps running. Reconnect backoff is at most two ticks here
    (the defaults, 4 s over 2 s ticks, have the same ratio)."""
    agent = rig.agent(tmp_path, libvirt={'reconnect_min': INTERVAL,
                                         'reconnect_max': 2 * INTERVAL})
    rig.rapl.pause()
    try:
        started = time.time()
        agent.start()
        first = support.wait_snapshot(rig.snapshot, rig.running,
                                      newer_than=started, timeout=60,
                                      agent=agent)
        measured0, true0 = support.zones(first), rig.rapl.totals()
    finally:
        rig.rapl.resume()
    worker = support.worker_pid(agent)
    before = support.wait_snapshot(
        rig.snapshot, agent=agent, timeout=60,
        predicate=lambda d: (rig.running(d) or {}).get('total_uj', 0) >
        rig.running(first)['total_uj'])
    try:
        libvirtd.stop_libvirtd()
        down_at = time.time()
        time.sleep(OUTAGE_S / 2)
        mid = support.snapshot_doc(rig.snapshot)
        time.sleep(OUTAGE_S / 2)
        during = support.snapshot_doc(rig.snapshot)
        alive_during = agent.running and support.worker_pid(agent) == worker
    finally:
        libvirtd.ensure_libvirtd()
    up_at = time.time()
    guest_active = rig.guest.is_active()
    recovered = support.wait_snapshot(rig.snapshot, newer_than=during['time'],
                                      agent=agent, timeout=30)
    resumed = support.wait_snapshot(
        rig.snapshot, agent=agent, timeout=30, step=0.005,
        predicate=lambda d: (rig.running(d) or {}).get('total_uj', 0) >
        rig.running(before)['total_uj'] and d['time'] > during['time'])
    latency = resumed['time'] - up_at
    rig.rapl.pause()
    try:
        last = support.wait_ticks(rig.snapshot, 2, agent=agent)
        true = {support.ZONE_NAMES[z]: rig.rapl.total(z) - true0[z]
                for z in rig.rapl.watts}
    finally:
        rig.rapl.resume()
    grown = {name: support.zones(last)[name] - measured0[name]
             for name in true}
    gap = {name: support.zones(recovered)[name] -
           support.zones(during)[name] for name in true}
    log = agent.log_text()
    same_worker = support.worker_pid(agent) == worker
    agent.stop()
    support.summary(
        record_property, 'libvirtd',
        'libvirtd down %.1fs (guest still active after: %s); agent worker '
        'alive throughout: %s; snapshot %.1fs old at the end of the outage '
        '(inventory_ok %s), the instance held at %d uJ; zones +%s uJ by the '
        'next snapshot; '
        'instance running and growing '
        'again %.2fs after libvirtd answered (%d -> %d uJ); measured %s '
        'vs fixture %s uJ since start; "Inventory unavailable" logged %d '
        'time(s), tracebacks %d' % (
            up_at - down_at, guest_active, alive_during and same_worker,
            up_at - during['time'], during.get('inventory_ok'),
            (rig.running(during) or {}).get('total_uj', -1),
            gap, latency, rig.running(before)['total_uj'],
            rig.running(resumed)['total_uj'], grown, true,
            log.count('Inventory unavailable'),
            support.log_tracebacks(log)))
    assert alive_during and same_worker, 'the agent worker died'
    assert guest_active is True
    # Host zones are metered and published through the outage; the
    # instance's counter stands still (its energy is unattributed).
    assert during['time'] > down_at + OUTAGE_S - 3 * INTERVAL, \
        'the snapshot froze without libvirt'
    assert during['inventory_ok'] is False
    assert rig.running(during) is not None
    assert rig.running(during)['total_uj'] == rig.running(mid)['total_uj']
    assert all(v > 0 for v in gap.values()), gap
    assert latency < 2 * INTERVAL + 2 * INTERVAL + 1.0, latency
    assert grown == true, 'energy lost or invented: %s' % {
        k: grown[k] - true[k] for k in true}
    assert log.count('Inventory unavailable') == 1, log[-3000:]
    assert support.log_tracebacks(log) == 0, log[-3000:]


def test_libvirtd_frozen_inside_a_tick_invents_no_energy(
        rig, tmp_path, record_property):
    """Fault 2 and 3 together: libvirtd hangs (SIGSTOP) for FREEZE_S while
    the RAPL counters wrap every 1-1.25 s. The agent's next tick reads
    energy, then waits on libvirt; the energy counted must still be what
    the counters counted, wraps included, to the µJ."""
    powercap = str(tmp_path / 'powercap')
    with support.SteadyRapl(powercap, WRAP_WATTS, WRAP_RANGE_UJ) as energy:
        agent = rig.agent(tmp_path, energy={'powercap_path': powercap})
        started = time.time()
        agent.start()
        first = support.wait_snapshot(rig.snapshot, rig.running,
                                      newer_than=started, timeout=60,
                                      agent=agent)
        measured0, true0 = support.zones(first), energy.totals()
        energy.resume()
        worker = support.worker_pid(agent)
        time.sleep(1.0)
        support.steady_tick(agent, {support.ZONE_NAMES[z]: w
                                    for z, w in WRAP_WATTS.items()})
        pid = libvirtd.libvirtd_pid()
        assert pid, 'libvirtd is not running'
        frozen_at = time.time()
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(FREEZE_S)
        finally:
            os.kill(pid, signal.SIGCONT)
        thawed_at = time.time()
        wraps = {z: energy.total(z) // WRAP_RANGE_UJ for z in WRAP_WATTS}
        time.sleep(1.0)
        energy.pause()
        last = support.wait_ticks(rig.snapshot, 2, agent=agent)
        true = {support.ZONE_NAMES[z]: energy.total(z) - true0[z]
                for z in WRAP_WATTS}
    measured = {name: support.zones(last)[name] - measured0[name]
                for name in true}
    same_worker = support.worker_pid(agent) == worker
    log = agent.log_text()
    agent.stop()
    support.summary(
        record_property, 'libvirtd-frozen',
        'libvirtd SIGSTOPped %.1fs under the agent, counters wrapping every '
        '%s s (%s wraps so far): measured %s vs fixture %s, difference %s '
        'uJ; worker alive: %s' % (
            thawed_at - frozen_at,
            {support.ZONE_NAMES[z]: WRAP_RANGE_UJ / w / 1e6
             for z, w in WRAP_WATTS.items()},
            {support.ZONE_NAMES[z]: n for z, n in wraps.items()},
            measured, true, {k: measured[k] - true[k] for k in true},
            same_worker))
    assert same_worker, 'the agent worker died'
    assert support.log_tracebacks(log) == 0, log[-3000:]
    assert measured == true, (
        'energy invented or lost while libvirtd hung: %s uJ (a wrap is %d '
        'uJ). The tick read energy before the hang and took its clock '
        'after it' % ({k: measured[k] - true[k] for k in true},
                      WRAP_RANGE_UJ))


def test_garbage_domain_metadata_still_counts_the_domain(rig, tmp_path,
                                                         record_property):
    """Fault 5 (metadata): vcpus 'lots', memory 'much', no owner."""
    xml = rig.guest.domain().XMLDesc(0)
    agent = rig.agent(tmp_path)
    started = time.time()
    agent.start()
    first = support.wait_snapshot(rig.snapshot, rig.running,
                                  newer_than=started, timeout=60,
                                  agent=agent)
    grown = support.wait_snapshot(
        rig.snapshot, agent=agent, timeout=60,
        predicate=lambda d: (rig.running(d) or {}).get('total_uj', 0) >
        rig.running(first)['total_uj'])
    item = rig.running(grown)
    log = agent.log_text()
    agent.stop()
    support.summary(
        record_property, 'metadata',
        'domain %s with vcpus=lots, memory=much, no owner: listed as '
        'name=%s display_name=%s vcpus=%s memory_mb=%s project=%s user=%s '
        'nova=%s, counter %d -> %d uJ' % (
            rig.guest.name, item['name'], item['display_name'],
            item['vcpus'], item['memory_mb'], item['project_id'],
            item['user_id'], item['nova'],
            rig.running(first)['total_uj'], item['total_uj']))
    assert '>lots<' in xml and 'nova:owner' not in xml
    assert item['name'] == rig.guest.name
    assert item['vcpus'] is None and item['memory_mb'] is None
    assert item['project_id'] is None and item['user_id'] is None
    assert support.log_tracebacks(log) == 0, log[-3000:]
