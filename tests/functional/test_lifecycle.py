"""Lifecycle: an instance libvirt still defines keeps its counters and its
share, whatever its state, for as long as it is defined; the retention
counts only once it is undefined.

Real: libvirtd, two persistent TCG guests, the agent process (libvirt
inventory, snapshot and share publishers, the share on a real tmpfs with
its read-only export, mounted by the agent), the guest reading its share
through virtiofs. Fixture: the RAPL tree (this machine has none).

One guest is paused (virDomainSuspend) and the other shut off
(virDomainDestroy of a persistent domain) for longer than ``[agent]
retention``. Must hold: both stay in the snapshot with their state and
their counters as they were (not reset, not dropped), their share
directories keep their last counter; the paused guest, resumed, is
charged again and reads a larger value from its share. Then the shut-off
one is undefined: it stays listed (``undefined``) for the retention, then
leaves the snapshot and its share directory is removed.

A paused QEMU's emulator threads still use some CPU time: the paused
instance is charged for it like for any CPU time (with the fixture's
constant power and a nearly idle host, that was 0.3 to 80 J over 9 s
here), and its share, written once when it stopped running, lags by that
much until it runs again.
"""

import os
import time
import uuid as uuidlib

import pytest

from tests.functional import helpers
from tests.functional.faults import support
from tests.functional.helpers import agent as agent_helper
from tests.functional.helpers import guest as guest_helper
from tests.functional.helpers import rapl
from scaph_openstack.share import layout
from scaph_openstack.share import tree

INTERVAL = 0.5
RETENTION_S = 5
LONGER_THAN_RETENTION_S = RETENTION_S + 3.0
LOAD = 'duty:15'


class LifecycleRig:

    def __init__(self, root):
        self.root = str(root)
        self.work = os.path.join(self.root, 'work')
        self.export = os.path.join(self.root, 'export')
        self.agent = agent_helper.Agent(self.root, {
            'agent': {'interval': INTERVAL, 'inventory': 'libvirt',
                      'publishers': 'snapshot,share',
                      'retention': RETENTION_S},
            'snapshot': {'min_interval': 0},
            'energy': {'source': 'rapl', 'use_privsep': False,
                       'powercap_path': os.path.join(self.root,
                                                     'powercap')},
            'libvirt': {'connection_uri': 'qemu:///system'},
            'attribution': {'idle_power': 'package-0:10,dram-0:1'},
            'share': {'work_dir': self.work, 'export_dir': self.export,
                      'manage_mounts': True, 'tmpfs_size': '4m',
                      'min_interval': 0, 'resolution_uj': 1},
        })
        self.paused = self.off = None

    @property
    def snapshot(self):
        return self.agent.snapshot_path

    def share_counter(self, uuid):
        """The package counter in the instance's share, None if absent."""
        try:
            with open(os.path.join(self.work, uuid, layout.PACKAGE_DIR,
                                   'energy_uj')) as f:
                return int(f.read())
        except FileNotFoundError:
            return None

    def wait(self, predicate, newer_than=None, timeout=60):
        return support.wait_snapshot(self.snapshot, predicate,
                                     newer_than=newer_than, timeout=timeout,
                                     agent=self.agent)


@pytest.fixture
def rig(tmp_path):
    helpers.require_guests('needs root: libvirtd and mounts')
    rig = LifecycleRig(tmp_path)
    guests = []
    try:
        with rapl.MovingRapl(os.path.join(rig.root, 'powercap')):
            started = time.time()
            rig.agent.start()       # mounts the tmpfs and its export
            rig.wait(None, newer_than=started)
            uuid = str(uuidlib.uuid4())
            rig.paused = guest_helper.Guest(
                share_dir=os.path.join(rig.export, uuid), uuid=uuid,
                label='paused', cmdline_params={'load': LOAD, 'period': 1})
            rig.off = guest_helper.Guest(label='off',
                                         cmdline_params={'load': LOAD})
            guests += [rig.paused, rig.off]
            # what the Nova hook does before a domain starts
            tree.ShareTree(rig.work).write_instance(
                rig.paused.uuid, layout.initial_files(rig.paused.uuid, True),
                only_missing=True)
            for guest in guests:
                guest.start()
            rig.paused.wait_for(r'SCAPH-MOUNT ok', timeout=180)
            rig.off.wait_booted(timeout=180)
            yield rig
    finally:
        support.kill_quietly(rig.agent)
        for guest in guests:
            guest.cleanup()
        support.umount(rig.export, rig.work)


def item(doc, uuid):
    return support.instance(doc, uuid) or {}


def test_defined_instances_keep_counters_and_share_until_undefined(
        rig, record_property):
    paused, off = rig.paused.uuid, rig.off.uuid
    charged = rig.wait(lambda d: item(d, paused).get('total_uj', 0) > 0
                       and item(d, off).get('total_uj', 0) > 0)
    rig.wait(lambda d: all(item(d, u)['total_uj'] > item(charged, u)[
        'total_uj'] for u in (paused, off)), newer_than=charged['time'])

    rig.paused.domain().suspend()
    rig.off.domain().destroy()
    changed_at = time.time()
    stopped = rig.wait(lambda d: item(d, paused).get('state') == 'paused'
                       and item(d, off).get('state') == 'shutoff',
                       newer_than=changed_at)
    # the first tick that saw them stopped may still charge the CPU time
    # they used before; from the next one on their counters stand still
    before = support.wait_ticks(rig.snapshot, 2, agent=rig.agent)
    time.sleep(LONGER_THAN_RETENTION_S)
    after = support.wait_ticks(rig.snapshot, 1, agent=rig.agent)
    kept = {u: (item(before, u)['total_uj'], item(after, u).get('total_uj'))
            for u in (paused, off)}
    states = {u: item(after, u).get('state') for u in (paused, off)}
    shares = {u: (rig.share_counter(u), item(after, u).get('package_uj'))
              for u in (paused, off)}

    line = rig.paused.line_count()
    rig.paused.domain().resume()
    resumed_at = time.time()
    charged_again = rig.wait(
        lambda d: item(d, paused).get('state') == 'running' and
        item(d, paused)['total_uj'] > kept[paused][1],
        newer_than=resumed_at, timeout=30)
    charged_after_s = charged_again['time'] - resumed_at
    read = rig.paused.wait_for_read(
        lambda r: r.line_no >= line and r.int() > shares[paused][0],
        timeout=60)

    rig.off.domain().undefine()
    undefined_at = time.monotonic()
    listed = rig.wait(lambda d: item(d, off).get('state') == 'undefined',
                      newer_than=time.time(), timeout=30)
    gone = rig.wait(lambda d: not item(d, off), timeout=RETENTION_S + 30)
    dropped_after_s = time.monotonic() - undefined_at
    support.wait_until(lambda: not os.path.exists(
        os.path.join(rig.work, off)), 10, what='the share removed')
    share_removed_after_s = time.monotonic() - undefined_at
    log = rig.agent.log_text()
    support.summary(
        record_property, 'lifecycle',
        'paused and shut off for %.1fs (retention %.0fs): states %s, '
        'counters (before, after) %s, share counter vs snapshot package '
        '%s; resumed guest charged again %.2fs after resume and read %d uJ '
        'from its share (%d before); undefined domain listed as %s, '
        'dropped from the snapshot %.1fs after undefine, share removed '
        'after %.1fs; tracebacks %d' % (
            after['time'] - stopped['time'], RETENTION_S, states, kept,
            shares, charged_after_s, read.int(), shares[paused][0],
            item(listed, off).get('state'), dropped_after_s,
            share_removed_after_s, support.log_tracebacks(log)))
    assert states == {paused: 'paused', off: 'shutoff'}
    assert after['time'] - stopped['time'] > RETENTION_S
    # not reset, not dropped; a paused QEMU's emulator threads still use
    # a little CPU, which is charged like any other
    assert kept[off][0] > 0 and kept[off][1] == kept[off][0], kept
    assert kept[paused][0] > 0 and kept[paused][1] >= kept[paused][0], kept
    # a share is written once when its instance stops running (the
    # paused one's may lag its snapshot counter by that emulator time)
    assert shares[off][0] == shares[off][1] > 0, shares
    assert 0 < shares[paused][0] <= shares[paused][1], shares
    assert charged_after_s < 10
    assert read.int() > shares[paused][0]
    assert RETENTION_S - INTERVAL <= dropped_after_s <= RETENTION_S + 10
    assert not item(gone, off)
    assert support.log_tracebacks(log) == 0, log[-3000:]
