"""The ``cputime`` model.

Per zone and interval, with P_idle the zone's idle power and "busy" the
CPU time of the zone's socket (package-N and dram-N zones: the CPUs of
socket N; psys and hosts of unknown topology: every CPU):

    idle     = min(delta, P_idle x interval)
    dynamic  = delta - idle
    share_i  = floor(dynamic x cpu_i / max(busy, sum cpu))
    residual = dynamic - sum share_i        (the host's own work, rounding)

cpu_i is the CPU time instance i spent on the zone's socket: all of it for
an instance pinned within that socket; for one that may run anywhere, its
CPU time spread over the sockets in proportion to the busy time the pinned
instances leave there (the host-wide fallback, reported as such).

The idle part goes by ``idle_policy``: ``none`` leaves it unallocated
(Kepler's convention: VMs get active power only); ``vcpus`` gives each
instance idle x vcpus_i / max(socket cpus, sum vcpus) (its reservation of
the machine, the SCS-0413/0414 drafts' convention); ``cputime`` uses the
CPU-time weights of the dynamic part. Whatever is not handed out stays
unallocated idle.

P_idle is configured per zone ([attribution] idle_power) or learned from
how the zone's power moves with its socket's utilisation
(attribution/idle.py).
"""

import dataclasses
import math

from scaph_openstack.attribution import base
from scaph_openstack.attribution import idle as idle_mod

IDLE_POLICIES = ('none', 'vcpus', 'cputime')
# A long gap (an agent stopped by SIGSTOP, a hung host) is one point of
# the idle fit; this caps its weight so it cannot outweigh the rest.
MAX_POINT_WEIGHT_S = 60.0


@dataclasses.dataclass(frozen=True)
class Scope:
    """The CPU-time weights one zone is split with."""
    placement: str
    utilisation: float
    cpu_weights: dict
    cpu_denominator: int
    vcpu_weights: dict
    vcpu_denominator: int


def _utilisation(busy_ns, cpus, interval_s):
    if interval_s <= 0 or cpus <= 0:
        return float('nan')
    return busy_ns / (interval_s * 1e9 * cpus)


def host_scope(usage, host, interval_s):
    cpu = {u.uuid: max(u.cpu_ns, 0) for u in usage}
    vcpus = {u.uuid: u.vcpus for u in usage}
    return Scope(base.PLACEMENT_HOST_WIDE,
                 _utilisation(host.busy_ns, host.cpus, interval_s),
                 cpu, max(host.busy_ns, sum(cpu.values())),
                 vcpus, max(host.cpus, sum(vcpus.values())))


def _placed(usage, sockets):
    """(pinned {socket: {uuid: (ns, vcpu weight share)}}, floating
    [(UsageDelta, ns)]) : the CPU time whose socket is known, and the
    rest."""
    pinned = {s: {} for s in sockets}
    floating = []
    for u in usage:
        cpu = max(u.cpu_ns, 0)
        known = {s: ns for s, ns in u.known_sockets().items()
                 if s in pinned and ns >= 0}
        known_total = sum(known.values())
        for s, ns in known.items():
            # The vCPUs' reservation goes where the time went (all of it
            # to the one socket of a pinned instance, even when idle).
            share = 1 if len(known) == 1 else (
                ns / known_total if known_total else 0)
            pinned[s][u.uuid] = (ns, share)
        if cpu > known_total or not known:
            floating.append((u, cpu - known_total))
    return pinned, floating


def socket_scopes(usage, host, interval_s):
    """{socket: Scope}: CPU time whose socket is known weighs on that
    socket only; the rest is spread by the busy time it leaves free."""
    sockets = host.socket_busy_ns
    total_cpus = max(sum(host.socket_cpus.values()), 1)
    pinned, floating = _placed(usage, sockets)
    free = {s: max(0, busy - sum(ns for ns, _ in pinned[s].values()))
            for s, busy in sockets.items()}
    if not sum(free.values()):
        free = {s: host.socket_cpus.get(s, 0) for s in sockets}
    total_free = sum(free.values())
    vcpus = {u.uuid: u.vcpus for u in usage}
    scopes = {}
    for s, busy in sockets.items():
        cpus_s = host.socket_cpus.get(s, 0)
        cpu = {uuid: ns for uuid, (ns, _) in pinned[s].items()}
        # vCPU weights in units of 1/total_cpus: a pinned vCPU is
        # total_cpus units on its socket, a floating one cpus_s units.
        vcpu = {uuid: int(vcpus[uuid] * total_cpus * share)
                for uuid, (_, share) in pinned[s].items()}
        for u, ns in floating:
            cpu[u.uuid] = cpu.get(u.uuid, 0) + (
                ns * free[s] // total_free if total_free else 0)
            if u.uuid not in vcpu:
                vcpu[u.uuid] = u.vcpus * cpus_s
        scopes[s] = Scope(base.PLACEMENT_SOCKET,
                          _utilisation(busy, cpus_s, interval_s),
                          cpu, max(busy, sum(cpu.values())),
                          vcpu, max(cpus_s * total_cpus, sum(vcpu.values())))
    return scopes


class CpuTimeAttribution(base.Attribution):

    name = 'cputime'

    def __init__(self, idle_policy='none', idle_power=None,
                 idle_learning_window=3600):
        if idle_policy not in IDLE_POLICIES:
            raise ValueError('idle_policy must be one of %s, not %r'
                             % (', '.join(IDLE_POLICIES), idle_policy))
        self.idle_policy = idle_policy
        self.idle_power = {zone: _watts(zone, watts) for zone, watts
                           in (idle_power or {}).items()}
        self.learning_window = idle_learning_window
        self.models = {}   # zone name -> idle.IdleModel

    # -- idle power -------------------------------------------------------
    def idle_estimate(self, zone, interval_s, utilisation):
        """Learn from this interval, then the zone's IdleEstimate."""
        if zone.name in self.idle_power:
            return idle_mod.IdleEstimate(idle_mod.STATE_CONFIGURED,
                                         self.idle_power[zone.name])
        model = self.models.get(zone.name)
        if model is None:
            model = self.models[zone.name] = idle_mod.IdleModel(
                window_s=self.learning_window)
        covered = zone.elapsed_s if zone.elapsed_s is not None else interval_s
        # A delta that covers more than this interval (the zone was
        # unreadable) has no utilisation of its own: not a point.
        if interval_s > 0 and abs(covered - interval_s) <= 0.25 * interval_s:
            model.observe(min(interval_s, MAX_POINT_WEIGHT_S), utilisation,
                          zone.delta_uj / interval_s / 1e6)
        return model.estimate()

    def state(self):
        return {'idle_models': {zone: model.to_dict()
                                for zone, model in self.models.items()}}

    def load_state(self, state):
        models = (state or {}).get('idle_models', {})
        self.models = {zone: idle_mod.IdleModel.from_dict(
            doc, self.learning_window) for zone, doc in models.items()}

    # -- the split --------------------------------------------------------
    def split(self, zones, interval_s, host, usage, now=0.0):
        sockets = socket_scopes(usage, host, interval_s) \
            if host.socket_busy_ns else {}
        everywhere = None
        splits = []
        for zone in zones:
            scope = sockets.get(zone.socket) if zone.kind != 'psys' else None
            if scope is None:
                if everywhere is None:
                    everywhere = host_scope(usage, host, interval_s)
                scope = everywhere
            splits.append(self._split_zone(zone, interval_s, scope))
        return tuple(splits)

    def _idle_weights(self, scope):
        if self.idle_policy == 'vcpus':
            return scope.vcpu_weights, scope.vcpu_denominator
        if self.idle_policy == 'cputime':
            return scope.cpu_weights, scope.cpu_denominator
        return {}, 0

    def _split_zone(self, zone, interval_s, scope):
        delta = max(zone.delta_uj, 0)
        estimate = self.idle_estimate(zone, interval_s, scope.utilisation)
        budget = estimate.watts * interval_s * 1e6
        # Compared as floats first: a large power over a long interval
        # must not overflow int().
        idle = 0 if not budget > 0 else (
            delta if budget >= delta else int(budget))
        dynamic = delta - idle
        dynamic_shares = base.proportional(dynamic, scope.cpu_weights,
                                           scope.cpu_denominator)
        idle_weights, idle_denominator = self._idle_weights(scope)
        idle_shares = base.proportional(idle, idle_weights, idle_denominator)
        instances = {uuid: share + idle_shares.get(uuid, 0)
                     for uuid, share in dynamic_shares.items()}
        return base.ZoneSplit(
            zone=zone.name,
            delta_uj=delta,
            idle_uj=idle,
            instances=instances,
            host_residual_uj=dynamic - sum(dynamic_shares.values()),
            unallocated_idle_uj=idle - sum(idle_shares.values()),
            idle_instances=idle_shares,
            idle_estimate=estimate,
            scope=scope.placement)


def _watts(zone, value):
    """A configured idle power; ValueError naming the option otherwise."""
    try:
        watts = float(value)
    except (TypeError, ValueError):
        watts = None
    if watts is None or not math.isfinite(watts) or watts < 0:
        raise ValueError('[attribution] idle_power of %s must be a finite '
                         'number of watts >= 0, not %r' % (zone, value))
    return watts


def from_conf(conf):
    a = conf.attribution
    return CpuTimeAttribution(a.idle_policy, a.idle_power,
                              a.idle_learning_window)
