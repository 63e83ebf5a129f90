"""Types between the agent and an attribution model."""

import abc
import dataclasses


@dataclasses.dataclass(frozen=True)
class ZoneDelta:
    """Measured energy of one zone over one interval."""
    name: str
    kind: str
    socket: int
    delta_uj: int


@dataclasses.dataclass(frozen=True)
class UsageDelta:
    """CPU time one instance used over the interval."""
    uuid: str
    cpu_ns: int
    vcpus: int


@dataclasses.dataclass(frozen=True)
class ZoneSplit:
    """Where one zone's delta went. Always:

    sum(instances.values()) + host_residual_uj + unallocated_idle_uj
        == delta_uj, every term >= 0.
    """
    zone: str
    delta_uj: int
    idle_uj: int
    instances: dict[str, int]
    host_residual_uj: int
    unallocated_idle_uj: int


class Attribution(abc.ABC):
    """Plugin base for the ``scaph_openstack.attribution`` group."""

    name = None

    @abc.abstractmethod
    def split(self, zones, interval_s, host_busy_ns, host_cpus, usage,
              now):
        """Split every ZoneDelta between instances; returns ZoneSplits."""


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
