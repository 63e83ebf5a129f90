import socket
import urllib.request

from prometheus_client import parser

from scaph_openstack.publishers import prometheus
from tests.unit import test_share


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_metrics_endpoint_serves_the_ledger():
    port = free_port()
    publisher = prometheus.PrometheusPublisher('127.0.0.1', port)
    publisher.start()
    try:
        ledger = test_share.make_ledger(2_500_000, 500_000)
        record = ledger.instances[test_share.UUID]
        record.power_w = 1.5
        record.idle_uj = {'package-0': 500_000, 'dram-0': 250_000}
        ledger.zones['package-0'].idle_estimate_state = 'learned'
        ledger.zones['package-0'].idle_estimate_w = 17.25
        ledger.zones['package-0'].measured_uj = 9_000_000
        ledger.zones['package-0'].residual_uj = 1_000_000
        publisher.publish(test_share.make_report(ledger))
        with urllib.request.urlopen(
                'http://127.0.0.1:%d/metrics' % port, timeout=5) as resp:
            text = resp.read().decode()
    finally:
        publisher.stop()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in parser.text_string_to_metric_families(text)
               for s in family.samples}
    by_name = {}
    for (name, labels), value in samples.items():
        by_name.setdefault(name, []).append((dict(labels), value))
    [(labels, joules)] = by_name['scaph_instance_energy_joules_total']
    assert joules == 3.0
    assert labels['instance_uuid'] == test_share.UUID
    assert labels['source'] == 'simulated'
    [(_, watts)] = by_name['scaph_instance_power_watts']
    assert watts == 1.5
    [(_, dynamic)] = by_name['scaph_instance_dynamic_energy_joules_total']
    [(_, idle)] = by_name['scaph_instance_idle_energy_joules_total']
    assert (dynamic, idle) == (2.25, 0.75)
    [(labels, idle_w)] = by_name['scaph_host_zone_idle_power_watts']
    assert (labels['zone'], labels['state'], idle_w) == ('package-0',
                                                         'learned', 17.25)
    zones = {lab['zone']: v for lab, v in
             by_name['scaph_host_zone_energy_joules_total']}
    assert zones['package-0'] == 9.0
    parts = {(lab['zone'], lab['part']): v for lab, v in
             by_name['scaph_host_zone_unattributed_energy_joules_total']}
    assert parts[('package-0', 'residual')] == 1.0


def test_nothing_before_the_first_tick():
    collector = prometheus.ReportCollector()
    assert list(collector.collect()) == []


def scraped_totals(text):
    """{instance_uuid: J} of scaph_instance_energy_joules in a scrape."""
    return {s.labels['instance_uuid']: s.value
            for family in parser.text_string_to_metric_families(text)
            for s in family.samples
            if s.name == 'scaph_instance_energy_joules_total'}


def disk_totals(path):
    from scaph_openstack import ledger as ledger_mod
    return {uuid: record.total_uj / 1e6 for uuid, record
            in ledger_mod.Ledger.load(path).instances.items()}


def test_scrapes_under_churn_see_only_whole_published_reports(tmp_path):
    """The HTTP thread renders while ticks add and expire 100 instances
    each (GIL switches forced every 10 µs, so that a scrape overlaps the
    tick's changes): no scrape fails, and no scrape shows a value the
    ledger on disk does not hold. The collector of the first release
    rendered the live ledger: "dictionary changed size during iteration"
    in most scrapes here, and values not yet saved."""
    import sys
    import threading

    from tests.unit import test_tick

    host = test_tick.Host(tmp_path)
    port = free_port()
    publisher = prometheus.PrometheusPublisher('127.0.0.1', port)
    publisher.start()
    host.ticker.publishers = [publisher]
    errors, ahead, scrapes = [], [], []
    stop = threading.Event()

    def scrape():
        while not stop.is_set():
            try:
                with urllib.request.urlopen(
                        'http://127.0.0.1:%d/metrics' % port,
                        timeout=5) as resp:
                    shown = scraped_totals(resp.read().decode())
                on_disk = disk_totals(host.ledger_path)
            except Exception as exc:
                errors.append(exc)
                continue
            scrapes.append(len(shown))
            ahead.extend((uuid, joules, on_disk[uuid])
                         for uuid, joules in shown.items()
                         if uuid in on_disk and joules > on_disk[uuid])

    thread = threading.Thread(target=scrape)
    switch = sys.getswitchinterval()
    try:
        for n in range(400):
            host.inventory.set('i%d' % n, 0)
        host.advance(0, 0)
        sys.setswitchinterval(1e-5)
        thread.start()
        for step in range(60):
            # Retention (60 s) is shorter than a tick (70 s): the
            # ledger's dict changes size in every tick.
            for n in range(100):
                host.inventory.remove('i%d' % (step * 100 + n))
                host.inventory.set('i%d' % (400 + step * 100 + n), 0)
            for uuid in list(host.inventory.cpu):
                host.inventory.set(uuid, host.inventory.cpu[uuid]
                                   + test_tick.TICK_NS)
            host.advance(70, 10 ** 6 + step, busy_ns=test_tick.TICK_NS)
    finally:
        sys.setswitchinterval(switch)
        stop.set()
        thread.join()
        publisher.stop()
    assert not errors, errors[:3]
    assert not ahead, ahead[:3]
    assert len(scrapes) >= 5 and max(scrapes) >= 400
