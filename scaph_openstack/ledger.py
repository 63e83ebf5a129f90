"""Cumulative per-instance and per-zone counters, persisted atomically.

Counters are Python integers in µJ that only ever grow: RAPL wraparound
is absorbed by the energy deltas before they get here, and a VM reboot
does not reset anything because instances are keyed by UUID. The ledger
is saved before any publisher runs, so a published value is never ahead
of what a restarted agent starts from.
"""

import dataclasses
import functools
import json
import math

from scaph_openstack.accounting import carbon as carbon_mod
from scaph_openstack import fileutil
from scaph_openstack.inventory import base as inventory_base
from scaph_openstack import jsonutil

FORMAT = 'scaph-openstack.ledger'
VERSION = 1
# What the hypervisor said of an instance at the last tick. An instance
# it still defines (running, paused, shut off) keeps its counters and its
# share; only an undefined one counts towards [agent] retention.
STATE_RUNNING = inventory_base.STATE_RUNNING
STATE_PAUSED = inventory_base.STATE_PAUSED
STATE_SHUTOFF = inventory_base.STATE_SHUTOFF
STATE_UNDEFINED = 'undefined'
STATES = inventory_base.STATES + (STATE_UNDEFINED,)
# Zone kinds that add up to an instance's total. core/uncore are parts of
# the package and psys contains both: adding them would count twice.
ADDITIVE_KINDS = ('package', 'dram')


class LedgerError(ValueError):
    pass


@functools.lru_cache(maxsize=256)
def zone_kind(zone_name):
    """'package-0' -> 'package', 'psys' -> 'psys'."""
    kind, _, socket = zone_name.rpartition('-')
    return kind if socket.isdigit() and kind else zone_name


def additive_total(kind_totals):
    return sum(kind_totals.get(kind, 0) for kind in ADDITIVE_KINDS)


def by_kind(per_zone):
    """{kind: µJ} summed over the zones of each kind, in one pass."""
    totals = {}
    for zone, value in per_zone.items():
        kind = zone_kind(zone)
        totals[kind] = totals.get(kind, 0) + value
    return totals


@dataclasses.dataclass
class InstanceRecord:
    identity: inventory_base.InstanceIdentity
    # Per zone: everything attributed (idle part included), and the idle
    # part alone; dynamic = energy - idle.
    energy_uj: dict[str, int] = dataclasses.field(default_factory=dict)
    first_seen: float = 0.0
    last_seen: float = 0.0     # wall clock, for people; never compared
    power_w: float = 0.0
    state: str = STATE_RUNNING
    idle_uj: dict[str, int] = dataclasses.field(default_factory=dict)
    placement: str = ''
    # Seconds (monotonic, summed tick by tick) the hypervisor has not
    # defined it: what [agent] retention is compared with. A wall-clock
    # "last seen" would let an NTP step delete live counters.
    absent_s: float = 0.0
    # Energy carried in from other hosts (handoff.py), per kind: what is
    # published is energy_uj by kind plus this. Never part of this host's
    # conservation, which is energy_uj's alone.
    carried_uj: dict[str, int] = dataclasses.field(default_factory=dict)
    carried_idle_uj: dict[str, int] = dataclasses.field(default_factory=dict)
    start_token: str = ''      # the last start applied
    # While the instance leaves this host: the published values, frozen.
    held_uj: dict[str, int] | None = None
    held_idle_uj: dict[str, int] | None = None
    held_token: str = ''
    # Carbon ([accounting], accounting/carbon.py): this host's own in
    # carbon units (µJ x PUE x intensity, exact) and, while held, the
    # frozen published value in µg. Not carried to other hosts: Nova
    # keeps the handoff document in a 255-character system metadata
    # value (doc/carbon.md, "Live and cold migration").
    carbon_units: int = 0
    held_carbon_ug: int | None = None
    # Bumped on every change; not persisted. The report reuses the totals
    # of records that did not change (report.ReportBuilder).
    version: int = dataclasses.field(default=0, compare=False)

    @property
    def running(self):
        return self.state == STATE_RUNNING

    def kind_totals(self):
        return by_kind(self.energy_uj)

    @property
    def total_uj(self):
        return additive_total(self.kind_totals())

    def idle_kind_totals(self):
        return by_kind(self.idle_uj)

    def published_kind_totals(self):
        """{kind: µJ} as published: this host's energy plus what was
        carried in, no more than the frozen values while held."""
        return _published(self.kind_totals(), self.carried_uj,
                          self.held_uj)

    def published_idle_kind_totals(self):
        """The idle part of published_kind_totals, the same way."""
        return _published(self.idle_kind_totals(), self.carried_idle_uj,
                          self.held_idle_uj)

    @property
    def carbon_ug(self):
        """This host's own carbon, whole µg CO2e."""
        return carbon_mod.ug(self.carbon_units)

    def published_carbon_ug(self):
        """µg CO2e as published: this host's, no more than the frozen
        value while held."""
        value = self.carbon_ug
        if self.held_carbon_ug is not None:
            value = min(value, self.held_carbon_ug)
        return value

    def apply_start(self, token, energy_uj, idle_uj=None):
        """Publish at least ``energy_uj`` and its idle part ``idle_uj``
        ({kind: µJ}, carried from another host) from now on; once per
        token. True if applied."""
        if token == self.start_token:
            return False
        _carry(self.carried_uj, energy_uj, self.kind_totals())
        _carry(self.carried_idle_uj, idle_uj or {},
               self.idle_kind_totals())
        self.start_token = token
        self.version += 1
        return True

    def hold(self, token):
        """Freeze the published values (once per token); them, as
        ({kind: µJ}, {kind: idle µJ})."""
        if token != self.held_token or self.held_uj is None:
            self.held_uj = _additive(self.published_kind_totals())
            self.held_idle_uj = _additive(self.published_idle_kind_totals())
            self.held_carbon_ug = self.published_carbon_ug()
            self.held_token = token
            self.version += 1
        return dict(self.held_uj), dict(self.held_idle_uj or {})

    def release(self):
        """Publish again what grows. Only for an instance still defined
        here: one that left keeps its frozen values, or this host would
        publish the energy of the migration window that the destination
        did not carry."""
        if self.held_uj is None or self.state == STATE_UNDEFINED:
            return False
        self.held_uj, self.held_idle_uj, self.held_token = None, None, ''
        self.held_carbon_ug = None
        self.version += 1
        return True


    def reset_counters(self):
        self.energy_uj, self.idle_uj, self.power_w = {}, {}, 0.0
        self.carbon_units = 0
        self.version += 1


def _published(kinds, carried, held):
    for kind, uj in carried.items():
        kinds[kind] = kinds.get(kind, 0) + uj
    if held is not None:
        kinds = {kind: min(uj, held.get(kind, uj))
                 for kind, uj in kinds.items()}
    return kinds


def _carry(carried, start, local):
    """carried[kind] so that local + carried >= start, never smaller."""
    for kind, uj in start.items():
        if kind in ADDITIVE_KINDS:
            carried[kind] = max(carried.get(kind, 0), uj - local.get(kind, 0))


def _additive(kinds):
    return {kind: uj for kind, uj in kinds.items() if kind in ADDITIVE_KINDS}


@dataclasses.dataclass
class ZoneRecord:
    name: str
    kind: str
    socket: int
    measured_uj: int = 0
    residual_uj: int = 0
    unallocated_idle_uj: int = 0
    power_w: float = 0.0
    # Long-run average power: how many wraps a long pause hid. The plain
    # mean over observed_s seconds until that reaches the 15-minute time
    # constant, then an exponential average.
    avg_power_w: float = 0.0
    observed_s: float = 0.0
    idle_estimate_state: str = ''
    idle_estimate_w: float = 0.0
    scope: str = ''        # split by its socket's CPU time, or host-wide
    # Carbon of measured_uj in carbon units (accounting/carbon.py), and
    # the energy measured while carbon was counted but no intensity was
    # known (not in carbon_units).
    carbon_units: int = 0
    carbon_unknown_uj: int = 0

    def reset_counters(self):
        self.measured_uj = self.residual_uj = self.unallocated_idle_uj = 0
        self.carbon_units = self.carbon_unknown_uj = 0
        self.power_w = self.avg_power_w = self.observed_s = 0.0


# Time constant of a zone's long-run average power (avg_power_w).
AVERAGE_WINDOW_S = 900.0


class Ledger:

    def __init__(self):
        self.instances = {}
        self.zones = {}
        # Counters of one energy source: simulated and rapl never add up
        # in the same counters. A change of source starts a new epoch.
        self.epoch = 1
        self.epoch_started = None
        self.source = None
        self.previous_epochs = []
        self.attribution_state = {}

    def new_epoch(self, source, now):
        """Close the current epoch (its totals kept in previous_epochs)
        and start counting from zero for ``source``."""
        if self.source is not None:
            self.previous_epochs.append({
                'epoch': self.epoch, 'source': self.source,
                'started': self.epoch_started, 'ended': now,
                'measured_uj': {z.name: z.measured_uj
                                for z in self.zones.values()}})
            self.epoch += 1
        self.source, self.epoch_started = source, now
        for record in self.instances.values():
            record.reset_counters()
        for zone in self.zones.values():
            zone.reset_counters()
        self.attribution_state = {}

    def add_tick(self, splits, zones, present, interval_s, now,
                 placements=None, after_presence=None, carbon=False,
                 carbon_factor=None):
        """Add one tick's ZoneSplits. ``zones``: every zone read this tick
        (anything with name, kind and socket, e.g. ZoneReading);
        ``present``: uuid -> (identity, state) of every instance the
        hypervisor defines now, or None when the inventory could not say
        (then nobody's state changes); ``placements``: uuid -> how its
        CPU time was placed on sockets; ``after_presence``: called with
        the ledger once the instances are known, before this tick's
        energy is added (counters carried in start from there);
        ``carbon``: whether carbon is counted, ``carbon_factor``: carbon
        units per µJ this tick (accounting/carbon.py), None when the
        intensity is unknown (the energy is then counted in the zones'
        carbon_unknown_uj)."""
        placements = placements or {}
        for record in self.instances.values():
            if record.power_w:
                record.power_w = 0.0
                record.version += 1
        if present is not None:
            self._update_presence(present, now, placements)
        if after_presence is not None:
            after_presence(self)
        for zone in zones:
            self.zones.setdefault(zone.name, ZoneRecord(
                zone.name, zone.kind, zone.socket))
        for split in splits:
            self._add_split(split, interval_s)
            if carbon:
                self._add_carbon(split, carbon_factor)

    def _update_presence(self, present, now, placements):
        for uuid, (identity, state) in present.items():
            record = self.instances.get(uuid)
            if record is None:
                record = self.instances[uuid] = InstanceRecord(
                    identity, first_seen=now)
            record.identity, record.last_seen = identity, now
            record.state, record.absent_s = state, 0.0
            record.placement = placements.get(uuid, record.placement)
            record.version += 1
        for uuid, record in self.instances.items():
            if uuid not in present and record.state != STATE_UNDEFINED:
                record.state = STATE_UNDEFINED
                record.version += 1

    def _add_split(self, split, interval_s):
        zone = self.zones[split.zone]
        zone.measured_uj += split.delta_uj
        zone.residual_uj += split.host_residual_uj
        zone.unallocated_idle_uj += split.unallocated_idle_uj
        zone.power_w = split.delta_uj / interval_s / 1e6 if interval_s else 0
        if interval_s:
            zone.observed_s += interval_s
            weight = max(1 - math.exp(-interval_s / AVERAGE_WINDOW_S),
                         interval_s / zone.observed_s)
            zone.avg_power_w += (zone.power_w - zone.avg_power_w) * weight
        if split.idle_estimate is not None:
            zone.idle_estimate_state = split.idle_estimate.state
            zone.idle_estimate_w = split.idle_estimate.watts
        zone.scope = split.scope
        additive = zone.kind in ADDITIVE_KINDS
        for uuid, uj in split.instances.items():
            record = self.instances[uuid]
            record.energy_uj[split.zone] = \
                record.energy_uj.get(split.zone, 0) + uj
            record.version += 1
            if additive and interval_s:
                record.power_w += uj / interval_s / 1e6
        for uuid, uj in split.idle_instances.items():
            record = self.instances[uuid]
            record.idle_uj[split.zone] = record.idle_uj.get(split.zone, 0) + uj

    def _add_carbon(self, split, factor):
        zone = self.zones[split.zone]
        if factor is None:
            zone.carbon_unknown_uj += split.delta_uj
            return
        zone.carbon_units += split.delta_uj * factor
        if zone.kind in ADDITIVE_KINDS:
            for uuid, uj in split.instances.items():
                self.instances[uuid].carbon_units += uj * factor

    def expire(self, elapsed_s, retention):
        """Count ``elapsed_s`` (monotonic seconds since the last tick) of
        absence for every undefined instance and drop those absent for
        more than ``retention`` seconds; their UUIDs."""
        gone = []
        for uuid, record in self.instances.items():
            if record.state == STATE_UNDEFINED:
                record.absent_s += elapsed_s
                if record.absent_s > retention:
                    gone.append(uuid)
        for uuid in gone:
            del self.instances[uuid]
        return gone

    def has_kind(self, kind):
        return any(zone.kind == kind for zone in self.zones.values())

    def _header(self):
        """to_dict() but the instances (which come last)."""
        return {
            'format': FORMAT, 'version': VERSION,
            'epoch': self.epoch, 'epoch_started': self.epoch_started,
            'source': self.source, 'previous_epochs': self.previous_epochs,
            'attribution_state': self.attribution_state,
            'zones': [dataclasses.asdict(z) for z in self.zones.values()],
        }

    @staticmethod
    def _instance_dict(r):
        # Built by hand: dataclasses.asdict deep-copies every record and
        # dominated the tick at 1000 instances (doc/performance.md).
        return {'identity': r.identity.as_dict(),
                'energy_uj': r.energy_uj, 'first_seen': r.first_seen,
                'last_seen': r.last_seen, 'power_w': r.power_w,
                'state': r.state, 'absent_s': r.absent_s,
                'idle_uj': r.idle_uj, 'placement': r.placement,
                'carried_uj': r.carried_uj,
                'carried_idle_uj': r.carried_idle_uj,
                'start_token': r.start_token, 'held_uj': r.held_uj,
                'held_idle_uj': r.held_idle_uj, 'held_token': r.held_token,
                'carbon_units': r.carbon_units,
                'held_carbon_ug': r.held_carbon_ug}

    def to_dict(self):
        doc = self._header()
        doc['instances'] = [self._instance_dict(r)
                            for r in self.instances.values()]
        return doc

    def dumps(self):
        """What save() writes: json.dumps(to_dict()) in compact form, as
        bytes, encoded a batch of instances at a time (jsonutil)."""
        return jsonutil.dumps_with_list(
            self._header(), 'instances',
            map(self._instance_dict, self.instances.values()))

    @classmethod
    def from_dict(cls, doc):
        if not isinstance(doc, dict) or doc.get('format') != FORMAT or \
                doc.get('version') != VERSION:
            raise LedgerError('not a version %d ledger' % VERSION)
        ledger = cls()
        # Ledgers of the first release lack these: their source is
        # unknown, and is taken from the first reading.
        ledger.epoch = int(doc.get('epoch', 1))
        ledger.epoch_started = doc.get('epoch_started')
        ledger.source = doc.get('source')
        ledger.previous_epochs = list(doc.get('previous_epochs', []))
        ledger.attribution_state = dict(doc.get('attribution_state', {}))
        for zone in doc['zones']:
            ledger.zones[zone['name']] = ZoneRecord(**zone)
        for item in doc['instances']:
            identity = inventory_base.InstanceIdentity(**item.pop('identity'))
            # Ledgers before the lifecycle states had only "running";
            # the first tick's inventory tells the state anyway.
            running = item.pop('running', None)
            item.setdefault('state', STATE_RUNNING if running is not False
                            else STATE_UNDEFINED)
            if item['state'] not in STATES:
                raise LedgerError('instance %s has unknown state %r'
                                  % (identity.uuid, item['state']))
            ledger.instances[identity.uuid] = InstanceRecord(identity,
                                                             **item)
        return ledger

    def save(self, path):
        fileutil.replace_file(path, self.dumps(), mode=0o600, fsync=True)

    @classmethod
    def load(cls, path):
        """The saved ledger, a new one if there is none; LedgerError if the
        file exists but is unusable (never silently reset counters)."""
        try:
            with open(path, 'rb') as f:
                doc = json.loads(f.read())
            return cls.from_dict(doc)
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError, KeyError, TypeError,
                AttributeError) as exc:
            raise LedgerError(
                'ledger %s is unusable (%s). Counters are not reset '
                'silently: restore it, or move it aside to start every '
                'counter from zero.' % (path, exc))
