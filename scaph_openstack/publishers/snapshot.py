"""Publisher ``snapshot``: the host-only JSON read by Ceilometer.

The writer of the document scaph_openstack/snapshot.py reads (schema in
doc/snapshot.md). It holds tenant names and ids: 0640, group-readable by
the reader's group ([snapshot] group, ceilometer's), never by others.
"""

import grp
import json
import operator

from scaph_openstack import fileutil
from scaph_openstack import jsonutil
from scaph_openstack.publishers import base
from scaph_openstack import snapshot

MODE = 0o640


class SnapshotGroupError(ValueError):
    pass


def _instance_doc(totals, carbon=False):
    doc = totals.identity.as_dict()
    energy, idle = totals.energy_uj, totals.idle_uj
    zones = sorted(energy)
    energy_uj = [energy[zone] for zone in zones]
    idle_uj = [idle.get(zone, 0) for zone in zones]
    # Item by item, in this order: the document's key order.
    doc['running'] = totals.running
    doc['state'] = totals.state
    doc['energy_uj'] = dict(zip(zones, energy_uj, strict=True))
    doc['dynamic_energy_uj'] = dict(zip(
        zones, map(operator.sub, energy_uj, idle_uj), strict=True))
    doc['idle_energy_uj'] = dict(zip(zones, idle_uj, strict=True))
    doc['package_uj'] = totals.package_uj
    doc['dram_uj'] = totals.dram_uj
    doc['total_uj'] = totals.total_uj
    doc['dynamic_uj'] = totals.dynamic_uj
    doc['idle_uj'] = totals.idle_total_uj
    doc['placement'] = totals.placement or None
    doc['power_w'] = round(totals.power_w, 6)
    doc['first_seen'] = totals.first_seen
    doc['last_seen'] = totals.last_seen
    if carbon:
        doc['carbon_ug'] = totals.carbon_ug
    return doc


def _carbon_instance_doc(totals):
    return _instance_doc(totals, carbon=True)


def _zone_doc(zone, source, carbon=False):
    doc = {
        'name': zone.name, 'kind': zone.kind, 'socket': zone.socket,
        'measured_uj': zone.measured_uj, 'residual_uj': zone.residual_uj,
        'unallocated_idle_uj': zone.unallocated_idle_uj,
        'power_w': round(zone.power_w, 6),
        'avg_power_w': round(zone.avg_power_w, 6),
        'observed_s': zone.observed_s,
        'idle_estimate': {'state': zone.idle_estimate_state or None,
                          'watts': round(zone.idle_estimate_w, 6)},
        'scope': zone.scope or None, 'source': source}
    if carbon:
        doc['carbon_ug'] = zone.carbon_ug
        doc['carbon_unknown_uj'] = zone.carbon_unknown_uj
    return doc


def _host_totals(zones, carbon=False):
    additive = [z for z in zones if z.additive]
    measured = sum(z.measured_uj for z in additive)
    residual = sum(z.residual_uj for z in additive)
    idle = sum(z.unallocated_idle_uj for z in additive)
    totals = {'energy_uj': measured,
              'attributed_uj': measured - residual - idle,
              'residual_uj': residual,
              'unallocated_idle_uj': idle,
              'power_w': round(sum(z.power_w for z in additive), 6)}
    if carbon:
        totals['carbon_ug'] = sum(z.carbon_ug for z in additive)
        totals['carbon_unknown_uj'] = sum(z.carbon_unknown_uj
                                          for z in additive)
    return totals


def _carbon_header(report):
    """The intensity in force and the PUE: present in every snapshot of
    an agent that knows [accounting], null intensity when unknown."""
    intensity = report.carbon_intensity
    known = intensity is not None and intensity.known
    return {
        'pue': report.pue,
        'carbon_intensity_g_per_kwh': (intensity.g_per_kwh if known
                                       else None),
        'carbon_intensity_source': (intensity.source if known
                                    else 'unknown'),
        'carbon_intensity_since': (intensity.since if known else None),
    }


def _header(report):
    """build() but the instances (which come last)."""
    return {
        'format': snapshot.FORMAT,
        'version': snapshot.VERSION,
        'host': report.host,
        'time': report.time,
        'interval_s': report.interval_s,
        'configured_interval_s': report.configured_interval_s,
        'stale_after_s': report.stale_after_s,
        'source': report.source,
        'model': report.model,
        'idle_policy': report.idle_policy,
        'epoch': report.epoch,
        'epoch_started': report.epoch_started,
        'inventory_ok': report.inventory_ok,
        **_carbon_header(report),
        'zones': [_zone_doc(z, report.source, report.carbon)
                  for z in report.zones],
        'host_totals': _host_totals(report.zones, report.carbon),
    }


def build(report):
    """The snapshot document for one report.Report."""
    doc = _header(report)
    doc['instances'] = list(map(_instance_function(report),
                                report.instances.values()))
    return doc


def _instance_function(report):
    return _carbon_instance_doc if report.carbon else _instance_doc


def dumps(report):
    """The bytes write(path, build(report)) writes, encoded a batch of
    instances at a time (jsonutil: a fraction of the peak memory)."""
    return jsonutil.dumps_with_list(
        _header(report), 'instances',
        map(_instance_function(report), report.instances.values()))


def write(path, document, mode=MODE, gid=None):
    data = json.dumps(document, separators=(',', ':')).encode()
    write_bytes(path, data, mode=mode, gid=gid)


def write_bytes(path, data, mode=MODE, gid=None):
    fileutil.replace_file(path, data, mode=mode, fsync=False, gid=gid)


def group_id(name):
    """The gid of ``name`` (None: the agent's own group)."""
    if not name:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise SnapshotGroupError(
            '[snapshot] group = %s: no such group on this host; set it to '
            'the group the Ceilometer agents run as (ceilometer), or leave '
            'it empty' % name)


class SnapshotPublisher(base.Publisher):

    name = 'snapshot'

    def __init__(self, path, min_interval=0.0, group=None):
        self.path = path
        self.min_interval = min_interval
        self.gid = group_id(group)

    def publish(self, report):
        write_bytes(self.path, dumps(report), gid=self.gid)


def from_conf(conf):
    return SnapshotPublisher(conf.snapshot.path, conf.snapshot.min_interval,
                             conf.snapshot.group)
