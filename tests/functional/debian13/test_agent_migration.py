"""The real agents of two hosts carry an instance's counters through a
live migration, then a save/restore and a managed save, on Debian 13's
stack (two chroot libvirtds, tools/debian13-stack).

Each host runs scaph-openstack-agent on its own fixture RAPL tree (the one
fake: no RAPL here), its own share tmpfs, ledger and snapshot, and its own
libvirtd. The test plays nova-compute's part with the same functions the
Nova driver calls through privsep (scaph_openstack/handoff.py,
privsep/mounts.write_instance_share): hold on the source
(check_can_live_migrate_source), the destination's share and start
(pre_live_migration), then libvirt migrates. A guest reads its energy_uj
every second throughout.
"""

import json
import os
import time
import uuid as uuidlib

import pytest

from scaph_openstack import handoff
from scaph_openstack.privsep import mounts
from scaph_openstack.share import layout
from tests.functional.helpers import agent as agent_helper
from tests.functional.helpers import debian13
from tests.functional.helpers.guest import Guest
from tests.functional.helpers import rapl

PKG = layout.PACKAGE_DIR + '/energy_uj'
DRAM = layout.DRAM_DIR + '/energy_uj'
TICK_S = 0.5
UPDATE_S = 1.0              # [share] min_interval: what the guest can see
RESOLUTION_UJ = 1000
WATTS = {'a': {'intel-rapl:0': 40.0, 'intel-rapl:0:0': 4.0},
         'b': {'intel-rapl:0': 70.0, 'intel-rapl:0:0': 6.0}}


class HostAgent:
    """One host's agent and its files."""

    def __init__(self, host, workdir):
        self.host = host
        self.workdir = workdir
        self.share = host.share_dir
        self.powercap = os.path.join(workdir, 'powercap')
        self.sections = {
            'agent': {'interval': TICK_S, 'publishers': 'snapshot,share',
                      'host': 'compute-' + host.name},
            'libvirt': {'connection_uri':
                        'qemu:///system?socket=%s' % host.socket},
            'energy': {'source': 'rapl', 'use_privsep': False,
                       'powercap_path': self.powercap},
            'share': {'work_dir': self.share, 'export_dir': self.share,
                      'manage_mounts': False, 'min_interval': UPDATE_S,
                      'resolution_uj': RESOLUTION_UJ},
        }

    def ledger(self):
        with open(os.path.join(self.workdir, 'state', 'ledger.json')) as f:
            return json.load(f)

    def record(self, uuid):
        return {item['identity']['uuid']: item
                for item in self.ledger()['instances']}.get(uuid)


@pytest.fixture
def agents(d13_stack, tmp_path):
    made = {}
    with rapl.MovingRapl(tmp_path / 'a' / 'powercap', WATTS['a']), \
            rapl.MovingRapl(tmp_path / 'b' / 'powercap', WATTS['b']):
        started = []
        try:
            for name in ('a', 'b'):
                host_agent = HostAgent(d13_stack.hosts[name],
                                       str(tmp_path / name))
                process = agent_helper.Agent(
                    host_agent.workdir, host_agent.sections,
                    name='agent-' + name)
                process.start()
                started.append(process)
                host_agent.process = process
                made[name] = host_agent
            for host_agent in made.values():
                host_agent.process.wait_for_snapshot(timeout=60)
            yield made
        finally:
            for process in started:
                process.stop()


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError('timed out after %ss waiting for %s'
                         % (timeout, what))


def hold(source, uuid, token):
    """nova-compute on the source before the instance leaves."""
    handoff.request_hold(source.share, uuid, token)
    return wait_until(lambda: handoff.answer_of(source.share, uuid, token),
                      10, "the source agent's answer")


def prepare_destination(destination, uuid, counters):
    """nova-compute on the destination, before the incoming domain."""
    mounts.write_instance_share(destination.share, uuid,
                                'dram' in counters.shown_uj,
                                require_tmpfs=False, start=counters)
    handoff.offer_start(destination.share, uuid, counters)


def numeric_reads(guest):
    return [r for r in guest.reads()
            if r.values.get(PKG, '').isdigit() and
            r.values.get(DRAM, '').isdigit()]


def assert_monotonic(reads):
    assert len(reads) >= 3
    for prev, cur in zip(reads, reads[1:], strict=False):
        for path in (PKG, DRAM):
            assert cur.int(path) >= prev.int(path), (
                '%s went down: %r then %r' % (path, prev, cur))


def snapshot_total(host_agent, uuid):
    snap = host_agent.process.read_snapshot(check_stale=False)
    for item in (snap.document.get('instances') or []) if snap else []:
        if item.get('uuid') == uuid:
            return item['total_uj']
    return None


def conserves(host_agent):
    ledger = host_agent.ledger()
    for zone in ledger['zones']:
        given = sum(item['energy_uj'].get(zone['name'], 0)
                    for item in ledger['instances'])
        assert given + zone['residual_uj'] + \
            zone['unallocated_idle_uj'] == zone['measured_uj'], zone


def published(record):
    """What the agent publishes for a ledger record, from its parts."""
    kinds = {}
    for zone, uj in record['energy_uj'].items():
        kind = zone.rpartition('-')[0]
        kinds[kind] = kinds.get(kind, 0) + uj
    for kind, uj in (record.get('carried_uj') or {}).items():
        kinds[kind] = kinds.get(kind, 0) + uj
    held = record.get('held_uj')
    if held is not None:
        kinds = {k: min(v, held.get(k, v)) for k, v in kinds.items()}
    return kinds.get('package', 0) + kinds.get('dram', 0)


def test_counters_follow_a_live_migration_then_a_save(
        d13_stack, d13_images, agents, record_property):
    a, b = agents['a'], agents['b']
    uuid = str(uuidlib.uuid4())
    # nova-compute before the first start on a (_create_guest).
    mounts.write_instance_share(a.share, uuid, False, require_tmpfs=False)
    guest = Guest(uri=a.host.uri, images=d13_images,
                  log_dir=d13_stack.shared_dir, serial_append=True,
                  uuid=uuid, virtiofsd_binary=None, readonly=True,
                  memory_mb=160, label='d13-agent',
                  share_dir='%s/%s' % (debian13.SHARE_IN_ROOT, uuid),
                  cmdline_params={'period': 1, 'load': 'duty:40'})
    clock = debian13.ReadClock(guest)
    try:
        guest.start()
        assert guest.wait_booted(60) == 'ok', guest.tail()
        clock.start()
        wait_until(lambda: any(r.int(PKG) > 0 for r in
                               numeric_reads(guest)), 60,
                   "the guest reading a's energy")

        # -- live migration a -> b --
        answer = hold(a, uuid, 'live-' + uuid[:8])
        frozen = sum(answer.energy_uj.values())
        source_last = snapshot_total(a, uuid)
        prepare_destination(b, uuid, answer)
        t0 = time.monotonic()
        elapsed = d13_stack.migrate(guest.name, 'a', 'b')
        guest.move_to(b.host.uri)
        shown = answer.shown_uj['package']
        wait_until(lambda: any(r.int(PKG) > shown
                               for r in numeric_reads(guest)), 30,
                   "the guest reading b's counter grow past a's")
        time.sleep(4)
        t1 = time.monotonic()

        b_record = wait_until(lambda: b.record(uuid), 10, "b's record")
        a_record = a.record(uuid)
        b_total = snapshot_total(b, uuid)
        # Ceilometer never sees lower: b continues from a's frozen value,
        # and a publishes no more than it (its samples stop there).
        assert source_last <= frozen <= b_total
        assert published(a_record) == frozen == \
            snapshot_total(a, uuid)
        assert published(b_record) == frozen + sum(
            b_record['energy_uj'].values())
        assert sum(b_record['energy_uj'].values()) > 0
        # The window between the hold and the switch-over: counted in
        # a's ledger (conservation), published by nobody.
        window = sum(a_record['energy_uj'].values()) - frozen
        assert window >= 0
        conserves(a)
        conserves(b)
        migration_gap = clock.max_gap(t0, t1)

        # -- save and restore on b (Nova suspend/resume) --
        conn = b.host.connect()
        dom = conn.lookupByUUIDString(uuid)
        before_save = numeric_reads(guest)[-1].int(PKG)
        path = '/var/lib/scaph-openstack-test-%s.save' % uuid[:8]
        dom.save(path)
        time.sleep(3)
        conn.restore(path)
        os.unlink(b.host.host_path(path))
        wait_until(lambda: numeric_reads(guest)[-1].int(PKG) > before_save,
                   30, 'reads growing after the restore')
        # -- managed save --
        dom = conn.lookupByUUIDString(uuid)
        before_save = numeric_reads(guest)[-1].int(PKG)
        dom.managedSave()
        time.sleep(3)
        dom.create()
        wait_until(lambda: numeric_reads(guest)[-1].int(PKG) > before_save,
                   30, 'reads growing after the managed save')
        conn.close()
        reads = numeric_reads(guest)    # the log goes with the guest
    finally:
        clock.stop()
        d13_stack.purge(uuid)
        guest.move_to(a.host.uri)
        guest.cleanup()

    assert_monotonic(reads)
    # Never more than two update intervals between reads while it ran
    # (its uptime stops while paused or saved).
    for prev, cur in zip(reads, reads[1:], strict=False):
        assert cur.uptime - prev.uptime <= 2 * UPDATE_S, (prev, cur)
    # Wall clock through the migration: the switch-over's pause hides no
    # more than two intervals (1 s slack for polling and a busy CI).
    assert migration_gap <= 2 * UPDATE_S + 1, migration_gap
    for name, value in (('migration_s', elapsed),
                        ('migration_wall_gap_s', migration_gap),
                        ('frozen_j', frozen / 1e6),
                        ('window_j', window / 1e6)):
        record_property(name, round(value, 3))
    print('live migration %.1fs; longest wall-clock gap between reads '
          '%.1fs; counter frozen at %.3f J on a, %.3f J counted by a in '
          'the window, b published %.3f J' % (
              elapsed, migration_gap, frozen / 1e6, window / 1e6,
              b_total / 1e6))
