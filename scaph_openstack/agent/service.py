"""scaph-openstack-agent: the oslo.service tick loop and its command line.

Runs on oslo.service's threading backend (eventlet is deprecated).
"""

import os
import socket
import sys
import threading

from oslo_config import cfg
from oslo_log import log as logging
from oslo_service import backend

backend.init_backend(backend.BackendType.THREADING)

from oslo_service import loopingcall  # noqa: E402
from oslo_service import service  # noqa: E402

from scaph_openstack.agent import plugins  # noqa: E402
from scaph_openstack.agent import tick  # noqa: E402
from scaph_openstack import conf as scaph_conf  # noqa: E402
from scaph_openstack.energy import base as energy_base  # noqa: E402
from scaph_openstack import fileutil  # noqa: E402
from scaph_openstack import ledger  # noqa: E402
from scaph_openstack.inventory import topology  # noqa: E402
from scaph_openstack import privsep  # noqa: E402

LOG = logging.getLogger(__name__)
LEDGER_FILE = 'ledger.json'


def ledger_path(conf):
    return os.path.join(conf.agent.state_dir, LEDGER_FILE)


def remove_stale_temporaries(conf):
    """A kill -9 between write and rename leaves a temporary file, in a
    guest's share too: clear those of dead writers before the first tick."""
    places = ((conf.agent.state_dir, False),
              (os.path.dirname(conf.snapshot.path), False),
              (conf.share.work_dir, True))
    for directory, recursive in places:
        if os.path.isdir(directory):
            removed = fileutil.remove_stale_temporaries(directory, recursive)
            if removed:
                LOG.info('Removed %d temporary files a previous agent left '
                         'in %s', removed, directory)


def build_ticker(conf):
    """The Ticker with every plugin loaded; raises on unusable config."""
    publishers = plugins.publishers(conf)
    for publisher in publishers:
        publisher.start()
    return tick.Ticker(
        energy=plugins.energy_source(conf),
        inventory=plugins.load(plugins.INVENTORY, conf.agent.inventory,
                               conf),
        attribution=plugins.load(plugins.ATTRIBUTION,
                                 conf.agent.attribution, conf),
        ledger=ledger.Ledger.load(ledger_path(conf)),
        publishers=publishers,
        ledger_path=ledger_path(conf),
        host=conf.agent.host or socket.gethostname(),
        configured_interval_s=conf.agent.interval,
        stale_after_s=conf.agent.interval * conf.snapshot.stale_after,
        retention_s=conf.agent.retention,
        proc_stat_path=conf.agent.proc_stat_path,
        topology=topology.read_topology(conf.agent.cpu_topology_path),
        max_zone_power_w=conf.energy.max_zone_power)


class AgentService(service.Service):

    def __init__(self, conf):
        super().__init__()
        self.conf = conf
        self.ticker = None
        self.timer = None
        self.sampler = None
        self._sampler_stop = threading.Event()

    def start(self):
        super().start()
        privsep.start_if_root()
        self.ticker = build_ticker(self.conf)
        # After the publishers started: the share tmpfs is mounted now.
        remove_stale_temporaries(self.conf)
        LOG.info('Agent ticking every %.1fs: energy=%s inventory=%s '
                 'publishers=%s', self.conf.agent.interval,
                 self.ticker.energy.name, self.ticker.inventory.name,
                 ','.join(p.name for p in self.ticker.publishers))
        self.timer = loopingcall.FixedIntervalLoopingCall(self._tick)
        self.timer.start(interval=self.conf.agent.interval,
                         initial_delay=0, stop_on_exception=False)
        self.sampler = threading.Thread(target=self._sample,
                                        name='energy-sampler', daemon=True)
        self.sampler.start()

    def _sample(self):
        period = self.conf.energy.sample_interval or self.conf.agent.interval
        while not self._sampler_stop.wait(period):
            self.ticker.sample_if_due(period)

    def _tick(self):
        try:
            self.ticker.tick()
        except Exception:  # a tick may fail; the agent must not
            LOG.exception('Tick failed')

    def stop(self, graceful=False):
        self._sampler_stop.set()
        if self.timer is not None:
            self.timer.stop()
            self.timer.wait()   # the tick in flight finishes its writes
        if self.ticker is not None:
            for publisher in self.ticker.publishers:
                publisher.stop()
            self.ticker.inventory.close()
        super().stop(graceful)


def prepare(argv, conf=scaph_conf.CONF):
    scaph_conf.register_opts(conf)
    logging.register_options(conf)
    conf(argv, project='scaph-openstack')
    logging.setup(conf, 'scaph-openstack')
    return conf


def main(argv=None):
    try:
        conf = prepare(sys.argv[1:] if argv is None else argv)
    except (cfg.Error, OSError) as exc:
        sys.stderr.write('scaph-openstack-agent: unusable configuration: '
                         '%s\n' % exc)
        return 2
    try:
        # Checked before the service starts: a host without usable RAPL
        # must not become a worker respawned forever.
        if conf.energy.source == energy_base.SOURCE_RAPL:
            plugins.energy_source(conf)
    except (energy_base.EnergySourceError, plugins.PluginError) as exc:
        sys.stderr.write('scaph-openstack-agent: no usable energy source: '
                         '%s. On a host without RAPL, set [energy] source '
                         '= auto (or simulated) to run on the documented '
                         'model.\n' % exc)
        return 2
    launcher = service.ServiceLauncher(conf, restart_method='mutate')
    launcher.launch_service(AgentService(conf))
    return launcher.wait()


if __name__ == '__main__':
    sys.exit(main())
