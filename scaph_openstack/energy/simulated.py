"""Simulated energy for hosts without RAPL (VMs, ARM, CI machines).

The model, documented in doc/design.md: each simulated socket draws

    P = idle_watts + (max_watts - idle_watts) x U

where U is the host's CPU utilisation over the interval (busy / (busy +
idle) from /proc/stat). Energy is integrated into wrapping counters shaped
like RAPL's, so everything downstream runs the same code as on real
hardware, and carries ``source = simulated``.
"""

import time

from scaph_openstack.energy import base
from scaph_openstack.inventory import hoststat


class SimulatedSource(base.EnergySource):

    name = base.SOURCE_SIMULATED

    def __init__(self, sockets=1, idle_watts=20.0, max_watts=100.0,
                 dram_watts=0.0, max_energy_range_uj=262143328850,
                 proc_stat_path='/proc/stat', clock=time.monotonic):
        self.sockets = sockets
        self.idle_watts = idle_watts
        self.max_watts = max(max_watts, idle_watts)
        self.dram_watts = dram_watts
        self.max_energy_range_uj = max_energy_range_uj
        self.proc_stat_path = proc_stat_path
        self.clock = clock
        self._counters = {}
        self._last = None  # (monotonic time, HostCpuTime)

    def _utilisation(self, cpu, last_cpu):
        busy = cpu.busy_ns - last_cpu.busy_ns
        idle = cpu.idle_ns - last_cpu.idle_ns
        if busy < 0 or idle < 0 or busy + idle == 0:
            return 0.0
        return busy / (busy + idle)

    def _zone_watts(self, utilisation):
        package = (self.idle_watts
                   + (self.max_watts - self.idle_watts) * utilisation)
        for socket in range(self.sockets):
            yield 'package-%d' % socket, 'package', socket, package
            if self.dram_watts > 0:
                yield 'dram-%d' % socket, 'dram', socket, self.dram_watts

    def read(self):
        now = self.clock()
        try:
            cpu = hoststat.read_host_cpu(self.proc_stat_path)
        except hoststat.HostStatError as exc:
            raise base.EnergySourceError(str(exc))
        if self._last is None:
            elapsed, utilisation = 0.0, 0.0
        else:
            elapsed = max(0.0, now - self._last[0])
            utilisation = self._utilisation(cpu, self._last[1])
        self._last = (now, cpu)
        zones = []
        for name, kind, socket, watts in self._zone_watts(utilisation):
            added = int(round(watts * elapsed * 1e6))
            value = (self._counters.get(name, 0) + added) \
                % self.max_energy_range_uj
            self._counters[name] = value
            zones.append(base.ZoneReading(name, kind, socket, value,
                                          self.max_energy_range_uj))
        return base.EnergyReading(self.name, tuple(zones))


def from_conf(conf):
    s = conf.simulated
    return SimulatedSource(s.sockets, s.idle_watts, s.max_watts, s.dram_watts,
                           s.max_energy_range_uj, conf.agent.proc_stat_path)
