"""Run the real ceilometer-polling agent against an agent's snapshot.

Shared by the Ceilometer functional tests and tools/demo, so that what the
demo shows is what the tests check.
"""

import os
import urllib.error
import urllib.request

from prometheus_client import parser as prom_parser
import yaml

from tests.functional.helpers import agent as agentlib
from tests.functional.helpers import require

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
POLLING_SNIPPET = os.path.join(ROOT, 'etc', 'ceilometer', 'polling.yaml')
METERS = ('energy.instance', 'energy.instance.dynamic',
          'energy.instance.idle', 'power.instance', 'energy.host.zone',
          'energy.host.unattributed', 'carbon.instance')
POLL_INTERVAL = 1
LOGGER = 'scaph_openstack.ceilometer'


def ceilometer_bin(name):
    path = agentlib.venv_bin(name)
    require(path is not None, '%s is not installed (pip install '
            'ceilometer)' % name)
    return path


def polling_yaml(tmp_path, sources=None):
    """The snippet we ship (or ``sources``), polled every second."""
    with open(POLLING_SNIPPET) as f:
        cfg = yaml.safe_load(f)
    if sources is not None:
        cfg['sources'] = sources
    for source in cfg['sources']:
        source['interval'] = POLL_INTERVAL
    path = os.path.join(str(tmp_path), 'polling.yaml')
    with open(path, 'w') as f:
        yaml.safe_dump(cfg, f)
    return path


class Polling(agentlib.ManagedProcess):
    """ceilometer-polling --polling-namespaces compute."""

    def __init__(self, tmp_path, snapshot_path, polling=None, default=None,
                 sources=None):
        self.log_file = os.path.join(str(tmp_path), 'polling.log')
        sections = {
            'DEFAULT': dict({'log_file': self.log_file}, **(default or {})),
            'polling': dict({'cfg_file': polling_yaml(tmp_path, sources)},
                            **(polling or {})),
            'scaphandre': {'snapshot_path': snapshot_path},
        }
        config = agentlib.write_config(
            os.path.join(str(tmp_path), 'ceilometer-polling.conf'), sections)
        super().__init__(
            [ceilometer_bin('ceilometer-polling'), '--config-file', config,
             '--polling-namespaces', 'compute'],
            os.path.join(str(tmp_path), 'polling.out'))

    def log_lines(self):
        try:
            with open(self.log_file, errors='replace') as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []

    def our_warnings(self, since=0):
        return [line for line in self.log_lines()[since:]
                if ' WARNING %s' % LOGGER in line]

    def tail(self, lines=40):
        return '\n'.join(self.log_lines()[-lines:]) + '\n' + super().tail()


class ExporterPolling(Polling):
    """ceilometer-polling showing what it polls in Prometheus format."""

    def __init__(self, tmp_path, snapshot_path, transport_url=None,
                 **kwargs):
        """``transport_url``: also send the samples as notifications
        there (for ceilometer-agent-notification); none by default."""
        self.port = agentlib.free_port()
        if transport_url:
            kwargs['default'] = dict(kwargs.get('default') or {},
                                     transport_url=transport_url)
        super().__init__(tmp_path, snapshot_path, polling={
            'enable_notifications': bool(transport_url),
            'enable_prometheus_exporter': True,
            'prometheus_listen_addresses': '127.0.0.1:%d' % self.port,
        }, **kwargs)

    def scrape(self):
        """[(metric name, labels, value)], [] while not listening."""
        self.check_alive()
        url = 'http://127.0.0.1:%d/metrics' % self.port
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                text = resp.read().decode()
        except (urllib.error.URLError, ConnectionError):
            return []
        return [(s.name, s.labels, s.value)
                for family in prom_parser.text_string_to_metric_families(
                    text)
                for s in family.samples]

    def series(self, meter, resource):
        """The value of ``meter`` for ``resource`` now, with its labels."""
        name = 'ceilometer_' + meter.replace('.', '_')
        for metric, labels, value in self.scrape():
            if metric == name and labels.get('resource') == resource:
                return labels, value
        return None

    def ours(self):
        names = {'ceilometer_' + m.replace('.', '_') for m in METERS}
        return [s for s in self.scrape() if s[0] in names]
