"""Builds the tick's parts from configuration through stevedore.

Each plugin module has a ``from_conf(conf)`` function next to its class:
constructors take plain values (easy to test), ``from_conf`` maps options.
"""

import inspect
import os

from oslo_config import cfg
from oslo_log import log as logging
from stevedore import driver
from stevedore import exception as stevedore_exc
from stevedore import extension

from scaph_openstack.energy import base as energy_base

LOG = logging.getLogger(__name__)

ENERGY = 'scaph_openstack.energy'
INVENTORY = 'scaph_openstack.inventory'
ATTRIBUTION = 'scaph_openstack.attribution'
PUBLISHERS = 'scaph_openstack.publishers'


# The option that names each namespace's plugin, for the error messages.
OPTIONS = {ENERGY: '[energy] source', INVENTORY: '[agent] inventory',
           ATTRIBUTION: '[agent] attribution',
           PUBLISHERS: '[agent] publishers'}
# The option group of a plugin whose name is not one (rapl, cputime).
GROUPS = {ENERGY: 'energy', ATTRIBUTION: 'attribution'}


class PluginError(Exception):
    """A plugin that cannot be found, imported or built from the options;
    the message names the option to fix."""


def names(namespace):
    """The installed plugins of ``namespace``."""
    return sorted(extension.ExtensionManager(namespace).names())


def _option_group(namespace, name, conf):
    return name if name in conf else GROUPS.get(namespace, name)


def _config_files(conf):
    try:
        files = list(conf.config_file or ())
    except (AttributeError, cfg.Error):
        files = []
    return ', '.join(files) or 'the configuration file'


def load(namespace, name, conf):
    option = OPTIONS.get(namespace, namespace)
    try:
        cls = driver.DriverManager(namespace, name,
                                   invoke_on_load=False).driver
    except stevedore_exc.NoMatches:
        raise PluginError('%s = %s: no such plugin; set it to one of: %s'
                          % (option, name, ', '.join(names(namespace))))
    except Exception as exc:  # an import error, a missing dependency
        raise PluginError('%s = %s: the plugin cannot be loaded (%s: %s); '
                          'install what it needs or choose another'
                          % (option, name, type(exc).__name__, exc))
    try:
        return inspect.getmodule(cls).from_conf(conf)
    except (ValueError, TypeError) as exc:
        raise PluginError('%s = %s: the plugin rejects its options (%s); '
                          'fix [%s] in %s'
                          % (option, name, exc,
                             _option_group(namespace, name, conf),
                             _config_files(conf)))


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
