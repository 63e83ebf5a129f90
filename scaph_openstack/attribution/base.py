"""Types between the agent and an attribution model."""

import abc
import dataclasses

# How an instance's CPU time was placed on sockets.
PLACEMENT_SOCKET = 'socket'        # pinned within one socket
PLACEMENT_HOST_WIDE = 'host-wide'  # may run anywhere: spread by host load


@dataclasses.dataclass(frozen=True)
class ZoneDelta:
    """Measured energy of one zone over one interval."""
    name: str
    kind: str
    socket: int
    delta_uj: int
    # Time the delta covers, when it differs from the tick's interval (a
    # zone that could not be read for a while); None: the interval.
    elapsed_s: float | None = None


@dataclasses.dataclass(frozen=True)
class UsageDelta:
    """CPU time one instance used over the interval. Where it ran:
    ``socket``, the one socket all its CPUs belong to, or
    ``socket_cpu_ns``, {socket: ns} of the part whose socket is known
    (vCPUs pinned to different sockets); the rest of ``cpu_ns`` may have
    run anywhere."""
    uuid: str
    cpu_ns: int
    vcpus: int
    socket: int | None = None
    socket_cpu_ns: dict | None = None

    def known_sockets(self):
        """{socket: ns} of the CPU time whose socket is known."""
        if self.socket is not None:
            return {self.socket: max(self.cpu_ns, 0)}
        return self.socket_cpu_ns or {}


@dataclasses.dataclass(frozen=True)
class HostUsage:
    """The host's CPU time over the interval, per socket. Empty dicts
    when the topology is unknown: every zone is then split host-wide."""
    busy_ns: int
    cpus: int
    socket_busy_ns: dict = dataclasses.field(default_factory=dict)
    socket_cpus: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ZoneSplit:
    """Where one zone's delta went. Always:

    sum(instances.values()) + host_residual_uj + unallocated_idle_uj
        == delta_uj, every term >= 0,

    and idle_instances[uuid] <= instances[uuid] (the idle part of each
    instance's share; the rest of its share is dynamic).
    """
    zone: str
    delta_uj: int
    idle_uj: int
    instances: dict[str, int]
    host_residual_uj: int
    unallocated_idle_uj: int
    idle_instances: dict[str, int] = dataclasses.field(default_factory=dict)
    idle_estimate: object = None     # attribution.idle.IdleEstimate
    scope: str = PLACEMENT_HOST_WIDE  # split by this socket's CPU time?


class Attribution(abc.ABC):
    """Plugin base for the ``scaph_openstack.attribution`` group."""

    name = None

    @abc.abstractmethod
    def split(self, zones, interval_s, host, usage, now):
        """Split every ZoneDelta between instances (``host`` a HostUsage,
        ``usage`` UsageDeltas); returns ZoneSplits."""

    def state(self):
        """What must survive a restart (persisted in the ledger)."""
        return {}

    def load_state(self, state):
        """Take back what state() returned before a restart."""


def proportional(budget, weights, denominator):
    """Floor of budget x weight / denominator for each key.

    With sum(weights) <= denominator the shares never exceed the budget;
    the remainder is left to the caller, which is what keeps the split
    exact in integers.
    """
    if budget <= 0 or denominator <= 0:
        return {key: 0 for key in weights}
    return {key: budget * weight // denominator
            for key, weight in weights.items()}
