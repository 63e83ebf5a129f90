"""Carbon counters in exact integers.

A tick's carbon is its energy x PUE x the carbon intensity in force at
that tick. The ledger keeps it in "carbon units": µJ x PUE in thousandths
x intensity in mg/kWh, an integer product, so adding a tick loses
nothing and a counter never decreases. One µg CO2e is
1000 x 1000 x 3 600 000 of them (1 kWh = 3.6e12 µJ, 1 g = 1e6 µg; the
two thousandths scale PUE and g->mg). What is published is
``units // UNITS_PER_UG``: whole µg, exact, never ahead of the ledger.
"""

import dataclasses

from oslo_log import log as logging

from scaph_openstack.accounting import intensity as intensity_mod

LOG = logging.getLogger(__name__)

# 1e3 (PUE in thousandths) x 1e3 (g -> mg) x 3.6e12 µJ per kWh / 1e6 µg
# per g.
PUE_SCALE = 1000
INTENSITY_SCALE = 1000          # mg per g
UNITS_PER_UG = PUE_SCALE * INTENSITY_SCALE * 3_600_000

SOURCE_STATIC = 'static'
SOURCE_FILE = 'file'
SOURCE_UNKNOWN = 'unknown'


def pue_milli(pue):
    return round(pue * PUE_SCALE)


def intensity_mg(g_per_kwh):
    return round(g_per_kwh * INTENSITY_SCALE)


def factor(pue, g_per_kwh):
    """Carbon units per µJ at this PUE and intensity (gCO2e/kWh)."""
    return pue_milli(pue) * intensity_mg(g_per_kwh)


def ug(units):
    """Whole µg CO2e of a counter in carbon units."""
    return units // UNITS_PER_UG


@dataclasses.dataclass(frozen=True)
class Intensity:
    """The carbon intensity in force at one tick."""
    g_per_kwh: float | None     # None: unknown, no carbon counted
    source: str                 # static, file or unknown
    since: float | None = None  # wall-clock time of the file's entry

    @property
    def known(self):
        return self.g_per_kwh is not None


UNKNOWN = Intensity(None, SOURCE_UNKNOWN)


class Accounting:
    """What the ticker asks each tick: the PUE and the intensity now."""

    def __init__(self, pue=1.0, static=None, table=None):
        self.pue = pue
        self.static = static
        self.table = table       # intensity.IntensityFile or None

    @property
    def enabled(self):
        """Whether carbon is counted and published at all."""
        return self.static is not None or self.table is not None

    def intensity(self, now):
        """The Intensity in force at wall-clock time ``now``."""
        if self.table is not None:
            found = self.table.at(now)
            if found is not None:
                since, value = found
                return Intensity(value, SOURCE_FILE, since)
        if self.static is not None:
            return Intensity(self.static, SOURCE_STATIC)
        return UNKNOWN

    def factor(self, intensity):
        """Carbon units per µJ for ``intensity``; None when unknown."""
        if not intensity.known:
            return None
        return factor(self.pue, intensity.g_per_kwh)


def from_conf(conf):
    opts = conf.accounting
    table = None
    if opts.carbon_intensity_file:
        table = intensity_mod.IntensityFile(
            opts.carbon_intensity_file, opts.carbon_intensity_max_age,
            fallback=opts.carbon_intensity is not None)
    accounting = Accounting(opts.pue, opts.carbon_intensity, table)
    if accounting.enabled:
        LOG.info('Counting carbon: pue=%s, carbon intensity from %s',
                 opts.pue, ' else '.join(
                     what for what in (
                         opts.carbon_intensity_file and
                         'file %s' % opts.carbon_intensity_file,
                         opts.carbon_intensity is not None and
                         'static %s gCO2e/kWh' % opts.carbon_intensity)
                     if what))
    return accounting
