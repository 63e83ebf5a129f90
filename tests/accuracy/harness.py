"""Run a scenario and compare what the agent attributes with the truth.

One scenario: the emulated two-socket tree (emulated_rapl), pinned host
noise (loads), real TCG guests carrying Nova metadata with a known load
(tools/guest/init ``scaph.load``), and the real agent with the default
attribution configuration (nothing under ``[attribution]``). While it
runs, the harness samples every guest's libvirt ``cpu.time`` every 0.5 s
and reads every snapshot the agent writes.

Truth: a guest's true dynamic energy is, per socket, the model's
dynamic watts per busy core (package + dram) x the CPU time it spent on
that socket's CPUs. A pinned guest's CPU time is all on its socket;
libvirt on a cgroup v2 host cannot say on which CPU an unpinned guest
ran, so scenarios with unpinned guests give both sockets the same slope
(their idle powers still differ), and the split does not matter.

Comparison: over every pair of consecutive snapshots of the same agent
process, the attributed dynamic delta against the true one (cpu.time
interpolated at the snapshots' times); summed over sliding windows of
``window_s`` starting ``warmup_s`` after the agent started. Every
snapshot is checked for conservation per zone.
"""

import bisect
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from tests.accuracy import emulated_rapl
from tests.accuracy import loads
from tests.functional.helpers import agent as agent_helper
from tests.functional.helpers import guest as guest_helper
from tests.functional.helpers import libvirtd

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__),
                                         '..', '..'))
TARGET = 0.10               # every VM within 10 % of truth in every window
PROJECT = 'f1b5c0de-0000-4000-8000-0000000ac001'
USER = 'accuracy-user-uuid'


# -- scenarios ----------------------------------------------------------------

@dataclasses.dataclass
class GuestSpec:
    label: str
    load: str               # scaph.load phases
    cpuset: str = None      # '0', '1' or None (unpinned)


@dataclasses.dataclass
class NoiseSpec:
    cpu: int
    duties: list
    hold_s: float = 15.0


@dataclasses.dataclass
class Scenario:
    key: str
    title: str
    model: emulated_rapl.PowerModel
    guests: list
    noise: list
    warmup_s: float
    window_s: float
    duration_s: float       # from the agent's start to the end
    restart_at_s: float = None  # kill -9 the agent then, start it again
    restart_pause_s: float = 6.0
    notes: str = ''

    def socket_slope(self, spec):
        """Dynamic W per busy core that applies to a guest."""
        m = self.model
        if spec.cpuset is not None:
            sockets = {m.socket_of_cpu()[int(c)]
                       for c in spec.cpuset.split(',')}
            if len(sockets) != 1:
                raise ValueError('%s is pinned across sockets' % spec.label)
            return m.w_per_core_of_socket(sockets.pop())
        slopes = {m.w_per_core_of_socket(s) for s in range(len(m.cpus))}
        if len(slopes) != 1:
            raise ValueError('unpinned guest %s needs equal slopes on '
                             'every socket' % spec.label)
        return slopes.pop()


DISTINCT = emulated_rapl.PowerModel()       # 17.3+23.1 / 11.7+31.4 ...
EQUAL_SLOPES = emulated_rapl.PowerModel(
    package_w_per_core=(27.6, 27.6), dram_w_per_core=(1.9, 1.9))


def scenarios(full=False):
    """The four scenarios of issue 9, at full or short (CI) length."""
    if full:
        warm, win, dur, step = 300.0, 300.0, 660.0, 110
    else:
        # 120 s: on a socket whose utilisation moves little (sd 0.08)
        # the agent's idle fit took 154 s to converge (doc/accuracy.md)
        warm, win, dur, step = 120.0, 60.0, 186.0, 35
    return [
        Scenario(
            'steady', 'a) steady load, unpinned guests, no idle period',
            EQUAL_SLOPES,
            [GuestSpec('steady-duty', 'duty:55'),
             GuestSpec('steady-bursty', 'bursty:4:3')],
            [NoiseSpec(1, loads.varying(0.05, 0.45, seed=11), 13.0),
             NoiseSpec(0, loads.varying(0.0, 0.25, seed=12), 17.0)],
            warm, win, dur,
            notes='both sockets 27.6 + 1.9 W per busy core (unpinned '
                  'guests), idle 17.3+2.6 W and 11.7+3.1 W'),
        Scenario(
            'steps', 'b) load steps in a pinned guest',
            DISTINCT,
            [GuestSpec('steps-0', 'duty:25@%d,duty:85@%d,bursty:3:2@%d'
                       % (step, step, step), '0'),
             GuestSpec('steps-1', 'duty:40', '1')],
            [NoiseSpec(1, loads.varying(0.05, 0.4, seed=21), 11.0)],
            warm, win, dur),
        Scenario(
            'cross', 'c) host load on the other socket, pinned guests',
            DISTINCT,
            [GuestSpec('cross-0', 'bursty:5:3', '0'),
             GuestSpec('cross-1', 'duty:30', '1')],
            [NoiseSpec(1, loads.varying(0.2, 0.6, seed=31), 9.0),
             NoiseSpec(0, loads.varying(0.0, 0.2, seed=32), 14.0)],
            warm, win, dur),
        Scenario(
            'restart', 'd) agent killed and restarted mid-run',
            DISTINCT,
            # Short: duty 45, not 60. With 60 plus the noise, socket 0 sat
            # near 100 % busy in a loaded CI run, its utilisation hardly
            # moved and the idle fit had not converged after 3 minutes
            # (doc/accuracy.md); the full version has the time.
            [GuestSpec('restart-0', 'duty:60' if full else 'duty:45', '0'),
             GuestSpec('restart-1', 'bursty:2:3', '1')],
            [NoiseSpec(1, loads.varying(0.05, 0.35, seed=41), 12.0),
             NoiseSpec(0, loads.varying(0.0, 0.3, seed=42), 10.0)],
            warm, win, dur, restart_at_s=warm + (dur - warm) / 3),
    ]


def scenario(key, full=False):
    for s in scenarios(full):
        if s.key == key:
            return s
    raise KeyError(key)


# -- the agent under test -----------------------------------------------------

def agent_executable(workdir, rev=None):
    """The agent to run: the working tree's (rev None), or the package as
    committed at ``rev``, exported so that edits in progress in the tree
    cannot change what is measured."""
    if rev is None:
        return agent_helper.venv_bin('scaph-openstack-agent'), None
    src = os.path.join(workdir, 'agent-src')
    os.makedirs(src, exist_ok=True)
    sha = subprocess.run(['git', 'rev-parse', rev], cwd=REPO_ROOT,
                         check=True, capture_output=True,
                         text=True).stdout.strip()
    archive = subprocess.run(['git', 'archive', sha, 'scaph_openstack'],
                             cwd=REPO_ROOT, check=True,
                             capture_output=True).stdout
    subprocess.run(['tar', '-x', '-C', src], input=archive, check=True)
    wrapper = os.path.join(src, 'scaph-openstack-agent')
    with open(wrapper, 'w') as f:
        f.write('#!%s\nimport sys\nsys.path.insert(0, %r)\n'
                'from scaph_openstack.agent.service import main\n'
                'sys.exit(main())\n' % (sys.executable, src))
    os.chmod(wrapper, 0o755)
    return wrapper, sha


def agent_sections(rapl, state_dir):
    """Only where things are: no [attribution] option at all."""
    return {
        'agent': {'publishers': 'snapshot', 'state_dir': state_dir,
                  'cpu_topology_path': rapl.topology_path},
        'energy': {'source': 'rapl', 'powercap_path': rapl.powercap_path,
                   'use_privsep': False},
        'libvirt': {'connection_uri': libvirtd.DEFAULT_URI},
    }


# -- sampling -----------------------------------------------------------------

class Recorder:
    """Samples guests' cpu.time and reads every snapshot, in a thread."""

    def __init__(self, snapshot_path, uuids, cpu_period=0.5,
                 snap_period=0.2):
        self.snapshot_path = snapshot_path
        self.uuids = list(uuids)
        self.cpu_period = cpu_period
        self.snap_period = snap_period
        self.cpu = {u: [] for u in self.uuids}     # [(t, ns)]
        self.snapshots = []                       # compact, see _compact
        self.run_index = 0                        # agent process number
        self.violations = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name='accuracy-recorder')
        self._last_time = None
        self._conn = self._doms = None
        self.reconnects = -1    # the first connection is not a reconnect
        self.error = None

    def _connect(self):
        """(connection, domains); libvirtd may be restarted under us (other
        tests on the same host do it): reconnect then."""
        import libvirt
        if self._conn is not None:
            try:
                self._conn.getLibVersion()
                return self._conn, self._doms
            except libvirt.libvirtError:
                try:
                    self._conn.close()
                except libvirt.libvirtError:
                    pass
                self._conn = None
        self._conn = libvirt.open(libvirtd.DEFAULT_URI)
        self._doms = [self._conn.lookupByUUIDString(u) for u in self.uuids]
        self.reconnects += 1
        return self._conn, self._doms

    def _sample_cpu(self):
        import libvirt
        try:
            conn, doms = self._connect()
            t0 = time.time()
            stats = conn.domainListGetStats(
                doms, libvirt.VIR_DOMAIN_STATS_CPU_TOTAL)
        except libvirt.libvirtError:
            return
        t = (t0 + time.time()) / 2
        for dom, rec in stats:
            if 'cpu.time' in rec:
                self.cpu[dom.UUIDString()].append((t, rec['cpu.time']))

    def _read_snapshot(self):
        try:
            with open(self.snapshot_path, 'rb') as f:
                doc = json.loads(f.read())
        except (OSError, ValueError):
            return
        if doc.get('time') == self._last_time:
            return
        self._last_time = doc.get('time')
        snap = compact(doc, self.run_index)
        self.violations += conservation_errors(snap)
        self.snapshots.append(snap)

    def _loop(self):
        try:
            next_cpu = time.monotonic()
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_cpu:
                    self._sample_cpu()
                    next_cpu += self.cpu_period
                self._read_snapshot()
                self._stop.wait(self.snap_period)
            self._sample_cpu()
            self._read_snapshot()
            if self._conn is not None:
                self._conn.close()
        except Exception as exc:  # noqa: BLE001 - re-raised by check()
            self.error = exc

    def check(self):
        if self.error is not None:
            raise RuntimeError('the recorder died: %r' % (self.error,))

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(10)
        self.check()

    def cpu_ns_at(self, uuid, t):
        """The guest's cpu.time interpolated at wall time ``t``."""
        samples = self.cpu[uuid]
        times = [s[0] for s in samples]
        i = bisect.bisect_left(times, t)
        if i <= 0 or i >= len(samples):
            raise ValueError('no cpu.time samples around %.2f for %s'
                             % (t, uuid))
        (t0, v0), (t1, v1) = samples[i - 1], samples[i]
        return v0 + (v1 - v0) * (t - t0) / (t1 - t0)


ZONE_UJ_FIELDS = ('measured_uj', 'residual_uj', 'unallocated_idle_uj')


def compact(doc, run_index):
    """What the comparison needs from one snapshot."""
    zones = {}
    for z in doc.get('zones', []):
        zones[z['name']] = {k: v for k, v in z.items()
                            if k.endswith('_uj') or k in (
                                'kind', 'socket', 'idle_estimate',
                                'power_w')}
    instances = {}
    for i in doc.get('instances', []):
        instances[i['uuid']] = {k: i.get(k) for k in (
            'energy_uj', 'dynamic_energy_uj', 'idle_energy_uj',
            'dynamic_uj', 'idle_uj', 'total_uj', 'placement', 'running',
            'display_name')}
    return {'time': doc['time'], 'run': run_index,
            'epoch': doc.get('epoch'), 'interval_s': doc.get('interval_s'),
            'model': doc.get('model'), 'idle_policy': doc.get('idle_policy'),
            'zones': zones, 'instances': instances}


def conservation_errors(snap):
    """Every zone: measured == instance shares + residual + unallocated
    idle, exactly, in integers; every instance: energy == dynamic + idle
    per zone when the snapshot splits them."""
    errors = []
    for name, z in snap['zones'].items():
        shares = sum(i['energy_uj'].get(name, 0)
                     for i in snap['instances'].values())
        kept = z.get('residual_uj', 0) + z.get('unallocated_idle_uj', 0)
        if z['measured_uj'] != shares + kept:
            errors.append('t=%.2f zone %s: measured %d != shares %d + '
                          'unattributed %d (%s)' % (
                              snap['time'], name, z['measured_uj'], shares,
                              kept, {k: v for k, v in z.items()
                                     if k.endswith('_uj')}))
    for uuid, i in snap['instances'].items():
        dyn, idle = i.get('dynamic_energy_uj'), i.get('idle_energy_uj')
        if dyn is None or idle is None:
            continue
        for zone, e in i['energy_uj'].items():
            if e != dyn.get(zone, 0) + idle.get(zone, 0):
                errors.append('t=%.2f instance %s zone %s: energy %d != '
                              'dynamic %d + idle %d' % (
                                  snap['time'], uuid, zone, e,
                                  dyn.get(zone, 0), idle.get(zone, 0)))
    return errors


# -- running ------------------------------------------------------------------

class ScenarioError(RuntimeError):
    pass


def _log(msg):
    print('[accuracy %s] %s' % (time.strftime('%H:%M:%S'), msg),
          file=sys.stderr, flush=True)


def run(scn, outdir=None, agent_rev='HEAD', keep=False):
    """Run ``scn``; returns the result dict (see analyse())."""
    libvirtd.ensure_libvirtd()
    guest_helper.build_image()
    workdir = tempfile.mkdtemp(prefix='scaph-accuracy-%s-' % scn.key)
    state_dir = os.path.join(workdir, 'state')
    executable, sha = agent_executable(workdir, agent_rev)
    rapl = emulated_rapl.EmulatedRapl(os.path.join(workdir, 'rapl'),
                                      scn.model)
    guests, noises, agent, recorder = [], [], None, None
    timeline = {}
    try:
        rapl.start()
        noises = [loads.HostNoise(n.cpu, n.duties, n.hold_s).start()
                  for n in scn.noise]
        for spec in scn.guests:
            g = guest_helper.Guest(label='acc-' + spec.label,
                                   cmdline_params={'load': spec.load},
                                   cpuset=spec.cpuset)
            g.xml_kwargs['nova_metadata'] = guest_helper.nova_metadata_xml(
                g.uuid, spec.label, PROJECT, 'accuracy', USER, 'tester',
                flavor='m1.tiny', vcpus=1, memory_mb=128)
            g.spec = spec
            guests.append(g.start())
        for g in guests:
            g.wait_for(r'SCAPH-LOAD', timeout=120)
        _log('%s: %d guests loaded, starting the agent (%s)'
             % (scn.key, len(guests), sha or 'working tree'))
        agent = agent_helper.Agent(workdir, agent_sections(rapl, state_dir),
                                   executable=executable)
        recorder = Recorder(agent.snapshot_path,
                            [g.uuid for g in guests]).start()
        timeline['agent_start'] = time.time()
        agent.start()
        t_end = timeline['agent_start'] + scn.duration_s
        restarted = scn.restart_at_s is None
        next_log = time.time() + 60
        while time.time() < t_end:
            time.sleep(0.5)
            rapl.check()
            recorder.check()
            agent.check_alive()
            for g in guests:
                if g.is_active() is False:
                    raise ScenarioError('guest %s stopped:\n%s'
                                        % (g.name, g.tail()))
            now = time.time()
            if not restarted and \
                    now >= timeline['agent_start'] + scn.restart_at_s:
                restarted = True
                timeline['kill'] = now
                before = recorder.snapshots[-1] if recorder.snapshots \
                    else None
                agent.kill()
                time.sleep(scn.restart_pause_s)
                recorder.run_index += 1
                timeline['restart'] = time.time()
                agent.start()
                timeline['before_restart'] = before
                _log('%s: agent killed (-9) and started again' % scn.key)
            if now >= next_log:
                next_log += 60
                _log('%s: %.0f/%.0f s, %d snapshots' % (
                    scn.key, now - timeline['agent_start'], scn.duration_s,
                    len(recorder.snapshots)))
        agent.stop()
        recorder.stop()
        timeline['end'] = time.time()
        agent_log = agent.log_text()
    finally:
        if agent is not None and agent.running:
            agent.kill()
        if recorder is not None:
            recorder._stop.set()
        for g in guests:
            g.cleanup()
        for n in noises:
            n.stop()
        rapl.stop()
    result = analyse(scn, rapl, recorder, guests, timeline)
    result['timeline'] = {k: v for k, v in timeline.items()
                          if isinstance(v, float)}
    result['agent'] = {'rev': sha or 'working tree',
                       'errors_in_log': [line for line in
                                         agent_log.splitlines()
                                         if ' ERROR ' in line][:20]}
    if outdir:
        os.makedirs(outdir, exist_ok=True)
        rapl.write_summary(os.path.join(outdir, '%s.truth.json' % scn.key))
        shutil.copy(rapl.truth_path,
                    os.path.join(outdir, '%s.truth.jsonl' % scn.key))
        with open(os.path.join(outdir, '%s.snapshots.json' % scn.key),
                  'w') as f:
            json.dump({'snapshots': recorder.snapshots,
                       'cpu': recorder.cpu}, f)
        with open(os.path.join(outdir, '%s.result.json' % scn.key),
                  'w') as f:
            json.dump(result, f, indent=1)
        with open(os.path.join(outdir, '%s.agent.log' % scn.key), 'w') as f:
            f.write(agent_log)
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


# -- analysis -----------------------------------------------------------------

def attributed_dynamic(inst):
    """µJ of dynamic energy attributed to an instance, package + dram.

    With the split fields, ``dynamic_uj``; without (the model before
    issue 9), ``total_uj``: with idle_policy none (the default) nothing of
    the idle part is handed to instances, so all of it is "dynamic"."""
    if inst.get('dynamic_uj') is not None:
        return inst['dynamic_uj']
    return inst['total_uj']


def analyse(scn, rapl, rec, guests, timeline):
    t_start = timeline['agent_start']
    eval_from = t_start + scn.warmup_s
    snaps = rec.snapshots
    pairs = [(a, b) for a, b in zip(snaps, snaps[1:], strict=False)
             if a['run'] == b['run'] and a['epoch'] == b['epoch']]
    vms = []
    for g in guests:
        slope = scn.socket_slope(g.spec)
        ivals = []
        for a, b in pairs:
            ia, ib = a['instances'].get(g.uuid), b['instances'].get(g.uuid)
            if ia is None or ib is None or a['time'] < eval_from:
                continue
            try:
                cpu = rec.cpu_ns_at(g.uuid, b['time']) - \
                    rec.cpu_ns_at(g.uuid, a['time'])
            except ValueError:
                continue
            ivals.append((a['time'], b['time'], cpu / 1e9 * slope * 1e6,
                          attributed_dynamic(ib) - attributed_dynamic(ia),
                          cpu / 1e9))
        truth = sum(i[2] for i in ivals)
        attr = sum(i[3] for i in ivals)
        windows = []
        for k, first in enumerate(ivals):
            w_end = first[0] + scn.window_s
            sel = [i for i in ivals[k:] if i[1] <= w_end + 1e-6]
            if not sel or ivals[-1][1] < w_end - 1.0:
                break
            wt, wa = sum(i[2] for i in sel), sum(i[3] for i in sel)
            windows.append({'from': first[0] - t_start,
                            'to': sel[-1][1] - t_start,
                            'truth_j': wt / 1e6, 'attributed_j': wa / 1e6,
                            'error': (wa - wt) / wt if wt else None})
        errs = [w['error'] for w in windows if w['error'] is not None]
        worst = max(errs, key=abs) if errs else None
        placements = {b['instances'][g.uuid].get('placement')
                      for _a, b in pairs if g.uuid in b['instances']}
        vms.append({
            'label': g.spec.label, 'uuid': g.uuid, 'load': g.spec.load,
            'cpuset': g.spec.cpuset, 'slope_w': slope,
            'placement': sorted(str(p) for p in placements),
            'cpu_s': sum(i[4] for i in ivals),
            'truth_j': truth / 1e6, 'attributed_j': attr / 1e6,
            'error': (attr - truth) / truth if truth else None,
            'windows': len(windows), 'worst_window_error': worst,
            'pass': bool(errs) and all(abs(e) <= TARGET for e in errs)})
    # idle estimates over the evaluated period, against the true idle
    zones = []
    evaluated = [s for s in snaps if s['time'] >= eval_from]
    for z in rapl.zones:
        states, watts = set(), []
        for s in evaluated:
            est = (s['zones'].get(z.agent_name) or {}).get('idle_estimate')
            if est:
                states.add(est.get('state'))
                if est.get('watts') is not None:
                    watts.append(est['watts'])
        last = watts[-1] if watts else None
        worst = max(watts, key=lambda w: abs(w - z.idle_w)) \
            if watts else None
        zones.append({
            'zone': z.agent_name, 'true_idle_w': z.idle_w,
            'states': sorted(str(x) for x in states),
            'estimate_w': last, 'worst_estimate_w': worst,
            'error': (last - z.idle_w) / z.idle_w if last is not None
            else None,
            'worst_error': (worst - z.idle_w) / z.idle_w
            if worst is not None else None})
    # the host's own share: residual against what no guest caused
    host = None
    if evaluated:
        a, b = evaluated[0], evaluated[-1]
        ta, tb = rapl.truth_at(a['time']), rapl.truth_at(b['time'])
        true_dyn = sum(tb['dynamic_uj'][n] - ta['dynamic_uj'][n]
                       for n in tb['dynamic_uj'])
        residual = sum(b['zones'][n].get('residual_uj', 0) -
                       a['zones'].get(n, {}).get('residual_uj', 0)
                       for n in b['zones'])
        host = {'true_dynamic_j': true_dyn / 1e6,
                'vm_truth_j': sum(v['truth_j'] for v in vms),
                'residual_j': residual / 1e6}
    restart = None
    if 'restart' in timeline:
        before = timeline.get('before_restart')
        after = [s for s in snaps if s['run'] > 0][:3]
        restart = {
            'killed_at_s': timeline['kill'] - t_start,
            'restarted_at_s': timeline['restart'] - t_start,
            'before': {n: z.get('idle_estimate')
                       for n, z in (before or {}).get('zones', {}).items()},
            'after': [{n: z.get('idle_estimate')
                       for n, z in s['zones'].items()} for s in after]}
        restart['idle_survived'] = _idle_survived(restart)
    gaps = [b['time'] - a['time'] for a, b in pairs]
    return {
        'scenario': scn.key, 'title': scn.title, 'notes': scn.notes,
        'warmup_s': scn.warmup_s, 'window_s': scn.window_s,
        'duration_s': scn.duration_s, 'target': TARGET,
        'model': snaps[-1].get('model') if snaps else None,
        'power_model': scn.model.as_dict(),
        'snapshots': len(snaps),
        'libvirt_reconnects': max(rec.reconnects, 0),
        'max_gap_s': max(gaps) if gaps else None,
        'conservation_violations': rec.violations[:20],
        'conservation_checked': len(snaps),
        'conservation_ok': not rec.violations and bool(snaps),
        'vms': vms, 'zones': zones, 'host': host, 'restart': restart,
        'pass': all(v['pass'] for v in vms) and not rec.violations
        and bool(snaps) and (restart is None or restart['idle_survived']),
    }


def _idle_survived(restart):
    """Right after the restart every zone's estimate is what it was
    before the kill: the same state (or learned by now) and within 10 %
    (+0.05 W) of the same watts, not a fresh calibration from 0 W."""
    before = restart['before']
    if not restart['after'] or not before:
        return False
    if any(v is None for v in before.values()):
        return False        # the agent reports no estimate at all
    first = restart['after'][0]
    for name, est in before.items():
        now = first.get(name)
        if not now:
            return False
        if now.get('state') != est.get('state') and \
                now.get('state') != 'learned':
            return False
        if abs(now['watts'] - est['watts']) > 0.1 * est['watts'] + 0.05:
            return False
    return True


# -- report -------------------------------------------------------------------

def _pct(x):
    return '—' if x is None else '%+.1f %%' % (100 * x)


def table(result):
    """Markdown: one row per VM, one per zone's idle estimate."""
    r = result
    lines = ['### %s' % r['title'], '',
             'model `%s`, %d snapshots (longest gap %.1f s), warm-up %d s, '
             '%d s windows, %d s in all; conservation %s in %d snapshots'
             % (r['model'], r['snapshots'], r['max_gap_s'] or 0,
                r['warmup_s'], r['window_s'], r['duration_s'],
                'exact' if r['conservation_ok'] else 'BROKEN',
                r['conservation_checked']), '',
             '| VM | load | pinned | placement | truth J | attributed J '
             '| error | worst %d s window | windows | result |'
             % r['window_s'],
             '|---|---|---|---|---:|---:|---:|---:|---:|---|']
    for v in r['vms']:
        lines.append('| %s | `%s` | %s | %s | %.1f | %.1f | %s | %s | %d '
                     '| %s |' % (
                         v['label'], v['load'], v['cpuset'] or 'no',
                         ','.join(v['placement']), v['truth_j'],
                         v['attributed_j'], _pct(v['error']),
                         _pct(v['worst_window_error']), v['windows'],
                         'PASS' if v['pass'] else 'MISS'))
    lines += ['', '| zone | true idle W | estimate W (last) | error '
              '| worst in period | state |', '|---|---:|---:|---:|---:|---|']
    for z in r['zones']:
        lines.append('| %s | %.2f | %s | %s | %s | %s |' % (
            z['zone'], z['true_idle_w'],
            '—' if z['estimate_w'] is None else '%.2f' % z['estimate_w'],
            _pct(z['error']), _pct(z['worst_error']),
            ','.join(z['states']) or 'not reported'))
    if r['host']:
        h = r['host']
        lines += ['', 'Host: true dynamic %.1f J over the evaluated '
                  'period, of which guests %.1f J; host residual reported '
                  '%.1f J.' % (h['true_dynamic_j'], h['vm_truth_j'],
                               h['residual_j'])]
    if r['restart']:
        x = r['restart']
        lines += ['', 'Restart: killed at %.0f s, started at %.0f s; idle '
                  'estimate survived: %s (before %s, first after %s).' % (
                      x['killed_at_s'], x['restarted_at_s'],
                      'yes' if x['idle_survived'] else 'NO',
                      json.dumps(x['before']),
                      json.dumps(x['after'][0] if x['after'] else None))]
    if r['conservation_violations']:
        lines += ['', 'Conservation violations (first):', '']
        lines += ['    ' + v for v in r['conservation_violations'][:5]]
    if r['agent']['errors_in_log']:
        lines += ['', 'Agent log errors (first):', '']
        lines += ['    ' + e for e in r['agent']['errors_in_log'][:5]]
    lines += ['', '**%s**' % ('PASS' if r['pass'] else 'MISS'), '']
    return '\n'.join(lines)
