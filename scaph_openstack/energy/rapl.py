"""RAPL energy from the powercap sysfs tree (Intel and AMD)."""

import errno
import os
import re

from oslo_log import log as logging

from scaph_openstack.energy import base

LOG = logging.getLogger(__name__)

PACKAGE_RE = re.compile(r'^intel-rapl:(\d+)$')
SUBZONE_RE = re.compile(r'^intel-rapl:(\d+):(\d+)$')
PERMISSION_HINT = (
    'energy_uj is readable by root only since CVE-2020-8694: run the agent '
    'as root, keep [energy] use_privsep = true, or grant read access with a '
    'udev rule (see doc/install-openstack.md)')


class UnreadableCounter(base.EnergySourceError):
    """energy_uj exists but this process may not read it."""


def _read_text(path):
    with open(path, encoding='ascii', errors='replace') as f:
        return f.read()


def _parse_uj(text, path):
    value = text.strip()
    if not value.isdigit():
        raise ValueError('%s holds %r, not a non-negative integer'
                         % (path, value[:40]))
    return int(value)


def _zone_identity(dirname, zone_name):
    """(stable name, kind, socket) of one powercap directory."""
    name = zone_name.strip()
    match = PACKAGE_RE.match(dirname)
    if match:
        socket = int(match.group(1))
        if name == 'psys':
            return 'psys', 'psys', socket
        return 'package-%d' % socket, 'package', socket
    match = SUBZONE_RE.match(dirname)
    socket = int(match.group(1))
    kind = name or 'subzone-%s' % match.group(2)
    return '%s-%d' % (kind, socket), kind, socket


def discover_zone_dirs(powercap_path):
    """Zone directory names, packages before their subzones."""
    try:
        entries = os.listdir(powercap_path)
    except OSError as exc:
        raise base.EnergySourceError(
            'cannot list powercap tree %s: %s' % (powercap_path, exc))
    dirs = [e for e in entries if PACKAGE_RE.match(e) or SUBZONE_RE.match(e)]
    return sorted(dirs, key=lambda d: [int(p) for p in d.split(':')[1:]])


class RaplSource(base.EnergySource):
    """Reads every intel-rapl:N and intel-rapl:N:M zone.

    ``privileged_reader`` (path -> text) is used for energy_uj files this
    process may not open itself; it is the privsep entry point in the agent.
    """

    name = base.SOURCE_RAPL

    def __init__(self, powercap_path='/sys/class/powercap',
                 privileged_reader=None):
        self.powercap_path = powercap_path
        self.privileged_reader = privileged_reader
        self._identities = {}
        self._max_ranges = {}
        self._zone_dirs = discover_zone_dirs(powercap_path)
        if not self._zone_dirs:
            raise base.EnergySourceError(
                'no intel-rapl zone under %s (no RAPL on this host, or the '
                'intel_rapl_common/msr driver is not loaded)' % powercap_path)

    def _read_counter(self, path):
        try:
            return _read_text(path)
        except PermissionError:
            if self.privileged_reader is None:
                raise UnreadableCounter('%s is not readable: %s'
                                        % (path, PERMISSION_HINT))
            return self.privileged_reader(path)

    def _identity(self, dirname):
        if dirname not in self._identities:
            path = os.path.join(self.powercap_path, dirname, 'name')
            try:
                zone_name = _read_text(path)
            except OSError:
                zone_name = ''
            self._identities[dirname] = _zone_identity(dirname, zone_name)
        return self._identities[dirname]

    def _read_zone(self, dirname):
        zone_dir = os.path.join(self.powercap_path, dirname)
        name, kind, socket = self._identity(dirname)
        energy_path = os.path.join(zone_dir, 'energy_uj')
        energy = _parse_uj(self._read_counter(energy_path), energy_path)
        return base.ZoneReading(name, kind, socket, energy,
                                self._max_range(zone_dir, dirname))

    def _max_range(self, zone_dir, dirname):
        # Constant for a zone: read once, not every tick.
        if dirname not in self._max_ranges:
            path = os.path.join(zone_dir, 'max_energy_range_uj')
            self._max_ranges[dirname] = _parse_uj(_read_text(path), path)
        return self._max_ranges[dirname]

    def check_readable(self):
        """Raise UnreadableCounter naming the first file we cannot read."""
        for dirname in self._zone_dirs:
            self._read_counter(
                os.path.join(self.powercap_path, dirname, 'energy_uj'))

    def read(self):
        zones, errors = [], {}
        for dirname in self._zone_dirs:
            try:
                zones.append(self._read_zone(dirname))
            except UnreadableCounter:
                raise
            except (OSError, ValueError) as exc:
                if isinstance(exc, OSError) and exc.errno == errno.EACCES:
                    raise UnreadableCounter('%s: %s' % (exc, PERMISSION_HINT))
                errors[self._identity(dirname)[0]] = str(exc)
        if not zones:
            raise base.EnergySourceError(
                'no readable RAPL zone under %s: %s'
                % (self.powercap_path, '; '.join(errors.values())))
        return base.EnergyReading(self.name, tuple(zones), errors)


def from_conf(conf):
    reader = None
    if conf.energy.use_privsep:
        from scaph_openstack.privsep import rapl as privsep_rapl
        reader = privsep_rapl.read_energy_uj_file
    return RaplSource(conf.energy.powercap_path, privileged_reader=reader)
