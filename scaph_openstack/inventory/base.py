"""What every inventory returns: instances with identity and CPU time."""

import abc
import dataclasses
import functools


# What the hypervisor says of an instance it still defines. Only a running
# instance uses CPU; a paused or shut-off one keeps its counters and its
# share, and is not "gone" until the hypervisor no longer defines it.
STATE_RUNNING = 'running'
STATE_PAUSED = 'paused'
STATE_SHUTOFF = 'shutoff'
STATES = (STATE_RUNNING, STATE_PAUSED, STATE_SHUTOFF)


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
    # The id attribute of <nova:flavor>, which recent Nova writes in its
    # libvirt metadata (doc/ceilometer.md, "Gnocchi"); None before.
    flavor_id: str | None = None

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
    # STATE_RUNNING, STATE_PAUSED or STATE_SHUTOFF. A shut-off instance
    # has cpu_time_ns 0 (its CPU time is gone with its QEMU).
    state: str = STATE_RUNNING

    @property
    def uuid(self):
        return self.identity.uuid


class Inventory(abc.ABC):
    """Plugin base for the ``scaph_openstack.inventory`` group."""

    name = None

    @abc.abstractmethod
    def list_instances(self) -> tuple[InstanceUsage, ...]:
        """Every instance the hypervisor defines (running, paused or shut
        off, by ``state``); raise InventoryUnavailable if unknown."""

    def close(self):
        pass
