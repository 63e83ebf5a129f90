"""Live migration and save/restore of a guest reading its virtiofs share,
on Debian 13's libvirt 11.3 / QEMU 10.0 / virtiofsd 1.13 (two chroot
libvirtds, tools/debian13-stack).

virtiofsd 1.13 migrates its open inodes by path (find-paths), looked up
again in the destination's own shared directory. A file the host replaced
with write-temp + rename leaves the guest holding an inode that has no path
any more; a file updated in place keeps its inode. These tests are the
evidence for updating the share's counters in place: with in-place writes
migration, save/restore and managed save work and the guest's counters stay
monotonic; with renames the migration fails ("lost inode") unless virtiofsd
runs with --migration-on-error=guest-error.

Each host has its own share (a tmpfs at SHARE_IN_ROOT in its root), with
the same path inside both roots, as two compute nodes would. A writer
thread plays both agents: every second it adds to the counters, and the
destination's value is never below the source's (a handoff). The last digit
of every value names the host that wrote it (1: a, 2: b).
"""

import os
import threading
import time
import uuid as uuidlib

import pytest

from scaph_openstack.share import layout
from scaph_openstack.share.tree import ShareTree
from tests.functional.helpers import debian13
from tests.functional.helpers.guest import Guest

PERIOD = 1                  # the guest's read period and the writer's, s
STEP_UJ = 1000000           # added every second (1 W)
TAG = {'a': 1, 'b': 2}      # last digit of a host's values
PKG = layout.PACKAGE_DIR + '/energy_uj'
DRAM = layout.DRAM_DIR + '/energy_uj'
MEMORY_MB = 160


def write_in_place(path, data):
    """Overwrite ``path`` from offset 0, same inode (no O_TRUNC: the new
    value is never shorter, so nothing of the old one is left)."""
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    try:
        os.pwrite(fd, data, 0)
    finally:
        os.close(fd)


def write_by_rename(path, data):
    """Write a temporary file beside ``path`` and rename it over it: a
    new inode each time."""
    tmp = os.path.join(os.path.dirname(path), '.scaph-test-tmp')
    with open(tmp, 'wb') as f:
        f.write(data)
    os.chmod(tmp, layout.FILE_MODE)
    os.rename(tmp, path)


class Writer(threading.Thread):
    """Both hosts' agents: each PERIOD, base += STEP_UJ and every host's
    energy_uj files get base + bonus[host] (package) and base // 4 +
    bonus[host] (dram), written with protocol[host]."""

    def __init__(self, stack, uuid, protocol):
        super().__init__(daemon=True)
        self.paths = {
            name: (os.path.join(host.share_dir, uuid, PKG),
                   os.path.join(host.share_dir, uuid, DRAM))
            for name, host in stack.hosts.items()}
        self.protocol = dict(protocol)
        self.base = 10 * STEP_UJ
        self.bonus = dict(TAG)
        self.errors = []
        self._halt = threading.Event()
        self.lock = threading.Lock()
        for name, host in stack.hosts.items():
            ShareTree(host.share_dir).write_instance(
                uuid, layout.zone_files(*self.values(name)))

    def values(self, name):
        return (self.base + self.bonus[name],
                self.base // 4 + self.bonus[name])

    def hand_off(self, dst, src):
        """From now on ``dst``'s values exceed ``src``'s."""
        with self.lock:
            self.bonus[dst] = (max(self.bonus.values()) // 10 * 10 +
                               STEP_UJ // 2 + TAG[dst])

    def tick(self):
        """One update of every host's counters."""
        with self.lock:
            self.base += STEP_UJ
            for name, (pkg, dram) in self.paths.items():
                write = self.protocol[name]
                p, d = self.values(name)
                try:
                    write(pkg, b'%d\n' % p)
                    write(dram, b'%d\n' % d)
                except OSError as exc:
                    self.errors.append('%s: %s' % (name, exc))

    def run(self):
        while not self._halt.wait(PERIOD):
            self.tick()

    def stop(self):
        self._halt.set()
        self.join(10)


def host_of(value):
    return {v: k for k, v in TAG.items()}.get(value % 10)


def check_reads(guest, start_line=0):
    """Every read from ``start_line`` on: numbers, never lower than the
    one before, at most 2 periods apart (guest uptime). Returns them."""
    reads = [r for r in guest.reads() if r.line_no >= start_line]
    assert len(reads) >= 3, guest.tail()
    for prev, cur in zip(reads, reads[1:], strict=False):
        for path in (PKG, DRAM):
            assert cur.int(path) >= prev.int(path), (
                'counter %s went down: %r then %r' % (path, prev, cur))
        assert cur.uptime - prev.uptime <= 2 * PERIOD, (
            'gap of %.2fs between %r and %r'
            % (cur.uptime - prev.uptime, prev, cur))
    return reads


def wait_reads_from(guest, host, n=2, timeout=30):
    """Wait for ``n`` new reads of ``host``'s values (both counters)."""
    start = guest.line_count()
    for _ in range(n):
        r = guest.wait_for_read(
            lambda r, start=start: (r.line_no >= start and
                       r.values.get(PKG, '').isdigit() and
                       r.values.get(DRAM, '').isdigit() and
                       host_of(r.int(PKG)) == host and
                       host_of(r.int(DRAM)) == host),
            timeout=timeout, start_line=start)
        start = r.line_no + 1
    return r


@pytest.fixture
def d13_guest(d13_stack, d13_images):
    """make(uuid) -> a started Guest on host a, sharing that instance's
    directory read-only; every domain is purged from both hosts after."""
    made = []

    def make(uuid, **kwargs):
        # No <binary>: libvirt finds virtiofsd (and that it can migrate)
        # through QEMU's vhost-user descriptor, 50-virtiofsd.json.
        options = dict(virtiofsd_binary=None, readonly=True,
                       memory_mb=MEMORY_MB, label='d13',
                       cmdline_params={'period': PERIOD})
        options.update(kwargs)
        guest = Guest(uri=d13_stack.hosts['a'].uri, images=d13_images,
                      log_dir=d13_stack.shared_dir, serial_append=True,
                      uuid=uuid,
                      share_dir='%s/%s' % (debian13.SHARE_IN_ROOT, uuid),
                      **options)
        made.append(guest)
        t0 = time.monotonic()
        guest.start()
        assert guest.wait_booted(60) == 'ok', guest.tail()
        guest.boot_s = time.monotonic() - t0
        return guest

    yield make
    for guest in made:
        d13_stack.purge(guest.uuid)
        guest.move_to(d13_stack.hosts['a'].uri)
        guest.cleanup()


def _virtiofsd_args(stack, uuid):
    """The command lines of the virtiofsd processes serving ``uuid``."""
    out = []
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open('/proc/%s/cmdline' % pid, 'rb') as f:
                argv = f.read().split(b'\0')
        except OSError:
            continue
        if argv and argv[0].endswith(b'virtiofsd') and uuid.encode() in \
                b' '.join(argv):
            out.append(b' '.join(argv).decode().strip())
    return out


def test_live_migration_in_place_writes(d13_stack, d13_guest, record_property):
    """a -> b -> a while both hosts update in place: the migrations
    complete, the guest's counters stay monotonic without a gap, and after
    each migration it reads the destination's share."""
    uuid = str(uuidlib.uuid4())
    writer = Writer(d13_stack, uuid, {'a': write_in_place,
                                      'b': write_in_place})
    writer.hand_off('b', 'a')
    guest = d13_guest(uuid)
    clock = debian13.ReadClock(guest)
    writer.start()
    clock.start()
    try:
        args = _virtiofsd_args(d13_stack, uuid)
        assert args and all('--readonly' in a for a in args), args
        wait_reads_from(guest, 'a', 3)

        to_b = d13_stack.migrate(guest.name, 'a', 'b')
        guest.move_to(d13_stack.hosts['b'].uri)
        assert d13_stack.where(guest.uuid) == 'b'
        wait_reads_from(guest, 'b', 3)

        writer.hand_off('a', 'b')
        to_a = d13_stack.migrate(guest.name, 'b', 'a')
        guest.move_to(d13_stack.hosts['a'].uri)
        assert d13_stack.where(guest.uuid) == 'a'
        wait_reads_from(guest, 'a', 3)
    finally:
        clock.stop()
        writer.stop()
    reads = check_reads(guest)
    assert not writer.errors, writer.errors
    # The guest read a's, then b's, then a's again, and nothing else.
    order = [host_of(r.int(PKG)) for r in reads]
    runs = [h for i, h in enumerate(order) if i == 0 or order[i - 1] != h]
    assert runs == ['a', 'b', 'a'], order
    # Wall clock (the guest's uptime stops while it is paused): the
    # pause at the end of each migration hides no more than a period;
    # 1 s for the 0.1 s polling, the serial log's flushing, a busy CI.
    assert clock.max_gap() <= 2 * PERIOD + 1, clock.max_gap()
    for name, value in (('boot_s', guest.boot_s), ('migrate_a_b_s', to_b),
                        ('migrate_b_a_s', to_a),
                        ('max_wall_gap_s', clock.max_gap())):
        record_property(name, round(value, 2))
    print('boot %.1fs, a->b %.1fs, b->a %.1fs, longest wall-clock gap '
          'between reads %.1fs; virtiofsd: %s' % (
              guest.boot_s, to_b, to_a, clock.max_gap(), args[0]))


def test_live_migration_rename_writes_lose_the_inode(d13_stack, d13_guest,
                                                     record_property):
    """The evidence against write-temp + rename. The source's virtiofsd
    finds the path of every inode the guest holds when the migration
    begins; a file the guest looked up and the host then replaced has no
    path left, the inode goes over as invalid, and the destination's
    virtiofsd (default --migration-on-error=abort) refuses the state: the
    migration fails and the guest stays, running, on the source. The same
    timing with an in-place update (the control) migrates."""
    uuid = str(uuidlib.uuid4())
    writer = Writer(d13_stack, uuid, {'a': write_in_place,
                                      'b': write_in_place})
    writer.hand_off('b', 'a')
    guest = d13_guest(uuid)
    a, b = d13_stack.hosts['a'], d13_stack.hosts['b']

    def update_just_after_a_read():
        # The guest has just looked the files up; its next lookup is a
        # period away, so the migration begins while it holds them.
        start = guest.line_count()
        guest.wait_for_read(lambda r: True, start_line=start)
        writer.tick()

    wait_reads_from(guest, 'a', 2)
    update_just_after_a_read()
    control = d13_stack.migrate(guest.name, 'a', 'b')
    guest.move_to(b.uri)
    wait_reads_from(guest, 'b', 2)

    writer.protocol['b'] = write_by_rename
    writer.hand_off('a', 'b')
    update_just_after_a_read()
    with pytest.raises(debian13.MigrationError) as info:
        d13_stack.migrate(guest.name, 'b', 'a')
    text = info.value.text
    src_log = b.domain_log(guest.name, 'fs0')
    dst_log = a.domain_log(guest.name, 'fs0')
    dst_qemu = a.domain_log(guest.name)
    lost = [line for line in dst_log.splitlines() if 'lost inode' in line]
    record_property('migration_error', text)
    record_property('destination_virtiofsd', lost[-1:])
    print('in-place control migrated in %.1fs; rename: failed after %.1fs: '
          '%s\n  destination virtiofsd: %s' % (control, info.value.elapsed,
                                               text, lost[-1:]))
    assert 'load of migration failed' in text, text
    assert lost and 'Migration source has lost inode' in lost[-1], dst_log
    assert 'Inode deleted (/%s)' % PKG in src_log, src_log
    assert 'Error loading back-end state of virtio-user-fs' in dst_qemu
    assert d13_stack.where(guest.uuid) == 'b'
    assert guest.is_active()
    wait_reads_from(guest, 'b', 2)
    check_reads(guest)
    assert not writer.errors, writer.errors


def _guest_error_virtiofsd(stack):
    """A virtiofsd wrapper (same path in both roots) adding
    --migration-on-error=guest-error."""
    path = os.path.join(stack.shared_dir, 'bin', 'virtiofsd-guest-error')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + '.tmp', 'w') as f:
        f.write('#!/bin/sh\nexec %s --migration-on-error=guest-error "$@"\n'
                % debian13.VIRTIOFSD)
    os.chmod(path + '.tmp', 0o755)
    os.replace(path + '.tmp', path)
    return path


def test_live_migration_rename_writes_guest_error_virtiofsd(
        d13_stack, d13_guest, record_property):
    """The fallback, for the record: with --migration-on-error=guest-error
    the same migration completes; the destination's virtiofsd marks the
    lost inode invalid (a guest using it would get EIO) and the guest,
    looking the file up again, reads the destination's counters."""
    uuid = str(uuidlib.uuid4())
    writer = Writer(d13_stack, uuid, {'a': write_by_rename,
                                      'b': write_in_place})
    writer.hand_off('b', 'a')
    guest = d13_guest(uuid,
                      virtiofsd_binary=_guest_error_virtiofsd(d13_stack))
    wait_reads_from(guest, 'a', 2)
    start = guest.line_count()
    guest.wait_for_read(lambda r: True, start_line=start)
    writer.tick()
    elapsed = d13_stack.migrate(guest.name, 'a', 'b')
    guest.move_to(d13_stack.hosts['b'].uri)
    wait_reads_from(guest, 'b', 2)
    dst_log = d13_stack.hosts['b'].domain_log(guest.name, 'fs0')
    invalid = [line for line in dst_log.splitlines()
               if 'Invalid inode' in line]
    failed_reads = [r for r in guest.reads() if not all(
        v.isdigit() for v in r.values.values())]
    record_property('destination_virtiofsd', invalid)
    print('guest-error virtiofsd: migrated in %.1fs; destination: %s; '
          'reads that failed: %s' % (elapsed, invalid, failed_reads))
    assert invalid and 'Migration source has lost inode' in invalid[-1], \
        dst_log
    assert not writer.errors, writer.errors


def test_save_restore_and_managed_save_in_place_writes(d13_stack, d13_guest,
                                                       record_property):
    """dom.save + conn.restore, then managed save + create, then a save
    restored by the other host, with the counters updated in place while
    the guest is saved: each restores, and the guest's counters carry on,
    monotonic, from the newer values."""
    import libvirt
    uuid = str(uuidlib.uuid4())
    writer = Writer(d13_stack, uuid, {'a': write_in_place,
                                      'b': write_in_place})
    guest = d13_guest(uuid)
    save_file = os.path.join(d13_stack.shared_dir, 'scaph-test-%s.save'
                             % uuid)
    writer.start()
    timings = {}
    try:
        before = wait_reads_from(guest, 'a', 3)

        t0 = time.monotonic()
        guest.domain().save(save_file)
        timings['save_s'] = time.monotonic() - t0
        assert not guest.is_active()
        time.sleep(3 * PERIOD)      # the counters move on meanwhile
        saved_value = writer.values('a')[0]
        t0 = time.monotonic()
        guest.conn().restore(save_file)
        timings['restore_s'] = time.monotonic() - t0
        after = wait_reads_from(guest, 'a', 3)
        assert after.int(PKG) >= saved_value > before.int(PKG)

        t0 = time.monotonic()
        guest.domain().managedSave()
        timings['managed_save_s'] = time.monotonic() - t0
        dom = guest.domain()
        assert not dom.isActive() and dom.hasManagedSaveImage()
        time.sleep(3 * PERIOD)
        saved_value = writer.values('a')[0]
        t0 = time.monotonic()
        dom.create()
        timings['managed_restore_s'] = time.monotonic() - t0
        assert dom.info()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert not dom.hasManagedSaveImage()
        last = wait_reads_from(guest, 'a', 3)
        assert last.int(PKG) >= saved_value > after.int(PKG)

        # A save file restored by the other host: its virtiofsd finds the
        # guest's inodes by path in its own share.
        writer.hand_off('b', 'a')
        t0 = time.monotonic()
        guest.domain().save(save_file)
        timings['save_again_s'] = time.monotonic() - t0
        time.sleep(2 * PERIOD)
        guest.move_to(d13_stack.hosts['b'].uri)
        t0 = time.monotonic()
        guest.conn().restore(save_file)
        timings['restore_on_b_s'] = time.monotonic() - t0
        assert d13_stack.where(guest.uuid) == 'b'
        wait_reads_from(guest, 'b', 3)
    finally:
        writer.stop()
        try:
            os.unlink(save_file)
        except FileNotFoundError:
            pass
    check_reads(guest)
    assert not writer.errors, writer.errors
    for name, value in timings.items():
        record_property(name, round(value, 2))
    print(', '.join('%s %.1fs' % kv for kv in timings.items()))
