"""The only code that runs privileged, behind oslo.privsep.

``sys_admin`` mounts the share tmpfs and its read-only view, makes
instance share directories for nova-compute (which runs unprivileged),
and reads root-only RAPL counters (CVE-2020-8694).

Its entry points take no path and no size from their caller
(doc/security.md, "Privileged entry points"): the daemon reads them from
its own configuration, the files it was started with:

- the agent's daemon is forked from the agent (``start_if_root``) and
  keeps the agent's ``cfg.CONF``: ``[share]`` and ``[energy]``;
- nova-compute's is ``privsep-helper --config-file <nova's files>``: no
  ``[share]`` group is registered there, so it registers and reads Nova's
  ``[scaphandre]`` (the same options, the same defaults), and ``[energy]``
  at its defaults.

A caller gives at most an instance UUID (in full, canonical form) or a
RAPL zone name (``intel-rapl:N`` or ``intel-rapl:N:M``); everything else
is refused before anything is opened.
"""

import os
import re

from oslo_config import cfg
from oslo_privsep import capabilities
from oslo_privsep import priv_context

CFG_SECTION = 'scaph_openstack_privsep'

sys_admin = priv_context.PrivContext(
    'scaph_openstack',
    cfg_section=CFG_SECTION,
    pypath=__name__ + '.sys_admin',
    capabilities=[capabilities.CAP_SYS_ADMIN,
                  capabilities.CAP_DAC_OVERRIDE,
                  capabilities.CAP_DAC_READ_SEARCH,
                  capabilities.CAP_FOWNER,
                  capabilities.CAP_CHOWN],
)

# Read by the privileged side only, from its own configuration files (never
# from a caller). Not in the sample configurations on purpose: only test
# suites, whose fixture trees are plain directories, turn them off.
PRIVSEP_OPTS = [
    cfg.BoolOpt(
        'require_sysfs', default=True,
        help='Tests only. Read energy_uj only from sysfs (the zone '
             'directory and the file checked with fstatfs). Never turn it '
             'off on a host.'),
    cfg.BoolOpt(
        'require_tmpfs', default=True,
        help='Tests only. Write instance shares only into a tmpfs mounted '
             'at work_dir (fstatfs, and another device than its parent '
             'directory). Never turn it off on a host.'),
]
cfg.CONF.register_opts(PRIVSEP_OPTS, group=CFG_SECTION)

# Nova and libvirt write instance and domain UUIDs in this form.
UUID_RE = re.compile(
    r'[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}')
# tmpfs sizes: bytes, k/m/g, or a percentage of RAM; never 0 (unlimited).
_CONTROL = re.compile(r'[\x00-\x1f\x7f]')
SIZE_RE = re.compile(r'[1-9][0-9]{0,15}[kKmMgG]?|(?:[1-9][0-9]?|100)%')


class Refused(ValueError):
    """A privileged entry point refused its argument or its configuration;
    nothing was touched."""


def start_if_root():
    """A root process (the agent's systemd unit, an operator's command)
    forks the privileged daemon instead of going through sudo/rootwrap,
    which it does not need. Unprivileged callers (nova-compute) keep the
    default: privsep-helper through their root helper.

    The daemon keeps the configuration loaded at this moment: load it
    first."""
    if os.geteuid() == 0 and not sys_admin.channel:
        sys_admin.start(priv_context.Method.FORK)


# -- what callers may give ---------------------------------------------------

def check_proxmox_key(key):
    """A Proxmox VM's share key as scaph_openstack.proxmox.share_key makes
    it: ``proxmox-<VMID>-<uuid>``, lower case."""
    from scaph_openstack import proxmox
    if not (proxmox.is_share_key(key) and key == key.lower()):
        raise Refused('%r is not a Proxmox VM share key '
                      '(proxmox-<VMID>-<uuid>)' % (key,))
    return key


def check_share_name(name):
    """An instance UUID, or a Proxmox VM's key: the names a share
    directory may have."""
    try:
        return check_proxmox_key(name)
    except Refused:
        return check_uuid(name)


def check_uuid(uuid):
    if not isinstance(uuid, str) or not UUID_RE.fullmatch(uuid):
        raise Refused('%r is not an instance UUID (8-4-4-4-12 lowercase '
                      'hexadecimal)' % (uuid,))
    return uuid


# -- what the configuration may say ------------------------------------------

def check_path(path, name):
    """An absolute, normalised path other than /: no '.', '..', '//' or
    trailing '/' to compare, strip or resolve."""
    if not isinstance(path, str) or not path.startswith('/') or \
            path == '/' or '//' in path or _CONTROL.search(path) or \
            os.path.normpath(path) != path:
        raise Refused('%s must be an absolute, normalised path (no ".", '
                      '"..", "//", trailing "/" or control character), not '
                      '%r' % (name, path))
    return path


def check_size(size, name):
    if not isinstance(size, str) or not SIZE_RE.fullmatch(size):
        raise Refused('%s must be a tmpfs size (digits with an optional '
                      'k, m or g, or 1%% to 100%%), not %r' % (name, size))
    return size


def _inside(path, other):
    return path == other or path.startswith(other + '/')


class ShareSettings:
    """work_dir, export_dir, tmpfs_size and manage_mounts of one group.
    The paths are checked here; what only mounting uses (the size, the
    two trees apart) by ``check_mounts``."""

    def __init__(self, group, work_dir, export_dir, tmpfs_size,
                 manage_mounts):
        self.group = group
        self.work_dir = check_path(work_dir, '[%s] work_dir' % group)
        self.export_dir = check_path(export_dir, '[%s] export_dir' % group)
        self.tmpfs_size = tmpfs_size
        self.manage_mounts = manage_mounts

    def check_mounts(self):
        if _inside(self.work_dir, self.export_dir) or \
                _inside(self.export_dir, self.work_dir):
            raise Refused('[%s] work_dir (%s) and export_dir (%s) must be '
                          'apart, neither inside the other'
                          % (self.group, self.work_dir, self.export_dir))
        check_size(self.tmpfs_size, '[%s] tmpfs_size' % self.group)
        return self


def _files_have(conf, section):
    try:
        return section in conf.list_all_sections()
    except Exception:           # not parsed (tests' ConfigOpts)
        return False


def share_settings(conf=None):
    """The daemon's own share options: the agent's ``[share]`` where the
    agent (or its CLI) registered it, or where its files have a
    ``[share]`` section and no ``[scaphandre]`` one (the CLI's daemon
    through sudo privsep-helper); else Nova's ``[scaphandre]``
    (privsep-helper started by nova-compute with nova's files)."""
    conf = cfg.CONF if conf is None else conf
    if 'share' not in conf and _files_have(conf, 'share') and \
            not _files_have(conf, 'scaphandre'):
        from scaph_openstack.conf import share as share_conf
        share_conf.register_opts(conf)
    if 'share' in conf:
        group = 'share'
    else:
        from scaph_openstack.conf import nova as nova_conf
        nova_conf.register_opts(conf)
        group = 'scaphandre'
    opts = conf[group]
    return ShareSettings(group, opts.work_dir, opts.export_dir,
                         opts.tmpfs_size, opts.manage_mounts)


def powercap_path(conf=None):
    """The daemon's own ``[energy] powercap_path``."""
    conf = cfg.CONF if conf is None else conf
    if 'energy' not in conf:
        from scaph_openstack.conf import energy as energy_conf
        energy_conf.register_opts(conf)
    return check_path(conf.energy.powercap_path, '[energy] powercap_path')


def _privsep_opt(name, conf):
    conf = cfg.CONF if conf is None else conf
    conf.register_opts(PRIVSEP_OPTS, group=CFG_SECTION)   # idempotent
    return conf[CFG_SECTION][name]


def require_sysfs(conf=None):
    """The daemon's own ``[scaph_openstack_privsep] require_sysfs``."""
    return _privsep_opt('require_sysfs', conf)


def require_tmpfs(conf=None):
    """The daemon's own ``[scaph_openstack_privsep] require_tmpfs``."""
    return _privsep_opt('require_tmpfs', conf)
