"""The frozen per-tick report: the only thing publishers read.

Built once, after the ledger is persisted, from copies of the ledger's
values: a publisher's own thread (the Prometheus HTTP server) can read it
while the next tick changes the ledger, and nothing a publisher exposes
is ahead of what a restarted agent starts from (doc/design.md,
"Persistence"). Totals (package + dram, dynamic, idle) are computed here
once, not by each publisher.
"""

import dataclasses
import types

from scaph_openstack.accounting import carbon as carbon_mod
from scaph_openstack import ledger as ledger_mod

# Idle power estimates, least settled first (attribution/idle.py STATES):
# a summary over several zones is only as good as its worst zone.
_IDLE_STATE_ORDER = ('calibrating', 'learned', 'configured')


@dataclasses.dataclass(frozen=True, slots=True)
class InstanceTotals:
    """One instance's cumulative counters (µJ) at the report's time."""
    identity: object          # inventory.base.InstanceIdentity
    state: str                # running, paused, shutoff or undefined
    energy_uj: types.MappingProxyType   # zone -> µJ, idle included
    idle_uj: types.MappingProxyType     # zone -> µJ, the idle part
    package_uj: int
    dram_uj: int
    total_uj: int             # package + dram
    idle_total_uj: int        # idle part of total_uj
    power_w: float            # average over the last tick
    placement: str
    first_seen: float
    last_seen: float
    carbon_ug: int = 0        # µg CO2e, with PUE, carried in included

    @property
    def uuid(self):
        return self.identity.uuid

    @property
    def running(self):
        return self.state == ledger_mod.STATE_RUNNING

    @property
    def dynamic_uj(self):
        return self.total_uj - self.idle_total_uj


@dataclasses.dataclass(frozen=True, slots=True)
class ZoneTotals:
    """One host zone's cumulative counters (µJ) at the report's time."""
    name: str
    kind: str
    socket: int
    measured_uj: int
    residual_uj: int
    unallocated_idle_uj: int
    power_w: float
    avg_power_w: float
    observed_s: float
    idle_estimate_state: str
    idle_estimate_w: float
    scope: str
    carbon_ug: int = 0        # µg CO2e of measured_uj, with PUE
    carbon_unknown_uj: int = 0  # measured while no intensity was known

    @property
    def additive(self):
        return self.kind in ledger_mod.ADDITIVE_KINDS


@dataclasses.dataclass(frozen=True)
class Report:
    host: str
    time: float               # wall-clock time of the last reading
    interval_s: float         # length of the last tick
    configured_interval_s: float
    stale_after_s: float      # readers treat older snapshots as stale
    source: str               # rapl or simulated
    model: str
    idle_policy: str
    epoch: int
    epoch_started: float | None
    instances: types.MappingProxyType   # uuid -> InstanceTotals
    zones: tuple              # ZoneTotals
    expired: tuple = ()       # uuids dropped since the previous report
    inventory_ok: bool = True  # False: instances unattributed this tick
    # [accounting]: carbon counted and published at all; the intensity
    # in force at this tick (accounting.carbon.Intensity, None when not
    # counted), the PUE the carbon counters include.
    carbon: bool = False
    carbon_intensity: object = None
    pue: float = 1.0

    def has_kind(self, kind):
        return any(zone.kind == kind for zone in self.zones)

    def host_idle_estimate(self):
        """{state, watts} over the package and dram zones: the least
        settled state and the summed watts; None before any estimate."""
        zones = [z for z in self.zones
                 if z.additive and z.idle_estimate_state]
        if not zones:
            return None
        state = min((z.idle_estimate_state for z in zones),
                    key=lambda s: _IDLE_STATE_ORDER.index(s)
                    if s in _IDLE_STATE_ORDER else -1)
        return {'state': state,
                'watts': round(sum(z.idle_estimate_w for z in zones), 3)}


def instance_totals(record):
    # Published totals: with energy carried from other hosts, frozen
    # while the instance leaves (handoff.py). energy_uj per zone stays
    # this host's own.
    kinds = record.published_kind_totals()
    idle_kinds = record.published_idle_kind_totals()
    return InstanceTotals(
        identity=record.identity, state=record.state,
        energy_uj=types.MappingProxyType(dict(record.energy_uj)),
        idle_uj=types.MappingProxyType(dict(record.idle_uj)),
        package_uj=kinds.get('package', 0), dram_uj=kinds.get('dram', 0),
        total_uj=ledger_mod.additive_total(kinds),
        idle_total_uj=ledger_mod.additive_total(idle_kinds),
        power_w=record.power_w, placement=record.placement,
        first_seen=record.first_seen, last_seen=record.last_seen,
        carbon_ug=record.published_carbon_ug())


def zone_totals(zone):
    return ZoneTotals(
        name=zone.name, kind=zone.kind, socket=zone.socket,
        measured_uj=zone.measured_uj, residual_uj=zone.residual_uj,
        unallocated_idle_uj=zone.unallocated_idle_uj, power_w=zone.power_w,
        avg_power_w=zone.avg_power_w, observed_s=zone.observed_s,
        idle_estimate_state=zone.idle_estimate_state,
        idle_estimate_w=zone.idle_estimate_w, scope=zone.scope,
        carbon_ug=carbon_mod.ug(zone.carbon_units),
        carbon_unknown_uj=zone.carbon_unknown_uj)


class ReportBuilder:
    """Builds Reports, reusing an instance's totals while its record has
    not changed (a stopped instance's counters stand still)."""

    def __init__(self):
        self._cache = {}   # uuid -> (record version, InstanceTotals)

    def instances(self, ledger):
        built = {}
        for uuid, record in ledger.instances.items():
            cached = self._cache.get(uuid)
            if cached is not None and cached[0] == record.version:
                built[uuid] = cached[1]
                continue
            totals = instance_totals(record)
            self._cache[uuid] = (record.version, totals)
            built[uuid] = totals
        if len(self._cache) > len(built):
            for uuid in set(self._cache) - set(built):
                del self._cache[uuid]
        return types.MappingProxyType(built)

    def build(self, ledger, **fields):
        return Report(
            epoch=ledger.epoch, epoch_started=ledger.epoch_started,
            instances=self.instances(ledger),
            zones=tuple(zone_totals(z) for z in ledger.zones.values()),
            **fields)
