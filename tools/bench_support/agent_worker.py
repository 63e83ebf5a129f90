"""One scale of the agent benchmark, run in a fresh process.

``python -m tools.bench_support.agent_worker PARAMS.json RESULT.json``

The agent is built the way scaph-openstack-agent builds it
(``service.build_ticker`` from configuration, through stevedore), then:

* the libvirt inventory gets the stand-in connection (``_conn``), unless
  ``mode`` is ``real`` (qemu:///system and real guests);
* the tick's clock and the share publisher's clock are a fake clock moved
  by the configured interval between ticks, so the publishers'
  ``min_interval`` (which ticks persist the ledger and publish), power and
  orphan scans behave as on a live host while ticks run back to back;
* each stage's method is wrapped to add its CPU time
  (``time.process_time_ns``) to the tick's record. ``Ticker.tick()``
  itself is the agent's, unchanged; "other" is what it spends outside the
  wrapped stages (deltas, baselines, presence, which publishers are due).
  Each record also says what the tick wrote: ledger saves, snapshots,
  share trees and files, so the floor can price that very tick.

Then the floor loop runs in the same process, and the peak RSS is read.
"""

import collections
import gc
import math
import os
import statistics
import sys
import time

from tools.bench_support import fixtures
from tools.bench_support import standin as standin_mod

STAGES = ('energy', 'procstat', 'inventory', 'attribution', 'ledger',
          'save', 'report', 'snapshot', 'share')
# Publishers whose [group] min_interval the bench sets (all of them: the
# ticker publishes when any is due, and persists the ledger first).
PUBLISHER_GROUPS = ('snapshot', 'share', 'prometheus')


def vm_status(field):
    """A /proc/self/status field (VmRSS, VmHWM) in MiB."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) / 1024.0
    return None


class FakeClock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


class StageClock:
    """Adds the CPU time of wrapped methods to ``acc[stage]``."""

    def __init__(self):
        self.acc = dict.fromkeys(STAGES, 0)

    def reset(self):
        for key in self.acc:
            self.acc[key] = 0

    def wrap(self, obj, attr, stage):
        original = getattr(obj, attr)
        acc = self.acc
        clock = time.process_time_ns

        def timed(*args, **kwargs):
            start = clock()
            try:
                return original(*args, **kwargs)
            finally:
                acc[stage] += clock() - start

        setattr(obj, attr, timed)


def configure(params):
    """The agent's configuration, through its own entry point
    (``service.prepare``) and a config file, as scaph-openstack-agent
    reads it."""
    from scaph_openstack.agent import service
    path = os.path.join(params['state_dir'], 'scaph-openstack.conf')
    with open(path, 'w') as f:
        f.write('\n'.join((
            '[agent]', 'interval = %r' % params['interval'],
            'state_dir = %s' % params['state_dir'],
            '[energy]', 'source = rapl',
            'powercap_path = %s' % params['powercap'],
            'use_privsep = false',
            '[snapshot]', 'path = %s' % params['snapshot'],
            'min_interval = %r' % params['min_interval'],
            '[share]', 'work_dir = %s' % params['shares'],
            'manage_mounts = false',
            'min_interval = %r' % params['min_interval'],
            '[prometheus]', 'min_interval = %r' % params['min_interval'],
            '')))
    return service.prepare(['--config-file', path])


def instrument(ticker, stages):
    from scaph_openstack.inventory import hoststat
    stages.wrap(ticker.energy, 'read', 'energy')
    stages.wrap(hoststat, 'read_host_cpu', 'procstat')
    stages.wrap(ticker.inventory, 'list_instances', 'inventory')
    stages.wrap(ticker.attribution, 'split', 'attribution')
    for method in ('add_tick', 'expire'):
        stages.wrap(ticker.ledger, method, 'ledger')
    stages.wrap(ticker.ledger, 'save', 'save')
    stages.wrap(ticker._builder, 'build', 'report')
    for publisher in ticker.publishers:
        stages.wrap(publisher, 'publish', publisher.name)


class CallCounter:
    """Counts calls of some objects' methods (one Python call each)."""

    def __init__(self):
        self.counts = {}

    def wrap(self, obj, attr, key):
        original = getattr(obj, attr)
        counts = self.counts
        counts[key] = 0

        def counting(*args, **kwargs):
            counts[key] += 1
            return original(*args, **kwargs)

        setattr(obj, attr, counting)

    def snapshot(self):
        return dict(self.counts)


class GcClock:
    """CPU time spent in the cyclic garbage collector (gc.callbacks), and
    collections per generation: the collector runs inside whichever stage
    allocates when a threshold is crossed, so its cost is spread over the
    stages; this says how much of the tick it is."""

    def __init__(self):
        self.ns = 0
        self.collections = [0, 0, 0]
        self._start = None
        gc.callbacks.append(self._callback)

    def _callback(self, phase, info):
        if phase == 'start':
            self._start = time.process_time_ns()
        elif self._start is not None:
            self.ns += time.process_time_ns() - self._start
            self.collections[info['generation']] += 1
            self._start = None

    def snapshot(self):
        return self.ns, list(self.collections)


class FileCounter:
    """Counts fileutil.replace_at calls (share files, snapshot, ledger).

    One extra Python call per file written, ~0.1 µs next to the ~20 µs a
    replaced file costs on tmpfs here: left on for every tick."""

    def __init__(self):
        from scaph_openstack import fileutil
        self.count = 0
        original = fileutil.replace_at

        def counting(*args, **kwargs):
            self.count += 1
            return original(*args, **kwargs)

        fileutil.replace_at = counting


def ticker_share(ticker):
    for publisher in ticker.publishers:
        if publisher.name == 'share':
            return publisher
    raise RuntimeError('no share publisher')


# -- the floor ------------------------------------------------------------

class Floor:
    """The system calls a tick cannot avoid, in a tight Python loop.

    Inputs: read each zone's energy_uj and /proc/stat once, one bulk
    getAllDomainStats on the same connection the agent used. Outputs, per
    instance: open its directory (O_NOFOLLOW) and replace files by
    open(O_EXCL)/write/close/rename, measured twice: the meta file alone
    (its timestamp changes at every write), and the meta file plus both
    energy_uj files (every counter changed). The snapshot is replaced with
    a buffer of the agent's snapshot size, and a buffer of the ledger's
    size saved with write/fsync/rename/fsync(dir), as the agent must. No
    formatting, no JSON: the bytes are prepared before.

    ``AgentRow`` (report.py) prices each measured agent tick with these,
    at the agent's own publication frequency: the inputs every tick; the
    ledger save and the snapshot as many times as that tick did them (on
    publishing ticks: publishing a value the disk does not hold is not
    allowed, so a publication cannot skip the save); the instances whose
    tree it wrote times the meta-only cost, plus each counter whose
    guest-visible value changed times the cost of one energy_uj file.
    """

    FILE_FLAGS = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                  | os.O_CLOEXEC)
    DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

    def __init__(self, root, energy_paths, conn, uuids, meta_size,
                 snapshot_size, ledger_dir, ledger_size, stats, flags):
        from scaph_openstack.share import layout
        self.root = root
        self.energy_paths = energy_paths
        self.conn = conn
        self.uuids = list(uuids)
        self.ledger_dir = ledger_dir
        self.stats, self.flags = stats, flags
        counter = b'123456789012\n'
        self.meta = [('', layout.META_FILE, b'x' * meta_size)]
        self.full = [(layout.PACKAGE_DIR + '/', 'energy_uj', counter),
                     (layout.DRAM_DIR + '/', 'energy_uj', counter)] + \
            self.meta
        self.snapshot = b'x' * snapshot_size
        self.ledger = b'x' * ledger_size
        os.makedirs(root, exist_ok=True)
        for uuid in self.uuids:
            for sub in (layout.PACKAGE_DIR, layout.DRAM_DIR):
                os.makedirs(os.path.join(root, uuid, sub), exist_ok=True)

    def _replace(self, dir_fd, sub, name, data, sync=False):
        tmp = sub + '.' + name + '.tmp'
        fd = os.open(tmp, self.FILE_FLAGS, 0o444, dir_fd=dir_fd)
        os.write(fd, data)
        if sync:
            os.fsync(fd)
        os.close(fd)
        os.rename(tmp, sub + name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)

    def _shares(self, root_fd, files):
        flags, replace = self.DIR_FLAGS, self._replace
        for uuid in self.uuids:
            fd = os.open(uuid, flags, dir_fd=root_fd)
            for sub, name, data in files:
                replace(fd, sub, name, data)
            os.close(fd)

    def once(self):
        clock = time.process_time_ns
        t0 = clock()
        for path in self.energy_paths:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            os.read(fd, 64)
            os.close(fd)
        fd = os.open('/proc/stat', os.O_RDONLY | os.O_CLOEXEC)
        os.read(fd, 65536)
        os.close(fd)
        t1 = clock()
        self.conn.getAllDomainStats(self.stats, self.flags)
        t2 = clock()
        root_fd = os.open(self.root, self.DIR_FLAGS)
        self._shares(root_fd, self.meta)
        t3 = clock()
        self._shares(root_fd, self.full)
        t4 = clock()
        self._replace(root_fd, '', 'snapshot.json', self.snapshot)
        t5 = clock()
        os.close(root_fd)
        ledger_fd = os.open(self.ledger_dir, self.DIR_FLAGS)
        self._replace(ledger_fd, '', 'floor-ledger.json', self.ledger,
                      sync=True)
        os.fsync(ledger_fd)
        os.close(ledger_fd)
        t6 = clock()
        return {'inputs': t1 - t0, 'stats_call': t2 - t1,
                'share_meta': t3 - t2, 'share_full': t4 - t3,
                'snapshot': t5 - t4, 'ledger': t6 - t5,
                'instances': len(self.uuids)}


def changed_counters(before, after):
    """Guest-visible counters (package, DRAM) the share publisher's last
    tick changed, from its ``_last_values`` before and after."""
    changed = 0
    for uuid, (package, dram) in after.items():
        old = before.get(uuid)
        if old == (package, dram):
            continue
        old_package, old_dram = old if old is not None else (None, None)
        changed += (package != old_package) + (
            dram is not None and dram != old_dram)
    return changed


# -- the run --------------------------------------------------------------

def failing(ticker):
    """What the ticker and its inventory say is failing now."""
    out = dict(ticker.states._active)
    for owner, obj, attr in [('inventory', ticker.inventory, '_states')] + [
            (p.name, p, 'states') for p in ticker.publishers]:
        log = getattr(obj, attr, None)
        if log is not None:
            out.update(('%s:%s' % (owner, k), v)
                       for k, v in log._active.items())
    return out


def run(params):
    rss = {'start': vm_status('VmRSS')}
    import libvirt  # noqa: F401  (the agent imports it too)

    from scaph_openstack.agent import service
    from scaph_openstack.inventory import libvirt as inventory_libvirt
    rss['after_imports'] = vm_status('VmRSS')

    fixture = fixtures.PowercapFixture(params['powercap'])
    conf = configure(params)
    ticker = service.build_ticker(conf)
    stand_in = None
    if params['mode'] == 'standin':
        recording = standin_mod.load(params['recording'])
        before = vm_status('VmRSS')
        stand_in = standin_mod.StandInConnection(recording, params['n'])
        rss['standin_mb'] = vm_status('VmRSS') - before
        ticker.inventory._conn = stand_in
    clock = FakeClock()
    ticker.clock = clock
    share = ticker_share(ticker)
    share.clock = clock
    stages = StageClock()
    instrument(ticker, stages)
    files = FileCounter()
    calls = CallCounter()
    calls.wrap(share.tree, 'write_instance', 'share_instances')
    calls.wrap(ticker.ledger, 'save', 'saves')
    for publisher in ticker.publishers:
        calls.wrap(publisher, 'publish', 'publish:' + publisher.name)
    libvirtd = fixtures.libvirtd_pids() if params['mode'] == 'real' else []
    collector = GcClock()

    def advance():
        clock.advance(params['interval'])
        fixture.advance(params['interval'])
        if stand_in is not None:
            stand_in.advance(params['interval'])

    # A publication is due at least every ceil(min_interval / interval)
    # ticks: a longer run of ticks without one means a failure.
    period = max(1, math.ceil(params['min_interval'] / params['interval']
                              - 1e-9))
    records, since_report = [], 0
    for _ in range(params['warmup'] + params['ticks']):
        stages.reset()
        gc0, collections0 = collector.snapshot()
        daemon0 = fixtures.cpu_ns_of(libvirtd) if libvirtd else 0
        files0, calls0 = files.count, calls.snapshot()
        values0 = dict(share._last_values)
        wall0 = time.perf_counter_ns()
        cpu0 = time.process_time_ns()
        report = ticker.tick()
        cpu = time.process_time_ns() - cpu0
        wall = time.perf_counter_ns() - wall0
        daemon = fixtures.cpu_ns_of(libvirtd) - daemon0 if libvirtd else 0
        problems = failing(ticker)
        since_report = 0 if report is not None else since_report + 1
        if problems or since_report >= period:
            raise RuntimeError('tick %d published nothing for %d ticks; '
                               'failing: %s (see stderr)' % (
                                   len(records), since_report, problems))
        gc1, collections1 = collector.snapshot()
        count = {k: v - calls0[k] for k, v in calls.snapshot().items()}
        record = dict(stages.acc)
        record['other'] = cpu - sum(stages.acc.values())
        record['total'] = cpu
        record['wall'] = wall
        record['libvirtd'] = daemon
        record['gc'] = gc1 - gc0
        record['gc_collections'] = [b - a for a, b in zip(
            collections0, collections1, strict=True)]
        record['hwm_mb'] = vm_status('VmHWM')
        record['published'] = int(report is not None)
        record['saves'] = count['saves']
        record['snapshot_writes'] = count.get('publish:snapshot', 0)
        record['share_runs'] = count['publish:share']
        record['share_files'] = (files.count - files0 - count['saves']
                                 - record['snapshot_writes'])
        record['share_instances'] = count['share_instances']
        record['changed_counters'] = changed_counters(values0,
                                                      share._last_values)
        records.append(record)
        advance()
    rss['hwm_after_ticks'] = vm_status('VmHWM')
    rss['rss_after_ticks'] = vm_status('VmRSS')

    instances = len(ticker.ledger.instances)
    if stand_in is not None and instances != params['n']:
        raise RuntimeError('the ledger holds %d instances, not %d'
                           % (instances, params['n']))
    share_dirs = [e for e in os.listdir(share.work_dir)
                  if not e.startswith('.')]
    snapshot_size = os.path.getsize(params['snapshot'])
    ledger_path = service.ledger_path(conf)
    ledger_size = os.path.getsize(ledger_path)
    from scaph_openstack.share import layout
    meta_size = len(layout.meta_file(layout.meta_document(
        share_dirs[0] if share_dirs else 'x', time.time(), 10.0, 'rapl',
        'cputime', 1000000)))

    floor = Floor(os.path.join(params['floor_dir']), fixture.energy_paths(),
                  ticker.inventory._conn,
                  [r for r in ticker.ledger.instances], meta_size,
                  snapshot_size, os.path.dirname(ledger_path), ledger_size,
                  inventory_libvirt.STATS, inventory_libvirt.FLAGS)
    floors = [floor.once() for _ in range(params['warmup']
                                          + params['floor_ticks'])]
    # VmHWM, not ru_maxrss: Linux carries the parent's RSS at fork over
    # into the child's ru_maxrss, VmHWM is this process's own mm. The
    # agent's peak is the one reached by the ticks, before the floor.
    rss.update(peak_mb=rss['hwm_after_ticks'], hwm_end_mb=vm_status('VmHWM'))
    if stand_in is None:
        ticker.inventory.close()
    return {
        'n': instances,
        'mode': params['mode'],
        'min_interval': params['min_interval'],
        'interval': params['interval'],
        'warmup': params['warmup'],
        'records': records,
        'floor': floors[params['warmup']:],
        'rss': rss,
        'snapshot_bytes': snapshot_size,
        'ledger_bytes': ledger_size,
        'share_dirs': len(share_dirs),
        'states': dict(collections.Counter(
            r.state for r in ticker.ledger.instances.values())),
        'gc_tracked': len(gc.get_objects()),
        'gc_frozen': gc.get_freeze_count(),
        'standin_calls': stand_in.calls if stand_in is not None else None,
        'median_total_us': statistics.median(
            r['total'] for r in records[params['warmup']:]) / 1000,
    }


if __name__ == '__main__':
    sys.exit(fixtures.worker_main(run))
