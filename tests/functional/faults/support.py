"""What the fault tests share: fixtures that can be broken, and watchers.

- SteadyRapl: tests/functional/helpers/rapl.MovingRapl with a finer step
  (5 ms), pause/resume (so that exact energy can be compared while the
  counters stand still) and zones that can be broken (garbage, a
  directory, a missing file) while the "hardware" goes on counting.
- FakeProc: a fixture /proc for the ``qemu`` inventory; process
  directories appear and vanish atomically (rename), CPU time grows. Each
  process is root's (status ``Uid:``) and runs QEMU (an ``exe`` link), as
  the inventory requires.
- Watcher: threads that read files over and over and record every read
  that does not parse and every counter that went down.
- tree_state, mounts_under, umount, summary: small checks and reporting.
"""

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid as uuidlib

from tests.functional.helpers import agent as agent_helper
from tests.functional.helpers import rapl
from tests.unit import powercap

ENERGY_RE = re.compile(rb'\A[0-9]+\n\Z')
# fileutil.replace_at()'s temporaries: '.<name>.<unique part>.tmp'
AGENT_TMP_RE = re.compile(r'^\..+\.tmp$')
QEMU = '/usr/bin/qemu-system-x86_64'
# MovingRapl's zone directories and the names the agent gives them
ZONE_NAMES = {'intel-rapl:0': 'package-0', 'intel-rapl:0:0': 'dram-0',
              'intel-rapl:1': 'package-1', 'intel-rapl:1:0': 'dram-1'}
STAT = '%d (qemu-system-x86) S 1 1 1 0 -1 4194560 1 0 0 0 %d %d 0 0 20 0 ' \
       '5 0 1 1 1\n'
STATUS = 'Name:\tqemu-system-x86\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n'


def summary(record_property, name, text):
    """One line per test: printed (shown with -rA) and in the report."""
    line = '[%s] %s' % (name, text)
    print(line)
    record_property('summary', line)
    return line


def wait_until(predicate, timeout, step=0.02, what='condition'):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError('%s not reached within %ss' % (what,
                                                                timeout))
        time.sleep(step)


def read_bytes(path):
    with open(path, 'rb') as f:
        return f.read()


def read_once(path, limit=1 << 20):
    """A file's bytes from one read(2): one state of the file. f.read()
    (FileIO.readall) reads up to fstat's size and then probes for the end
    with a second read(2); a share file updated in place
    (fileutil.update_at) that grew in between (a counter gaining a digit)
    then reads as the old text and the new text's last byte, b'7407023\n'
    + b'\n' (doc/share.md). One read of tmpfs returns the whole file."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, limit)
    finally:
        os.close(fd)


def read_json(path):
    """The parsed JSON file, or None when it cannot be read/parsed."""
    try:
        with open(path, 'rb') as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None


def snapshot_doc(path):
    doc = read_json(path)
    if isinstance(doc, dict) and doc.get('format') == \
            'scaph-openstack.snapshot':
        return doc
    return None


def wait_snapshot(path, predicate=None, newer_than=None, timeout=30,
                  agent=None, step=0.02):
    """First snapshot document (raw dict, no staleness check) written
    after ``newer_than`` for which ``predicate`` holds."""
    deadline = time.monotonic() + timeout
    doc = None
    while time.monotonic() < deadline:
        if agent is not None:
            agent.check_alive()
        doc = snapshot_doc(path)
        if doc is not None and \
                (newer_than is None or doc['time'] > newer_than) and \
                (predicate is None or predicate(doc)):
            return doc
        time.sleep(step)
    raise AssertionError('no matching snapshot at %s within %ss; last: %s%s'
                         % (path, timeout, doc and _brief(doc),
                            '\nagent log:\n' + agent.tail(30)
                            if agent is not None else ''))


def wait_ticks(path, count=2, timeout=30, agent=None):
    """Wait until ``count`` more ticks were published; the last document.
    The energy of the last one was read after this call started (a tick
    reads its inputs after the previous tick finished)."""
    doc = snapshot_doc(path)
    after = doc['time'] if doc else 0
    for _ in range(count):
        doc = wait_snapshot(path, newer_than=after, timeout=timeout,
                            agent=agent)
        after = doc['time']
    return doc


def steady_tick(agent, watts, tolerance=0.05, timeout=30):
    """The next tick whose zone powers ({zone name: watts}) are within
    ``tolerance`` of the fixture's. A pause that begins right after it is
    judged by a sound estimate: the agent multiplies the last tick's power
    by the pause, and a 2-4 wrap pause may only be off by 1/(2 x wraps).
    On a busy 2-core machine the fixture thread or the agent is sometimes
    descheduled for tens of ms, which skews one 0.2 s tick's power by
    more than that: an artefact of the fixture, not of RAPL."""
    deadline = time.monotonic() + timeout
    doc = snapshot_doc(agent.snapshot_path)
    while time.monotonic() < deadline:
        doc = wait_snapshot(agent.snapshot_path,
                            newer_than=doc and doc['time'], agent=agent,
                            step=0.003)
        power = {z['name']: z['power_w'] for z in doc['zones']}
        if all(abs(power[name] - w) <= tolerance * w
               for name, w in watts.items()):
            return doc
    raise AssertionError('no tick within %d%% of the fixture power in %ss'
                         % (tolerance * 100, timeout))


def _brief(doc):
    return {'time': doc.get('time'), 'zones': zones(doc),
            'instances': [(i['uuid'], i['running'], i['total_uj'])
                          for i in doc.get('instances', ())]}


def zones(doc):
    """{zone name: measured_uj} of a snapshot document."""
    return {z['name']: z['measured_uj'] for z in doc['zones']}


def instance(doc, uuid):
    for item in doc['instances']:
        if item['uuid'] == uuid:
            return item
    return None


def conservation_errors(doc):
    """Zones where instances + residual + idle != measured (contract 1)."""
    errors = []
    for zone in doc['zones']:
        given = sum(i['energy_uj'].get(zone['name'], 0)
                    for i in doc['instances'])
        total = given + zone['residual_uj'] + zone['unallocated_idle_uj']
        if total != zone['measured_uj']:
            errors.append('%s: %d + %d + %d != %d' % (
                zone['name'], given, zone['residual_uj'],
                zone['unallocated_idle_uj'], zone['measured_uj']))
    return errors


def signal_group(proc, sig):
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def children(pid):
    """PIDs whose parent is ``pid`` (zombies left out)."""
    return [child for child, parent, _group in
            agent_helper.live_processes() if parent == pid]


def worker_pid(agent, timeout=10):
    """The pid of the agent's service worker: oslo.service's threading
    backend (cotyledon) ticks in a child of the master process and
    respawns it if it dies, so "still the same worker" is what tells a
    fault survived from a crash that was papered over."""
    return wait_until(lambda: (children(agent.pid) or [None])[0], timeout,
                      what='the agent worker process')


def log_tracebacks(text):
    return text.count('Traceback (most recent call last)')


# -- energy ----------------------------------------------------------------

class SteadyRapl(rapl.MovingRapl):
    """MovingRapl stepping every ``step`` s, pausable, with breakable zones.

    Starts paused unless ``paused=False``: the agent's first (baseline)
    tick then reads known values. ``total(zone)`` is the energy the zone
    counted since the fixture was made: wraps x range + counter.
    """

    def __init__(self, root, watts=None, max_range=powercap.INTEL_RANGE,
                 step=0.005, paused=True):
        super().__init__(root, watts, max_range)
        self.step = step
        self.paused = paused
        self.broken = {}

    def _advance(self, zone, energy_uj):
        total = self.energy[zone] + energy_uj
        self.wraps[zone] += total // self.max_range
        self.energy[zone] = total % self.max_range
        if zone not in self.broken:
            powercap.set_energy(self.root, zone, self.energy[zone])

    def add(self, zone, energy_uj):
        with self._lock:
            self._advance(zone, energy_uj)

    def _run(self):
        last = time.monotonic()
        while not self._stop.wait(self.step):
            now = time.monotonic()
            with self._lock:
                if not self.paused:
                    for zone, watts in self.watts.items():
                        self._advance(zone, int(watts * (now - last) * 1e6))
            last = now

    def pause(self):
        """After this returns, no counter moves until resume()."""
        with self._lock:
            self.paused = True

    def resume(self):
        with self._lock:
            self.paused = False

    def total(self, zone):
        with self._lock:
            return self.wraps[zone] * self.max_range + self.energy[zone]

    def totals(self):
        return {zone: self.total(zone) for zone in self.watts}

    def _path(self, zone):
        return os.path.join(self.root, zone, 'energy_uj')

    def break_zone(self, zone, how):
        """'garbage': energy_uj holds text; 'directory': a directory in
        its place (EISDIR); 'missing': no file (ENOENT). The counter goes
        on counting, unseen."""
        with self._lock:
            path = self._path(zone)
            self.broken[zone] = how
            if how == 'garbage':
                tmp = path + '.tmp'
                with open(tmp, 'w') as f:
                    f.write('garbage\n')
                os.rename(tmp, path)
            elif how == 'directory':
                os.unlink(path)
                os.mkdir(path)
            elif how == 'missing':
                os.unlink(path)
            else:
                raise ValueError(how)

    def repair_zone(self, zone):
        with self._lock:
            how = self.broken.pop(zone)
            if how == 'directory':
                os.rmdir(self._path(zone))
            powercap.set_energy(self.root, zone, self.energy[zone])


# -- instances ---------------------------------------------------------------

class FakeProc:
    """A fixture /proc holding QEMU processes for ``[qemu] proc_path``.

    A process directory is built under a hidden name and renamed into
    place, and removed by renaming it away first: the agent never sees a
    half-written cmdline. Busy processes gain ``ticks_per_s`` of CPU time.
    """

    def __init__(self, root, ticks_per_s=50):
        self.root = str(root)
        self.ticks_per_s = ticks_per_s
        os.makedirs(self.root, exist_ok=True)
        self.cpu = {}
        self.busy = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _write_stat(self, pid):
        d = os.path.join(self.root, str(pid))
        tmp = os.path.join(d, '.stat.tmp')
        with open(tmp, 'w') as f:
            f.write(STAT % (pid, self.cpu[pid], 0))
        os.rename(tmp, os.path.join(d, 'stat'))

    def add(self, pid, name, uuid, busy=False):
        tmp = os.path.join(self.root, '.new-%d' % pid)
        os.makedirs(tmp)
        argv = [QEMU, '-name', 'guest=%s,debug-threads=on' % name,
                '-uuid', uuid, '-smp', '1,sockets=1']
        with open(os.path.join(tmp, 'cmdline'), 'wb') as f:
            f.write(b'\0'.join(a.encode() for a in argv) + b'\0')
        with open(os.path.join(tmp, 'stat'), 'w') as f:
            f.write(STAT % (pid, 0, 0))
        with open(os.path.join(tmp, 'status'), 'w') as f:
            f.write(STATUS)
        os.symlink(QEMU, os.path.join(tmp, 'exe'))
        with self._lock:
            self.cpu[pid] = 0
            os.rename(tmp, os.path.join(self.root, str(pid)))
            if busy:
                self.busy.add(pid)

    def remove(self, pid):
        gone = os.path.join(self.root, '.gone-%d' % pid)
        with self._lock:
            self.busy.discard(pid)
            self.cpu.pop(pid, None)
            os.rename(os.path.join(self.root, str(pid)), gone)
        shutil.rmtree(gone)

    def pids(self):
        return [int(p) for p in os.listdir(self.root) if p.isdigit()]

    def _run(self):
        last = time.monotonic()
        while not self._stop.wait(0.05):
            now = time.monotonic()
            ticks = int(self.ticks_per_s * (now - last))
            if not ticks:
                continue
            last = now
            with self._lock:
                for pid in self.busy:
                    self.cpu[pid] += ticks
                    self._write_stat(pid)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)

# -- an agent over fixture energy and a fixture /proc -----------------------

QEMU_RIG_WATTS = {'intel-rapl:0': 50.0, 'intel-rapl:0:0': 5.0}


class QemuRig:
    """The real agent (snapshot and share publishers, the share on a real
    tmpfs) over a SteadyRapl and a FakeProc holding one busy instance.
    Set ``rapl`` and ``proc`` before start()."""

    def __init__(self, tmp_path, interval, state_dir=None):
        self.tmp_path = tmp_path
        self.uuid = str(uuidlib.uuid4())
        self.work = str(tmp_path / 'work')
        self.export = str(tmp_path / 'export')
        self.state = state_dir or str(tmp_path / 'state')
        self.sections = {
            'agent': {'interval': interval, 'inventory': 'qemu',
                      'publishers': 'snapshot,share',
                      'state_dir': self.state},
            'qemu': {'proc_path': str(tmp_path / 'proc')},
            'energy': {'source': 'rapl', 'use_privsep': False,
                       'powercap_path': str(tmp_path / 'powercap')},
            'attribution': {'idle_power': 'package-0:10,dram-0:1'},
            'share': {'work_dir': self.work, 'export_dir': self.export,
                      'manage_mounts': True, 'tmpfs_size': '4m',
                      'min_interval': 0, 'resolution_uj': 1},
        }
        self.agent = self.rapl = self.proc = self.baseline = None

    @property
    def ledger_path(self):
        return os.path.join(self.state, 'ledger.json')

    def share_file(self, *parts):
        return os.path.join(self.export, self.uuid, *parts)

    def temporaries(self):
        """replace_at() temporaries in the state dir, next to the snapshot
        and anywhere in the share."""
        found = temporaries_in([self.state,
                                os.path.dirname(self.agent.snapshot_path)])
        found += [os.path.join(self.work, rel)
                  for rel in tree_state(self.work, content_of=())[1]]
        return sorted(found)

    def start(self):
        """Agent up on frozen counters, then the counters move and the
        instance has been attributed some energy."""
        if self.agent is None:
            self.agent = agent_helper.Agent(self.tmp_path, self.sections)
        started = time.time()
        self.agent.start()
        wait_snapshot(self.agent.snapshot_path, newer_than=started,
                      timeout=60, agent=self.agent)
        if self.baseline is None:
            self.baseline = self.rapl.totals()
        self.rapl.resume()
        wait_snapshot(
            self.agent.snapshot_path, agent=self.agent, timeout=30,
            newer_than=started,
            predicate=lambda d: (instance(d, self.uuid) or {}).get(
                'total_uj', 0) > 0)
        wait_until(lambda: os.path.exists(
            self.share_file('intel-rapl:0:0', 'energy_uj')), 10,
            what='the instance share')
        return self.agent

    def watcher(self):
        watcher = Watcher()
        watcher.snapshot(self.agent.snapshot_path)
        watcher.ledger(self.ledger_path)
        watcher.energy(self.share_file('intel-rapl:0', 'energy_uj'))
        watcher.energy(self.share_file('intel-rapl:0:0', 'energy_uj'))
        watcher.meta(self.share_file('scaph-openstack.json'))
        return watcher

    def exact(self):
        """(last snapshot, {zone: measured - true}) with frozen counters."""
        self.rapl.pause()
        doc = wait_ticks(self.agent.snapshot_path, 2, agent=self.agent)
        measured = zones(doc)
        return doc, {ZONE_NAMES[z]: measured[ZONE_NAMES[z]] -
                     (self.rapl.total(z) - self.baseline[z])
                     for z in self.rapl.watts}


@contextlib.contextmanager
def qemu_rigs(tmp_path, interval):
    """Yields build(state_dir=None) -> a QemuRig sharing one SteadyRapl
    and one FakeProc; ``build.mounts`` lists extra mount points to undo.
    Everything is killed and unmounted on the way out."""
    rigs, mounts = [], []
    try:
        with SteadyRapl(tmp_path / 'powercap', QEMU_RIG_WATTS) as energy, \
                FakeProc(tmp_path / 'proc') as proc:
            def build(state_dir=None):
                rig = QemuRig(tmp_path, interval, state_dir)
                rig.rapl, rig.proc = energy, proc
                proc.add(4343 + len(rigs), 'faulty-vm', rig.uuid, busy=True)
                rigs.append(rig)
                return rig
            build.mounts = mounts
            yield build
    finally:
        for rig in rigs:
            kill_quietly(rig.agent)
            umount(rig.export, rig.work)
        umount(*mounts)


def process_state(pid):
    """The state letter of /proc/PID/stat (R, S, T, Z...), or None."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().rsplit(')', 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def status_number(pid, field):
    """The number after ``field:`` in /proc/PID/status (Threads, VmRSS in
    KiB...), or 0 when the line is missing."""
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    return 0


def temporaries_in(directories):
    """replace_at() temporaries in these directories (relative names)."""
    found = []
    for directory in directories:
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            continue
        found.extend(os.path.join(directory, name) for name in names
                     if AGENT_TMP_RE.match(name))
    return sorted(found)


# -- watching ----------------------------------------------------------------

class Watcher:
    """Reader threads, each reading one file in a tight loop.

    Every read must parse (energy files: ``^\\d+\\n$``; JSON files: a
    JSON object of the expected format); a file that was seen once must
    not disappear. Every counter (per file, per instance and zone, per
    host zone) must never decrease. ``failures`` lists what went wrong.
    """

    def __init__(self, period=0.002):
        self.period = period
        self.failures = []
        self.reads = {}
        self.values = {}        # key -> set of values seen
        self._last = {}
        self._sources = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = []

    def energy(self, path):
        self._sources.append(('energy', path))

    def meta(self, path):
        self._sources.append(('meta', path))

    def snapshot(self, path):
        self._sources.append(('snapshot', path))

    def ledger(self, path):
        self._sources.append(('ledger', path))

    def _fail(self, message):
        with self._lock:
            if len(self.failures) < 200:
                self.failures.append(message)

    def _counter(self, key, value):
        last = self._last.get(key)
        if last is not None and value < last:
            self._fail('%s went down: %s -> %s' % (key, last, value))
        self._last[key] = value
        with self._lock:
            self.values.setdefault(key, set()).add(value)

    def _check(self, kind, path, data):
        if kind == 'energy':
            if not ENERGY_RE.match(data):
                self._fail('%s: torn or bad content %r' % (path, data[:40]))
                return
            self._counter(('energy', path), int(data))
            return
        try:
            doc = json.loads(data)
        except ValueError as exc:
            self._fail('%s: JSON does not parse (%s): %r'
                       % (path, exc, data[:60]))
            return
        expected = {'meta': 'scaph-openstack.share',
                    'snapshot': 'scaph-openstack.snapshot',
                    'ledger': 'scaph-openstack.ledger'}[kind]
        if not isinstance(doc, dict) or doc.get('format') != expected:
            self._fail('%s: not a %s document: %r' % (path, expected,
                                                      data[:60]))
            return
        if kind == 'meta':
            if doc['updated'] is not None:
                self._counter(('meta-updated', path), doc['updated'])
        elif kind == 'snapshot':
            self._counter(('snapshot-time', path), doc['time'])
            for zone in doc['zones']:
                for field in ('measured_uj', 'residual_uj',
                              'unallocated_idle_uj'):
                    self._counter(('zone', zone['name'], field),
                                  zone[field])
            for item in doc['instances']:
                for field in ('package_uj', 'dram_uj', 'total_uj'):
                    self._counter(('snapshot', item['uuid'], field),
                                  item[field])
                for zone, value in item['energy_uj'].items():
                    self._counter(('snapshot', item['uuid'], zone), value)
        else:
            for item in doc['instances']:
                uuid = item['identity']['uuid']
                for zone, value in item['energy_uj'].items():
                    self._counter(('ledger', uuid, zone), value)

    def _loop(self, kind, path):
        seen = False
        while not self._stop.is_set():
            try:
                data = read_once(path)
            except FileNotFoundError:
                if seen:
                    self._fail('%s: disappeared' % path)
                    seen = False
            except OSError as exc:
                self._fail('%s: %s' % (path, exc))
            else:
                seen = True
                with self._lock:
                    self.reads[kind] = self.reads.get(kind, 0) + 1
                self._check(kind, path, data)
            time.sleep(self.period)

    def start(self):
        for kind, path in self._sources:
            thread = threading.Thread(target=self._loop, args=(kind, path),
                                      daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self):
        self._stop.set()
        for thread in self._threads:
            thread.join(5)

    def distinct(self, key):
        with self._lock:
            return len(self.values.get(key, ()))

    def last(self, key):
        return self._last.get(key)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# -- host state ---------------------------------------------------------------

def tree_state(root, content_of=('name', 'max_energy_range_uj')):
    """{relative path: (kind, mode, uid, gid, sha256 or None)} under root,
    without following symlinks. Contents are hashed for the files named
    in ``content_of`` (the agent rewrites energy_uj and the meta file with
    new values), of every file when it is None. The agent's own
    temporary files are left out and returned apart:
    (state, temporaries)."""
    state, temporaries = {}, []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            if AGENT_TMP_RE.match(name):
                temporaries.append(rel)
                continue
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            digest = None
            if (content_of is None or name in content_of) and \
                    os.path.isfile(path) and \
                    not os.path.islink(path):
                with open(path, 'rb') as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            kind = ('link' if os.path.islink(path) else
                    'dir' if os.path.isdir(path) else
                    'file' if os.path.isfile(path) else 'other')
            state[rel] = (kind, oct(st.st_mode & 0o7777), st.st_uid,
                          st.st_gid, digest)
    return state, temporaries


def file_sha256(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def mounts_under(prefix):
    """[(mount point, fs type, mount options)] at or below ``prefix``."""
    prefix = os.path.realpath(prefix)
    found = []
    with open('/proc/self/mountinfo') as f:
        for line in f:
            left, _, right = line.partition(' - ')
            fields = left.split()
            point = fields[4].replace('\\040', ' ')
            if point == prefix or point.startswith(prefix + '/'):
                found.append((point, right.split()[0], fields[5]))
    return found


def umount(*paths):
    """Unmount every mount at each path (stacked ones too), lazily when
    busy. Never raises: this runs in clean-ups."""
    for path in paths:
        for _ in range(5):
            if not any(p == os.path.realpath(path)
                       for p, _t, _o in mounts_under(path)):
                break
            res = subprocess.run(['umount', path], capture_output=True)
            if res.returncode:
                subprocess.run(['umount', '-l', path], capture_output=True)


def kill_quietly(process):
    """SIGKILL a ManagedProcess group if it still runs (clean-ups)."""
    if process is not None and process.proc is not None:
        with contextlib.suppress(Exception):
            signal_group(process.proc, signal.SIGCONT)
            process.kill()
