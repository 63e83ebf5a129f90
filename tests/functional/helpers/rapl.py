"""A fixture RAPL tree whose counters move like the hardware's.

The one fake the functional tests are allowed: this machine has no RAPL.
A thread adds ``watts x elapsed`` to each zone's energy_uj every 50 ms,
wrapping at max_energy_range_uj, replacing the whole file as sysfs shows
it.
"""

import threading
import time

from tests.unit import powercap


class MovingRapl:

    def __init__(self, root, watts=None, max_range=powercap.INTEL_RANGE):
        self.root = str(root)
        self.watts = dict(watts or {'intel-rapl:0': 50.0,
                                    'intel-rapl:0:0': 5.0})
        self.max_range = max_range
        self.energy = {zone: 0 for zone in self.watts}
        self.wraps = {zone: 0 for zone in self.watts}
        names = {'intel-rapl:0': 'package-0', 'intel-rapl:0:0': 'dram',
                 'intel-rapl:1': 'package-1', 'intel-rapl:1:0': 'dram'}
        for zone in self.watts:
            powercap.write_zone(self.root, zone, names[zone], 0, max_range)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def add(self, zone, energy_uj):
        with self._lock:
            total = self.energy[zone] + energy_uj
            self.wraps[zone] += total // self.max_range
            self.energy[zone] = total % self.max_range
            powercap.set_energy(self.root, zone, self.energy[zone])

    def _run(self):
        last = time.monotonic()
        while not self._stop.wait(0.05):
            now = time.monotonic()
            for zone, watts in self.watts.items():
                self.add(zone, int(watts * (now - last) * 1e6))
            last = now

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)
