"""Publisher ``prometheus``: /metrics over HTTP with prometheus_client.

A custom collector renders the latest frozen report at scrape time, so a
tick costs nothing here and instances that are gone vanish from the
output with their ledger entry. The HTTP thread reads only the report it
took (one attribute read): never the live ledger, never a value the disk
does not hold yet.
"""

from prometheus_client import core
from prometheus_client import exposition

from scaph_openstack.publishers import base

INSTANCE_LABELS = ('instance_uuid', 'name', 'display_name', 'project_id',
                   'project_name', 'user_id', 'user_name', 'source')


def _label_values(totals, source):
    i = totals.identity
    return [i.uuid, i.name, i.display_name or '', i.project_id or '',
            i.project_name or '', i.user_id or '', i.user_name or '',
            source]


class ReportCollector:

    def __init__(self):
        self.report = None

    def collect(self):
        report = self.report
        if report is None:
            return
        energy = core.CounterMetricFamily(
            'scaph_instance_energy_joules',
            'Energy attributed to the instance (package + dram)',
            labels=INSTANCE_LABELS)
        dynamic = core.CounterMetricFamily(
            'scaph_instance_dynamic_energy_joules',
            'The dynamic part of the instance energy (its CPU time share '
            'of power above idle)', labels=INSTANCE_LABELS)
        idle = core.CounterMetricFamily(
            'scaph_instance_idle_energy_joules',
            'The instance share of idle power, by [attribution] '
            'idle_policy (0 with none)', labels=INSTANCE_LABELS)
        power = core.GaugeMetricFamily(
            'scaph_instance_power_watts',
            'Average power attributed over the last interval',
            labels=INSTANCE_LABELS)
        for totals in report.instances.values():
            labels = _label_values(totals, report.source)
            energy.add_metric(labels, totals.total_uj / 1e6)
            dynamic.add_metric(labels, totals.dynamic_uj / 1e6)
            idle.add_metric(labels, totals.idle_total_uj / 1e6)
            power.add_metric(labels, totals.power_w)
        zone = core.CounterMetricFamily(
            'scaph_host_zone_energy_joules',
            'Energy measured (or simulated) in each host zone',
            labels=('zone', 'kind', 'socket', 'source'))
        unattributed = core.CounterMetricFamily(
            'scaph_host_zone_unattributed_energy_joules',
            'Zone energy not given to any instance',
            labels=('zone', 'part', 'source'))
        idle_power = core.GaugeMetricFamily(
            'scaph_host_zone_idle_power_watts',
            'Idle power of the zone: configured, learned, or a '
            'conservative estimate while calibrating',
            labels=('zone', 'state', 'source'))
        for z in report.zones:
            if z.idle_estimate_state:
                idle_power.add_metric([z.name, z.idle_estimate_state,
                                       report.source], z.idle_estimate_w)
            zone.add_metric([z.name, z.kind, str(z.socket), report.source],
                            z.measured_uj / 1e6)
            unattributed.add_metric([z.name, 'residual', report.source],
                                    z.residual_uj / 1e6)
            unattributed.add_metric([z.name, 'idle', report.source],
                                    z.unallocated_idle_uj / 1e6)
        yield from (energy, dynamic, idle, power, zone, unattributed,
                    idle_power)


class PrometheusPublisher(base.Publisher):

    name = 'prometheus'

    def __init__(self, address='127.0.0.1', port=9109, min_interval=0.0):
        self.address = address
        self.port = port
        self.min_interval = min_interval
        self.collector = ReportCollector()
        self.registry = core.CollectorRegistry()
        self.registry.register(self.collector)
        self._server = None

    def start(self):
        self._server, _thread = exposition.start_http_server(
            self.port, addr=self.address, registry=self.registry)

    def publish(self, report):
        # One reference swap: a scrape in flight keeps the report it took.
        self.collector.report = report

    def stop(self):
        if self._server is not None:
            self._server.shutdown()
            self._server = None


def from_conf(conf):
    return PrometheusPublisher(conf.prometheus.listen_address,
                               conf.prometheus.port,
                               conf.prometheus.min_interval)
