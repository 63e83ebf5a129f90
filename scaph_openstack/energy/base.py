"""What every energy source returns: cumulative counters per zone."""

import abc
import dataclasses

SOURCE_RAPL = 'rapl'
SOURCE_SIMULATED = 'simulated'
# No RAPL zone of a server draws this much: a counter change that would
# need more is a reset, not a wrap ([energy] max_zone_power).
DEFAULT_MAX_ZONE_POWER_W = 1000.0
# Counters move in steps (RAPL every ~1 ms, some firmware and fixtures
# every few tens of ms): two readings very close together can show a step
# that looks like a huge power. Plausibility is judged over at least this.
MIN_PLAUSIBILITY_WINDOW_S = 1.0


class EnergySourceError(Exception):
    """The source cannot be used at all (not one zone readable)."""


@dataclasses.dataclass(frozen=True)
class ZoneReading:
    """One powercap zone at one instant.

    ``name`` is stable across ticks and restarts (``package-0``, ``dram-0``,
    ``core-1``, ``psys``); ``kind`` is what it measures (package, dram,
    core, uncore, psys).
    """
    name: str
    kind: str
    socket: int
    energy_uj: int
    max_energy_range_uj: int


@dataclasses.dataclass(frozen=True)
class EnergyReading:
    source: str
    zones: tuple[ZoneReading, ...]
    # Zones that could not be read this time, name -> reason. A zone
    # missing from one reading is skipped for that tick, never guessed.
    errors: dict[str, str] = dataclasses.field(default_factory=dict)

    def by_name(self):
        return {zone.name: zone for zone in self.zones}


class EnergySource(abc.ABC):
    """Plugin base for the ``scaph_openstack.energy`` group."""

    name = None

    @abc.abstractmethod
    def read(self) -> EnergyReading:
        """Read every zone once; raise EnergySourceError if none is usable."""


def counter_delta(previous, current, max_energy_range_uj, expected_uj=None):
    """Energy between two readings of a wrapping counter, in µJ.

    A counter lower than before wrapped once at ``max_energy_range_uj``.
    One reading cannot tell how many times it wrapped during a long pause:
    when ``expected_uj`` (an estimate from recent power x elapsed time) is
    given, the number of extra whole wraps that best matches it is added.
    """
    if current >= previous:
        delta = current - previous
    else:
        delta = max_energy_range_uj - previous + current
    if expected_uj is not None and max_energy_range_uj > 0:
        extra_wraps = round((expected_uj - delta) / max_energy_range_uj)
        if extra_wraps > 0:
            delta += extra_wraps * max_energy_range_uj
    return delta


def plausible_delta(previous, current, max_energy_range_uj, elapsed_s,
                    max_power_w, expected_uj=None):
    """counter_delta, or None when the change cannot be energy: a
    decrease (or a jump) that would mean more than ``max_power_w`` over
    ``elapsed_s`` is a counter reset (resume from suspend, driver reload),
    which the caller re-baselines instead of counting a wrap."""
    if current < previous and max_energy_range_uj <= 0:
        return None
    delta = counter_delta(previous, current, max_energy_range_uj)
    if delta > max_power_w * max(elapsed_s, MIN_PLAUSIBILITY_WINDOW_S) * 1e6:
        return None
    if expected_uj is not None and max_energy_range_uj > 0:
        extra_wraps = round((expected_uj - delta) / max_energy_range_uj)
        if extra_wraps > 0:
            delta += extra_wraps * max_energy_range_uj
    return delta
