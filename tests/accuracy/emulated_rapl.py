"""An emulated two-socket powercap tree whose power follows real load.

This machine has two CPUs and no RAPL. The emulation makes each CPU a
"socket": socket 0 is CPU 0, socket 1 is CPU 1 (a fake topology directory
that the agent reads through ``[agent] cpu_topology_path``). Every ~50 ms
a thread reads the per-CPU lines of the real /proc/stat and advances each
zone's ``energy_uj`` by

    E += idle_w x dt + watts_per_busy_core x d(busy seconds of its CPUs)

i.e. P = idle_w + watts_per_busy_core x busy_cores, with busy = user +
nice + system + irq + softirq + steal (iowait and idle are idle; guest
time is already inside user). Counters wrap at ``max_energy_range_uj``,
which is small enough that they wrap during a run.

The model is linear in the busy time of the socket's CPUs, so the energy
a guest truly causes on a socket is exactly ``watts_per_busy_core`` x the
CPU time it spent on that socket's CPUs; its idle part is ``idle_w`` x
elapsed, independent of any guest. Both are recorded (the truth) with
timestamps, in memory and as JSON lines, so the comparison never needs to
trust the agent's own view of anything.
"""

import dataclasses
import json
import os
import threading
import time

from tests.unit import powercap

USER_HZ = os.sysconf('SC_CLK_TCK')
NS_PER_JIFFY = 1_000_000_000 // USER_HZ
# busy = user nice system irq softirq steal (fields 1,2,3,6,7,8 of cpuN);
# iowait (5) and idle (4) are idle; guest (9) and guest_nice (10) are
# already counted in user and nice.
BUSY_FIELDS = (0, 1, 2, 5, 6, 7)


@dataclasses.dataclass(frozen=True)
class ZoneModel:
    """One emulated zone: P = idle_w + w_per_core x busy cores."""
    dirname: str            # intel-rapl:0, intel-rapl:0:0
    name: str               # what the 'name' file holds: package-0, dram
    agent_name: str         # how the agent names it: package-0, dram-0
    socket: int
    idle_w: float
    w_per_core: float
    max_range_uj: int


@dataclasses.dataclass(frozen=True)
class PowerModel:
    """Per socket: CPUs, package idle/slope, optional dram idle/slope."""
    cpus: tuple = ((0,), (1,))
    package_idle_w: tuple = (17.3, 11.7)
    package_w_per_core: tuple = (23.1, 31.4)
    dram_idle_w: tuple = (2.6, 3.1)      # None: no dram subzones
    dram_w_per_core: tuple = (1.7, 2.3)
    package_range_uj: int = 3_000_000_000   # wraps every ~1-2 min
    dram_range_uj: int = 400_000_000        # wraps every ~1-2 min

    def zones(self):
        out = []
        for s in range(len(self.cpus)):
            out.append(ZoneModel('intel-rapl:%d' % s, 'package-%d' % s,
                                 'package-%d' % s, s,
                                 self.package_idle_w[s],
                                 self.package_w_per_core[s],
                                 self.package_range_uj))
            if self.dram_idle_w is not None:
                out.append(ZoneModel('intel-rapl:%d:0' % s, 'dram',
                                     'dram-%d' % s, s, self.dram_idle_w[s],
                                     self.dram_w_per_core[s],
                                     self.dram_range_uj))
        return out

    def socket_of_cpu(self):
        return {cpu: s for s, cpus in enumerate(self.cpus) for cpu in cpus}

    def w_per_core_of_socket(self, socket):
        """Dynamic watts per busy core of a socket, package + dram."""
        w = self.package_w_per_core[socket]
        if self.dram_idle_w is not None:
            w += self.dram_w_per_core[socket]
        return w

    def idle_of_socket(self, socket):
        w = self.package_idle_w[socket]
        if self.dram_idle_w is not None:
            w += self.dram_idle_w[socket]
        return w

    def as_dict(self):
        return dataclasses.asdict(self)


def read_cpu_busy_ns(proc_stat='/proc/stat'):
    """{cpu number: busy ns} from the per-CPU lines of /proc/stat."""
    out = {}
    with open(proc_stat) as f:
        for line in f:
            if not line.startswith('cpu'):
                if out:
                    break       # the cpuN lines are all at the top
                continue
            parts = line.split()
            if not parts[0][3:].isdigit():
                continue        # the aggregate 'cpu' line
            fields = [int(x) for x in parts[1:]]
            busy = sum(fields[i] for i in BUSY_FIELDS if i < len(fields))
            out[int(parts[0][3:])] = busy * NS_PER_JIFFY
    return out


def write_topology(path, socket_of_cpu):
    """<path>/cpuN/topology/physical_package_id for every CPU."""
    for cpu, socket in socket_of_cpu.items():
        d = os.path.join(path, 'cpu%d' % cpu, 'topology')
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, 'physical_package_id'), 'w') as f:
            f.write('%d\n' % socket)
    return path


class EmulatedRapl:
    """The tree, its topology and the truth; a context manager.

    ``root``: where ``powercap/``, ``cpu/`` and ``truth.jsonl`` go.
    ``truth_every``: keep one truth sample in memory (and in the JSON
    lines) per this many steps (the counters advance every step).
    """

    def __init__(self, root, model=None, period=0.05, truth_every=4,
                 proc_stat='/proc/stat', clock=time.time):
        self.root = str(root)
        self.model = model or PowerModel()
        self.period = period
        self.truth_every = truth_every
        self.proc_stat = proc_stat
        self.clock = clock
        self.powercap_path = os.path.join(self.root, 'powercap')
        self.topology_path = os.path.join(self.root, 'cpu')
        self.truth_path = os.path.join(self.root, 'truth.jsonl')
        self.zones = self.model.zones()
        self._socket_of_cpu = self.model.socket_of_cpu()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self._truth_file = None
        # unwrapped cumulative energy, float µJ: total, idle, dynamic
        self.energy = {z.agent_name: 0.0 for z in self.zones}
        self.idle = {z.agent_name: 0.0 for z in self.zones}
        self.dynamic = {z.agent_name: 0.0 for z in self.zones}
        self.counter = {z.agent_name: 0 for z in self.zones}
        self.wraps = {z.agent_name: 0 for z in self.zones}
        # counters start near the top so the first wrap comes early
        self._start = {z.agent_name: int(z.max_range_uj * 0.8) + 12345
                       for z in self.zones}
        self.samples = []       # truth samples, see sample()
        self.steps = 0
        self._t0 = self._busy0 = None
        self._last_t = self._last_busy = None
        self.error = None

    # -- setup -------------------------------------------------------------

    def create(self):
        os.makedirs(self.powercap_path, exist_ok=True)
        write_topology(self.topology_path, self._socket_of_cpu)
        for z in self.zones:
            start = self._start[z.agent_name]
            self.counter[z.agent_name] = start
            powercap.write_zone(self.powercap_path, z.dirname, z.name,
                                start, z.max_range_uj)
        self._last_t = self._t0 = self.clock()
        self._last_busy = self._busy0 = read_cpu_busy_ns(self.proc_stat)
        missing = set(self._socket_of_cpu) - set(self._busy0)
        if missing:
            raise RuntimeError('CPUs %s of the model are not in %s'
                               % (sorted(missing), self.proc_stat))
        self._truth_file = open(self.truth_path, 'w')
        self._truth_file.write(json.dumps(
            {'model': self.model.as_dict(), 'user_hz': USER_HZ,
             'zones': [dataclasses.asdict(z) for z in self.zones],
             't0': self._t0, 'busy_ns0': self._busy0}) + '\n')
        self._record()
        return self

    # -- stepping ----------------------------------------------------------

    def step(self, now=None, busy=None):
        """Advance every counter to ``now`` from the /proc/stat now."""
        now = self.clock() if now is None else now
        busy = read_cpu_busy_ns(self.proc_stat) if busy is None else busy
        with self._lock:
            dt = now - self._last_t
            if dt <= 0:
                return
            dbusy_s = {}
            for cpu, socket in self._socket_of_cpu.items():
                d = max(busy[cpu] - self._last_busy[cpu], 0) / 1e9
                dbusy_s[socket] = dbusy_s.get(socket, 0.0) + d
            for z in self.zones:
                idle = z.idle_w * dt * 1e6
                dyn = z.w_per_core * dbusy_s.get(z.socket, 0.0) * 1e6
                self.idle[z.agent_name] += idle
                self.dynamic[z.agent_name] += dyn
                self.energy[z.agent_name] += idle + dyn
                # the counter shows the whole-µJ floor of the cumulative
                # energy since create(), offset by the start value
                total = self._start[z.agent_name] + \
                    int(self.energy[z.agent_name])
                self.wraps[z.agent_name] = total // z.max_range_uj
                value = total % z.max_range_uj
                if value != self.counter[z.agent_name]:
                    self.counter[z.agent_name] = value
                    powercap.set_energy(self.powercap_path, z.dirname, value)
            self._last_t, self._last_busy = now, busy
            self.steps += 1
            if self.steps % self.truth_every == 0:
                self._record()

    def _record(self):
        s = {'t': self._last_t,
             'busy_ns': {str(c): v - self._busy0[c]
                         for c, v in self._last_busy.items()
                         if c in self._socket_of_cpu},
             'energy_uj': dict(self.energy), 'idle_uj': dict(self.idle),
             'dynamic_uj': dict(self.dynamic), 'wraps': dict(self.wraps)}
        self.samples.append(s)
        if self._truth_file is not None:
            self._truth_file.write(json.dumps(s) + '\n')

    def _run(self):
        next_t = time.monotonic()
        flush_at = next_t + 1.0
        while not self._stop.is_set():
            next_t += self.period
            delay = next_t - time.monotonic()
            if delay < 0:       # fell behind (CPU starved): do not burst
                next_t = time.monotonic()
                delay = 0
            if self._stop.wait(delay):
                break
            try:
                self.step()
            except Exception as exc:  # noqa: BLE001 - reported by check()
                self.error = exc
                return
            if time.monotonic() >= flush_at:
                flush_at += 1.0
                with self._lock:
                    self._truth_file.flush()

    def check(self):
        if self.error is not None:
            raise RuntimeError('the emulated RAPL thread died: %r'
                               % (self.error,))

    def start(self):
        if self._truth_file is None:
            self.create()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name='emulated-rapl')
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        with self._lock:
            self._record()
            if self._truth_file is not None:
                self._truth_file.close()
                self._truth_file = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    # -- truth -------------------------------------------------------------

    def truth_at(self, t):
        """The truth sample interpolated at wall time ``t`` (energies in
        µJ, busy ns per CPU). Between samples the energies are linear."""
        with self._lock:
            samples = self.samples
            if not samples:
                raise ValueError('no truth yet')
            lo, hi = 0, len(samples) - 1
            if t <= samples[0]['t']:
                return samples[0]
            if t >= samples[hi]['t']:
                return samples[hi]
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if samples[mid]['t'] <= t:
                    lo = mid
                else:
                    hi = mid
            a, b = samples[lo], samples[hi]
        f = (t - a['t']) / (b['t'] - a['t'])

        def mix(key):
            return {k: a[key][k] + f * (b[key][k] - a[key][k])
                    for k in a[key]}
        return {'t': t, 'busy_ns': mix('busy_ns'),
                'energy_uj': mix('energy_uj'), 'idle_uj': mix('idle_uj'),
                'dynamic_uj': mix('dynamic_uj')}

    def zone(self, agent_name):
        for z in self.zones:
            if z.agent_name == agent_name:
                return z
        raise KeyError(agent_name)

    def write_summary(self, path):
        """The truth as one JSON document (model, zones, final totals)."""
        with self._lock:
            doc = {'model': self.model.as_dict(),
                   'zones': [dataclasses.asdict(z) for z in self.zones],
                   't0': self._t0, 't_end': self._last_t,
                   'energy_uj': self.energy, 'idle_uj': self.idle,
                   'dynamic_uj': self.dynamic, 'wraps': self.wraps,
                   'steps': self.steps, 'samples': len(self.samples),
                   'samples_file': self.truth_path}
        with open(path, 'w') as f:
            json.dump(doc, f, indent=1)
        return path
