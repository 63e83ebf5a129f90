"""Builds the tick's parts from configuration through stevedore.

Each plugin module has a ``from_conf(conf)`` function next to its class:
constructors take plain values (easy to test), ``from_conf`` maps options.
"""

import inspect
import os

from oslo_log import log as logging
from stevedore import driver

from scaph_openstack.energy import base as energy_base

LOG = logging.getLogger(__name__)

ENERGY = 'scaph_openstack.energy'
INVENTORY = 'scaph_openstack.inventory'
ATTRIBUTION = 'scaph_openstack.attribution'
PUBLISHERS = 'scaph_openstack.publishers'


class PluginError(Exception):
    pass


def load(namespace, name, conf):
    try:
        cls = driver.DriverManager(namespace, name,
                                   invoke_on_load=False).driver
    except Exception as exc:
        raise PluginError('no plugin %r in %s: %s' % (name, namespace, exc))
    return inspect.getmodule(cls).from_conf(conf)


def energy_source(conf):
    """The configured source; ``auto`` falls back to simulated, loudly."""
    wanted = conf.energy.source
    if wanted != 'auto':
        return load(ENERGY, wanted, conf)
    try:
        source = load(ENERGY, energy_base.SOURCE_RAPL, conf)
        if not os.access(conf.energy.powercap_path, os.R_OK):
            raise energy_base.EnergySourceError('powercap tree unreadable')
        source.check_readable()
        return source
    except energy_base.EnergySourceError as exc:
        reason = str(exc)
    # Logged outside the except block so the log line carries no traceback.
    LOG.warning('No usable RAPL (%s): using SIMULATED energy. Every output '
                'says source=simulated; these are not measurements.', reason)
    return load(ENERGY, energy_base.SOURCE_SIMULATED, conf)


def publishers(conf):
    return [load(PUBLISHERS, name, conf) for name in conf.agent.publishers]
