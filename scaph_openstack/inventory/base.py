"""What every inventory returns: instances with identity and CPU time."""

import abc
import dataclasses
import functools


class InventoryUnavailable(Exception):
    """The hypervisor cannot be asked right now (libvirtd away, ...).

    The agent skips attribution for that tick and keeps its baselines, so
    the next good tick attributes the whole gap from cumulative counters.
    """


@dataclasses.dataclass(frozen=True)
class InstanceIdentity:
    """Who an instance is. Parsed once per domain, not every tick."""
    uuid: str
    name: str
    display_name: str | None = None
    project_id: str | None = None
    project_name: str | None = None
    user_id: str | None = None
    user_name: str | None = None
    flavor: str | None = None
    vcpus: int | None = None
    memory_mb: int | None = None
    nova: bool = False

    @functools.cached_property
    def _fields(self):
        # Identities are frozen and published every tick: convert once.
        return {f.name: getattr(self, f.name)
                for f in dataclasses.fields(self)}

    def as_dict(self):
        return dict(self._fields)


@dataclasses.dataclass(frozen=True)
class InstanceUsage:
    """One instance at one instant: cumulative CPU time of all its threads."""
    identity: InstanceIdentity
    cpu_time_ns: int
    vcpus: int
    # Where its threads may run (topology.CpuPins); None: anywhere.
    pins: object = None
    # Cumulative ns of each vCPU, only where its vCPUs are pinned to
    # different sockets (the only case that needs them).
    vcpu_time_ns: dict | None = None

    @property
    def uuid(self):
        return self.identity.uuid


class Inventory(abc.ABC):
    """Plugin base for the ``scaph_openstack.inventory`` group."""

    name = None

    @abc.abstractmethod
    def list_instances(self) -> tuple[InstanceUsage, ...]:
        """Every running instance; raise InventoryUnavailable if unknown."""

    def close(self):
        pass
