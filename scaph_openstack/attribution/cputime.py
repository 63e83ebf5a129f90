"""The ``cputime`` model.

Per zone and interval, with P_idle the zone's idle power:

    idle     = min(delta, P_idle x interval)
    dynamic  = delta - idle
    share_i  = floor(dynamic x cpu_i / max(host_busy, sum cpu))
    residual = dynamic - sum share_i        (the host's own work, rounding)

The idle part goes by ``idle_policy``: ``none`` leaves it unallocated;
``vcpus`` gives each instance idle x vcpus_i / max(host_cpus, sum vcpus)
(its reservation of the machine); ``cputime`` uses the CPU-time weights of
the dynamic part. Whatever is not handed out stays unallocated idle.

P_idle is configured per zone ([attribution] idle_power) or learned: the
lowest average power the zone showed over the learning window. A zone's
floor is the power it draws with nothing to do, so the minimum converges
to it on any host that is ever quiet; until then it overestimates idle,
which only moves energy from "dynamic" to "idle", never creates any.
"""

import collections
import math

from scaph_openstack.attribution import base

IDLE_POLICIES = ('none', 'vcpus', 'cputime')


class SlidingMinimum:
    """Minimum of the values seen in the last ``window`` seconds."""

    def __init__(self, window):
        self.window = window
        self._values = collections.deque()  # (time, value), increasing

    def add(self, now, value):
        while self._values and self._values[-1][1] >= value:
            self._values.pop()
        self._values.append((now, value))
        while self._values[0][0] < now - self.window:
            self._values.popleft()
        return self._values[0][1]


class CpuTimeAttribution(base.Attribution):

    name = 'cputime'

    def __init__(self, idle_policy='none', idle_power=None,
                 idle_learning_window=3600):
        if idle_policy not in IDLE_POLICIES:
            raise ValueError('idle_policy must be one of %s, not %r'
                             % (', '.join(IDLE_POLICIES), idle_policy))
        self.idle_policy = idle_policy
        self.idle_power = {zone: float(watts) for zone, watts
                           in (idle_power or {}).items()}
        self.learning_window = idle_learning_window
        self._learned = {}

    def idle_watts(self, zone, interval_s, now):
        """Configured idle power, else the learned minimum (and learn)."""
        if zone.name in self.idle_power:
            return self.idle_power[zone.name]
        if interval_s <= 0:
            return 0.0
        minimum = self._learned.setdefault(
            zone.name, SlidingMinimum(self.learning_window))
        return minimum.add(now, zone.delta_uj / interval_s / 1e6)

    def _idle_uj(self, zone, delta, interval_s, now):
        budget = self.idle_watts(zone, interval_s, now) * interval_s * 1e6
        if math.isnan(budget) or budget <= 0:
            return 0
        # Compared as floats first: a learned power over a tiny interval
        # can be huge (or infinite) and must not overflow int().
        return delta if budget >= delta else int(budget)

    def _idle_weights(self, usage, host_cpus, cpu_weights, cpu_denominator):
        if self.idle_policy == 'vcpus':
            weights = {u.uuid: u.vcpus for u in usage}
            return weights, max(host_cpus, sum(weights.values()))
        if self.idle_policy == 'cputime':
            return cpu_weights, cpu_denominator
        return {}, 0

    def split(self, zones, interval_s, host_busy_ns, host_cpus, usage,
              now=0.0):
        cpu_weights = {u.uuid: max(u.cpu_ns, 0) for u in usage}
        # Instance CPU can exceed the host's busy time by sampling skew;
        # the larger denominator keeps the shares within the budget.
        cpu_denominator = max(host_busy_ns, sum(cpu_weights.values()))
        idle_weights, idle_denominator = self._idle_weights(
            usage, host_cpus, cpu_weights, cpu_denominator)
        return tuple(
            self._split_zone(zone, interval_s, now, cpu_weights,
                             cpu_denominator, idle_weights, idle_denominator)
            for zone in zones)

    def _split_zone(self, zone, interval_s, now, cpu_weights,
                    cpu_denominator, idle_weights, idle_denominator):
        delta = max(zone.delta_uj, 0)
        idle = self._idle_uj(zone, delta, interval_s, now)
        dynamic = delta - idle
        dynamic_shares = base.proportional(dynamic, cpu_weights,
                                           cpu_denominator)
        idle_shares = base.proportional(idle, idle_weights, idle_denominator)
        instances = {uuid: dynamic_shares.get(uuid, 0)
                     + idle_shares.get(uuid, 0) for uuid in cpu_weights}
        return base.ZoneSplit(
            zone=zone.name,
            delta_uj=delta,
            idle_uj=idle,
            instances=instances,
            host_residual_uj=dynamic - sum(dynamic_shares.values()),
            unallocated_idle_uj=idle - sum(idle_shares.values()))


def from_conf(conf):
    a = conf.attribution
    return CpuTimeAttribution(a.idle_policy, a.idle_power,
                              a.idle_learning_window)
