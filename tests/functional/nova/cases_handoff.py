"""Counters that follow an instance (scaph_openstack/handoff.py) through
Nova's own compute manager, conductor and API, with scaphandre.LibvirtDriver
(doc/nova.md, "Counters that follow the instance").

Nova's functional harness as in cases_servers.py (fakelibvirt, computes
'src' and 'dest' in one process). Both computes share one work_dir, hence
one handoff directory: which host held, recorded or offered is read from
spies on each compute's driver, the files from that one directory.

The agent is not part of Nova's harness (tests/unit/test_handoff.py and
tests/functional/debian13/test_agent_migration.py cover its side):
FakeAgent stands for it, answering every hold with known, increasing
values, as the real one answers once they are in its ledger.

"Current" libvirt: fakelibvirt has no virtiofsd (nothing answers
--print-capabilities) and reports a libvirt older than 10.5, so the
driver's probe is patched to say yes; "old" is fakelibvirt as it is.

Run by test_nova_servers.py (test_nova_handoff), one test per case.
"""

import os

# Native threads, as cases_servers.py (before anything imports eventlet).
os.environ.setdefault('OS_NOVA_DISABLE_EVENTLET_PATCHING', '1')
from nova import monkey_patch  # noqa: E402

monkey_patch.patch(backend='threading')

import json  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import fixtures  # noqa: E402

from nova import test  # noqa: E402
from nova.tests.fixtures import libvirt as fakelibvirt  # noqa: E402
from nova.tests.functional.libvirt import base  # noqa: E402

from scaph_openstack import handoff  # noqa: E402
from scaph_openstack.nova import driver  # noqa: E402
from scaph_openstack.share import layout  # noqa: E402
from scaph_openstack.share import tree  # noqa: E402
from tests.functional.nova import cases_servers  # noqa: E402
from tests.functional.nova.cases_servers import SHARE_ON  # noqa: E402
from tests.functional.nova.cases_servers import (  # noqa: E402
    ShareServersTestBase)

KEY = driver.SYSMETA_COUNTERS_KEY
ENERGY_FILES = {'package': (layout.PACKAGE_DIR, 'energy_uj'),
                'dram': (layout.DRAM_DIR, 'energy_uj')}
SILENT_TIMEOUT_S = 1.0


class FakeAgent(fixtures.Fixture):
    """Stands for this process's agent, in a thread: it keeps the meta
    file of every share current (the driver waits for an answer only
    where an agent does, driver.agent_publishes) and answers every
    ``.hold`` of the handoff directory with a ``.held`` of the next values
    (n-th answer: n * STEP µJ package, a quarter of it DRAM; shown
    quantised to QUANTUM). ``answering`` False: a hung agent, which
    publishes but answers nothing; ``publishing`` False: no agent."""

    STEP = 1_000_000_007
    QUANTUM = 1_000_000
    INTERVAL_S = 1.0
    POLL_S = 0.02

    def __init__(self, work_dir):
        super().__init__()
        self.work_dir = work_dir
        self.answers = []          # (uuid, handoff.Counters)
        self.answering = True
        self.publishing = True

    def _setUp(self):
        stop = threading.Event()
        thread = threading.Thread(target=self._run, args=(stop,),
                                  daemon=True)
        thread.start()
        self.addCleanup(thread.join, 5)
        self.addCleanup(stop.set)

    def _run(self, stop):
        while not stop.wait(self.POLL_S):
            if not self.publishing:
                continue
            for step in ((self.publish, self.answer_holds)
                         if self.answering else (self.publish,)):
                try:
                    step()
                except (OSError, ValueError):
                    pass      # a file going away under us: next round

    def publish(self):
        shares = tree.ShareTree(self.work_dir)
        try:
            for uuid in shares.instance_names():
                meta = layout.meta_document(
                    uuid, time.time(), self.INTERVAL_S, 'fake', 'fake',
                    self.QUANTUM)
                shares.write_instance(
                    uuid, {('', layout.META_FILE): layout.meta_file(meta)})
        finally:
            shares.close()

    def answer_holds(self):
        fd = handoff.open_directory(self.work_dir)
        if fd is None:
            return
        try:
            for uuid in handoff.scan(fd):
                hold = handoff.read(fd, uuid, handoff.HOLD)
                if hold is None:
                    continue
                held = handoff.read(fd, uuid, handoff.HELD)
                if held is not None and held['token'] == hold['token']:
                    continue
                counters = self.next_counters(hold['token'])
                handoff.write(fd, uuid, handoff.HELD, counters.as_dict())
                self.answers.append((uuid, counters))
        finally:
            os.close(fd)

    def next_counters(self, token):
        n = len(self.answers) + 1
        energy = {'package': n * self.STEP, 'dram': n * self.STEP // 4}
        shown = {kind: layout.quantise(uj, self.QUANTUM)
                 for kind, uj in energy.items()}
        return handoff.Counters(token, energy, shown)

    def last(self, uuid):
        answers = [c for u, c in self.answers if u == uuid]
        return answers[-1] if answers else None


class HandoffTestBase(ShareServersTestBase):
    """Computes src and dest; the fake agent; spies on the drivers'
    _record_counters, _offer_counters and _release_counters."""

    CAST_AS_CALL = False
    COMPUTES = ('src', 'dest')
    MIGRATABLE = True    # "current" libvirt and virtiofsd

    def setUp(self):
        super().setUp()
        self.src = self.computes['src']
        self.dest = self.computes['dest']
        if self.MIGRATABLE:
            # fakelibvirt says libvirt 8.x and no virtiofsd exists here
            # to print capabilities: stand for libvirt >= 10.5 with a
            # virtiofsd saying migrate-precopy (Debian 13).
            self.useFixture(fixtures.MockPatchObject(
                driver.LibvirtDriver, '_probe_share_migration',
                return_value=(True, '')))
            # fakelibvirt's QEMU is Nova's minimum, 6.2: stand for a
            # source with QEMU >= 8.2 too.
            self.useFixture(fixtures.MockPatchObject(
                driver.LibvirtDriver, '_source_share_migratable',
                return_value=(True, '')))
        self.flags(handoff_timeout=10.0, group='scaphandre')
        self.useFixture(fixtures.MonkeyPatch(
            'scaph_openstack.nova.driver.HANDOFF_POLL_S', 0.02))
        self.agent = self.useFixture(FakeAgent(self.work_dir))
        self.calls = []      # (host, method, uuid, value)
        for host, compute in self.computes.items():
            for name in ('_record_counters', '_offer_counters',
                         '_release_counters'):
                self._spy(host, compute.driver, name)

    def _spy(self, host, drv, name):
        real = getattr(drv, name)

        def spy(instance, *args, **kwargs):
            result = real(instance, *args, **kwargs)
            value = args[0] if args else result
            self.calls.append((host, name, instance.uuid, value))
            return result
        setattr(drv, name, spy)

    # -- what happened --

    def _called(self, name, host=None):
        return [(h, value) for h, n, _uuid, value in self.calls
                if n == name and host in (None, h)]

    def _handoff(self, server, kind):
        fd = handoff.open_directory(self.work_dir)
        if fd is None:
            return None
        try:
            return handoff.read(fd, server['id'], kind)
        finally:
            os.close(fd)

    def _energy(self, server, kind='package'):
        subdir, name = ENERGY_FILES[kind]
        path = os.path.join(self.work_dir, server['id'], subdir, name)
        with open(path) as f:
            return int(f.read())

    def _recorded(self, server):
        recorded = self._sysmeta(server).get(KEY)
        return json.loads(recorded) if recorded else None

    def _write_energy(self, server, package_uj, dram_uj):
        # What this host's agent published for the guest since it started.
        tree.ShareTree(self.work_dir).write_instance(
            server['id'], layout.zone_files(package_uj, dram_uj))

    # -- assertions --

    def assertRecorded(self, server, host):
        """host held the counters, the agent answered, the answer is in
        the instance's system metadata (the database)."""
        answer = self.agent.last(server['id'])
        self.assertIsNotNone(answer, 'the fake agent answered no hold')
        recorded = [value for _h, value in
                    self._called('_record_counters', host)]
        self.assertIn(answer, recorded)
        self.assertEqual(answer.as_dict(), self._recorded(server))
        return answer

    def assertStartedFrom(self, server, host, counters):
        """host offered counters before the domain ran there: a .start
        with them, a share showing at least what the guest saw."""
        offers = [json.loads(value) for _h, value in
                  self._called('_offer_counters', host) if value]
        self.assertTrue(offers, 'nothing offered on %s' % host)
        self.assertEqual(counters.as_dict(), offers[-1])
        self.assertEqual(counters.as_dict(),
                         self._handoff(server, handoff.START))
        for kind, shown in counters.shown_uj.items():
            self.assertGreaterEqual(self._energy(server, kind), shown, kind)

    def assertShows(self, server, counters):
        for kind, shown in counters.shown_uj.items():
            self.assertEqual(shown, self._energy(server, kind), kind)


class LiveMigrationHandoffTest(base.LibvirtMigrationMixin, HandoffTestBase):

    def test_live_migration_carries_counters(self):
        self.server = self._boot(SHARE_ON, host='src')
        self._live_migrate(self.server, host='dest')
        self.assertTrue(self.migrate_stub_ran)
        server = self.api.get_server(self.server['id'])
        self.assertEqual('dest', server['OS-EXT-SRV-ATTR:host'])
        # check_can_live_migrate_source held on src; the destination's
        # pre_live_migration read the record from the database.
        counters = self.assertRecorded(server, 'src')
        self.assertEqual(1, len(self._called('_record_counters')))
        self.assertStartedFrom(server, 'dest', counters)
        self.assertShows(server, counters)
        # src offered nothing (its boot had no record to offer).
        self.assertEqual([], [v for _h, v in
                              self._called('_offer_counters', 'src') if v])

    def test_live_migration_scheduled_carries_counters(self):
        self.server = self._boot(SHARE_ON, host='src')
        self._live_migrate(self.server)
        server = self.api.get_server(self.server['id'])
        self.assertEqual('dest', server['OS-EXT-SRV-ATTR:host'])
        self.assertStartedFrom(server, 'dest',
                               self.assertRecorded(server, 'src'))

    def _live_migrate_fails(self, status='ACTIVE'):
        self.api.post_server_action(
            self.server['id'],
            {'os-migrateLive': {'host': 'dest', 'block_migration': 'auto'}})
        self._wait_for_migration_status(self.server, ['error', 'failed'])
        # No fault is recorded for this ERROR: do not wait for one.
        return self._wait_for_server_parameter(
            self.server, {'status': status, 'OS-EXT-STS:task_state': None,
                          'OS-EXT-SRV-ATTR:host': 'src'},
            wait_for_fault_key=False)

    def _released_on_src_since(self, count):
        return [h for h, _v in self._called('_release_counters')[count:]
                if h == 'src']

    def test_failed_migration_releases_hold(self):
        self.server = self._boot(SHARE_ON, host='src')

        def fail(domain, destination, params, flags):
            self.migrate_stub_ran = True
            raise fakelibvirt.make_libvirtError(
                fakelibvirt.libvirtError, 'migration failed',
                error_code=fakelibvirt.VIR_ERR_OPERATION_FAILED)
        self.useFixture(fixtures.MonkeyPatch(
            'nova.tests.fixtures.libvirt.Domain.migrateToURI3', fail))
        releases = len(self._called('_release_counters'))
        # Nova's own outcome when libvirt's migrate call fails: the
        # instance in ERROR on its host (the compute manager cannot tell
        # how far the migration went), its domain still running there.
        server = self._live_migrate_fails(status='ERROR')
        self.assertTrue(self.migrate_stub_ran)
        counters = self.assertRecorded(server, 'src')
        # dest was offered the values (pre_live_migration) ...
        self.assertStartedFrom(server, 'dest', counters)
        # ... and rollback_live_migration_at_source let them grow again.
        self.assertEqual(['src'], self._released_on_src_since(releases))
        self.assertIsNone(self._handoff(server, handoff.HOLD))
        self.assertIsNone(self._handoff(server, handoff.HELD))

    def test_failed_pre_live_migration_hold_expires(self):
        """When pre_live_migration fails on the destination, Nova rolls
        back with _rollback_live_migration(pre_live_migration=True), which
        skips driver.rollback_live_migration_at_source: the hold that
        check_can_live_migrate_source took has a deadline, after which the
        agent lets the counters grow again (tests/unit/test_handoff.py)."""
        self.server = self._boot(SHARE_ON, host='src')
        self.useFixture(fixtures.MockPatch(
            'nova.virt.libvirt.driver.LibvirtDriver.pre_live_migration',
            side_effect=test.TestingException('pre_live_migration')))
        releases = len(self._called('_release_counters'))
        before = time.time()
        server = self._live_migrate_fails()
        self.assertFalse(self.migrate_stub_ran)
        self.assertRecorded(server, 'src')
        self.assertEqual([], self._released_on_src_since(releases))
        hold = self._handoff(server, handoff.HOLD)
        self.assertIsNotNone(hold)
        self.assertGreater(hold['expires'], before)
        self.assertLessEqual(hold['expires'],
                             time.time() + driver.LIVE_MIGRATION_HOLD_S)

    def test_live_migration_makes_the_hold_last(self):
        # Once the destination is prepared, the source's live_migration
        # renews the hold without a deadline: the values the destination
        # continues from stay the source's last.
        self.server = self._boot(SHARE_ON, host='src')
        self._live_migrate(self.server, host='dest')
        hold = self._handoff(self.server, handoff.HOLD)
        self.assertIsNotNone(hold)
        self.assertIsNone(hold['expires'])
        self.assertEqual(self._recorded(self.server)['token'],
                         hold['token'])

    def test_silent_agent_live_migration_completes(self):
        self.flags(handoff_timeout=SILENT_TIMEOUT_S, group='scaphandre')
        self.agent.answering = False
        self.server = self._boot(SHARE_ON, host='src')
        self._live_migrate(self.server, host='dest')
        server = self.api.get_server(self.server['id'])
        self.assertEqual('dest', server['OS-EXT-SRV-ATTR:host'])
        self.assertIn('did not answer within', self.stdlog.logger.output)
        self.assertEqual([('src', None)], self._called('_record_counters'))
        self.assertIsNone(self._recorded(server))
        self.assertIsNone(self._handoff(server, handoff.START))


class OldLibvirtRefusalTest(HandoffTestBase):
    """fakelibvirt as it is (older than 10.5): refused by the first
    destination checked, with three computes to retry on."""

    COMPUTES = ('src', 'dest', 'dest2')
    MIGRATABLE = False

    def setUp(self):
        super().setUp()
        self.tried = cases_servers.spy_destination_checks(self)

    def test_refused_once_nothing_held(self):
        server = self._boot(SHARE_ON, host='src')
        self._live_migrate(server, migration_expected_state='error',
                           server_expected_state='ACTIVE')
        event = self._wait_for_action_fail_completion(
            server, 'live-migration', 'conductor_live_migrate_instance')
        self.assertIn('No valid host', event['details'])
        server = self.api.get_server(server['id'])
        self.assertEqual('src', server['OS-EXT-SRV-ATTR:host'])
        # No retry storm: one destination checked of the two.
        self.assertEqual(1, len(self.tried), self.tried)
        self.assertIn(self.tried[0], ('dest', 'dest2'))
        # Refused before the source's check: nothing held or recorded.
        self.assertEqual([], self._called('_record_counters'))
        self.assertIsNone(self._handoff(server, handoff.HOLD))
        self.assertIsNone(self._recorded(server))


class SuspendHandoffTest(HandoffTestBase):

    def test_suspend_and_resume_allowed(self):
        server = self._boot(SHARE_ON, host='src')
        count = len(self.defined)
        self._suspend_server(server)
        self._resume_server(server)
        # Resumed from its saved XML, with the share.
        self.assertGreater(len(self.defined), count)
        record = self._last_define(server)
        self.assertTrue(driver.share_devices(record.xml, server['id']))
        self.assertIn(os.path.join(*ENERGY_FILES['package']), record.share)
        # It never left: nothing held, nothing carried.
        self.assertEqual([], self._called('_record_counters'))
        self.assertIsNone(self._recorded(server))


class ColdMigrationHandoffTest(HandoffTestBase):

    def setUp(self):
        super().setUp()
        # Nova's own disk copy is beyond fakelibvirt (as cases_servers.py
        # does); the driver's override runs before it.
        self.useFixture(fixtures.MockPatch(
            'nova.virt.libvirt.driver.LibvirtDriver'
            '.migrate_disk_and_power_off', return_value='{}'))

    def test_cold_migration_carries_counters(self):
        server = self._boot(SHARE_ON, host='src')
        server = self._migrate_server(server, host='dest')
        self.assertEqual('dest', server['OS-EXT-SRV-ATTR:host'])
        counters = self.assertRecorded(server, 'src')
        self.assertStartedFrom(server, 'dest', counters)
        self.assertShows(server, counters)
        self.assertEqual('dest', self._last_define(server).host)
        self._confirm_resize(server)
        self.assertEqual(counters.as_dict(), self._recorded(server))

    def test_resize_carries_counters(self):
        server = self._boot(SHARE_ON, host='src')
        bigger = self._create_flavor(memory_mb=1024, vcpu=1, disk=1,
                                     ephemeral=0, extra_spec=SHARE_ON)
        server = self._resize_server(server, bigger)
        self.assertEqual('dest', server['OS-EXT-SRV-ATTR:host'])
        counters = self.assertRecorded(server, 'src')
        self.assertStartedFrom(server, 'dest', counters)
        self._confirm_resize(server)

    def test_cold_migration_silent_agent_completes(self):
        self.flags(handoff_timeout=SILENT_TIMEOUT_S, group='scaphandre')
        server = self._boot(SHARE_ON, host='src')
        # A record from an earlier stop, then an agent that stops answering.
        server = self._stop_server(server)
        earlier = self.assertRecorded(server, 'src')
        server = self._start_server(server)
        self.agent.answering = False
        server = self._migrate_server(server, host='dest')
        self.assertIn('did not answer within', self.stdlog.logger.output)
        self.assertEqual(earlier.as_dict(), self._recorded(server))
        self.assertStartedFrom(server, 'dest', earlier)


class ShelveEvacuateHandoffTest(HandoffTestBase):

    def test_unshelve_on_other_host_carries_counters(self):
        server = self._boot(SHARE_ON, host='src')
        server = self._shelve_server(server)    # and offloaded
        # power_off held, then the offload's destroy held again: the
        # later answer (higher) is the one recorded.
        counters = self.assertRecorded(server, 'src')
        self.api.post_server_action(server['id'],
                                    {'unshelve': {'host': 'dest'}})
        server = self._wait_for_state_change(server, 'ACTIVE')
        self.assertEqual('dest', server['OS-EXT-SRV-ATTR:host'])
        self.assertEqual(counters.as_dict(), self._recorded(server))
        self.assertStartedFrom(server, 'dest', counters)
        self.assertShows(server, counters)

    def test_evacuate_continues_from_last_record(self):
        # The record of its last stop is all there is: src dies with it
        # stopped, and the evacuation rebuilds it, stopped, on dest.
        server = self._boot(SHARE_ON, host='src')
        server = self._stop_server(server)
        last = self.assertRecorded(server, 'src')
        self.src.stop()
        self.api.put_service(self.src.service_ref.uuid,
                             {'forced_down': True})
        server = self._evacuate_server(server, {'host': 'dest'},
                                       expected_host='dest',
                                       expected_state='SHUTOFF')
        # dest's _create_guest continued from the record before its
        # domain ran; bringing it back to stopped recorded dest's own.
        offers = [json.loads(value) for _h, value in
                  self._called('_offer_counters', 'dest') if value]
        self.assertEqual(last.as_dict(), offers[0])
        self.assertNotIn('src', [h for h, _v in
                                 self._called('_record_counters')[1:]])
        for kind, uj in last.energy_uj.items():
            self.assertGreaterEqual(
                self._recorded(server)['energy_uj'][kind], uj)


class StopStartHandoffTest(HandoffTestBase):

    def test_stop_start_releases_hold_never_lowers(self):
        server = self._boot(SHARE_ON, host='src')
        # The agent here published more than it will answer (its answers
        # start at 1 STEP): the start must not lower the share.
        high = 50 * FakeAgent.STEP
        self._write_energy(server, high, high)
        server = self._stop_server(server)
        counters = self.assertRecorded(server, 'src')
        self.assertIsNotNone(self._handoff(server, handoff.HOLD))
        self._start_server(server)
        self.assertIsNone(self._handoff(server, handoff.HOLD))
        self.assertIsNone(self._handoff(server, handoff.HELD))
        self.assertIn('src', [h for h, _v in
                              self._called('_release_counters')])
        self.assertEqual(counters.as_dict(),
                         self._handoff(server, handoff.START))
        self.assertEqual(high, self._energy(server, 'package'))
        self.assertEqual(high, self._energy(server, 'dram'))

    def test_stop_start_raises_to_shown(self):
        server = self._boot(SHARE_ON, host='src')
        server = self._stop_server(server)
        counters = self.assertRecorded(server, 'src')
        self._start_server(server)
        self.assertStartedFrom(server, 'src', counters)
        self.assertShows(server, counters)

    def test_no_agent_stop_does_not_wait(self):
        # Nothing keeps the share's meta file current: no agent to wait
        # for, whatever handoff_timeout says.
        self.flags(handoff_timeout=60.0, group='scaphandre')
        self.agent.publishing = False
        server = self._boot(SHARE_ON, host='src')
        started = time.monotonic()
        self._stop_server(server)
        self.assertLess(time.monotonic() - started, 30)
        self.assertIsNone(self._recorded(server))
        self._start_server(server)
        self.assertIsNone(self._handoff(server, handoff.HOLD))

    def test_silent_agent_stop_completes(self):
        self.flags(handoff_timeout=SILENT_TIMEOUT_S, group='scaphandre')
        self.agent.answering = False
        server = self._boot(SHARE_ON, host='src')
        self._stop_server(server)
        self.assertIn('did not answer within', self.stdlog.logger.output)
        self.assertIsNone(self._recorded(server))
        self._start_server(server)
        self.assertIsNone(self._handoff(server, handoff.HOLD))
