"""Proxmox VE (no libvirt): how a VM's share reaches its guest.

Proxmox starts ``/usr/bin/kvm -id VMID ... -smbios type=1,uuid=U``, U
being the ``smbios1:`` uuid of the VM's configuration. The qemu inventory
keys such a VM as ``proxmox-<VMID>-<U>`` (scaph_openstack.inventory.qemu:
VMIDs are reused, U is generated anew when Proxmox creates or clones a
VM), so that is its share directory, under ``[share] export_dir``.

Two transports, one per Proxmox generation (doc/install-proxmox.md):

- ``virtiofs`` (Proxmox VE 8.4 and later): a cluster directory mapping
  (``/etc/pve/mapping/directory.cfg``: an id, and a path per node) named
  in the VM's ``virtiofsN: <id>`` option; qemu-server starts virtiofsd on
  the mapping's path and gives the device the mapping id as its tag
  (PVE/QemuServer/Virtiofs.pm). qemu-server passes no ``--readonly``: the
  guest cannot write because export_dir is a read-only bind mount.
- ``9p`` (before 8.4): an ``args:`` line with ``-fsdev local,readonly=on``
  and ``virtio-9p-pci``.

The mapping id is ``scaph-`` and the first 30 hexadecimal digits of U: a
virtio-fs tag has at most 36 bytes, mapping ids are cluster-wide, and a
guest can compute it from its own SMBIOS uuid (its
/sys/class/dmi/id/product_uuid), so the guest side finds the share without
being told the tag (etc/cloud-init/scaphandre-share.yaml).

A Proxmox hookscript (etc/proxmox/scaph-share-hook, ``proxmox-hook``)
creates the share directory in its ``pre-start`` phase, before QEMU and
virtiofsd need it, and refuses to start a VM whose configuration names the
share of another VM: a clone copies ``args:`` and ``virtiofsN:`` while it
gets a new uuid, so its guest would read the source VM's counters.

Values go into QEMU options (``,`` separates options: a literal comma is
written ``,,``) inside a line that Proxmox splits like a shell
(Text::ParseWords): whitespace, quotes, backslashes and control characters
would split or end it, and are refused.
"""

import dataclasses
import os
import re
import shlex

from scaph_openstack.share import layout

PVE_DIR = '/etc/pve'
PVE_CONFIG_DIR = os.path.join(PVE_DIR, 'qemu-server')
MAPPING_FILE = os.path.join('mapping', 'directory.cfg')
TRANSPORTS = ('virtiofs', '9p')
# struct virtio_fs_config's tag field; QEMU refuses a longer one.
VIRTIOFS_TAG_MAX = 36
MAPPING_PREFIX = 'scaph-'
# qemu-server's virtiofs0 .. virtiofs9 (Virtiofs.pm, $MAX_VIRTIOFS).
MAX_VIRTIOFS = 10
FSDEV_ID = 'fsdev-scaph'
DEVICE_ID = 'fs-scaph'
_VMID = re.compile(r'[0-9]{1,10}')
_UUID = re.compile(r'[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}')
_KEY = re.compile(r'proxmox-[0-9]{1,10}-(%s)' % _UUID.pattern)
_UNSAFE = re.compile(r'[\s\'"\\\x00-\x1f\x7f]')
# pve-configid (PVE::JSONSchema::pve_verify_configid)
_CONFIGID = re.compile(r'[a-zA-Z][a-zA-Z0-9_-]+')
NO_SMBIOS = ('VM %s has no smbios1 uuid in %s: without one the agent keys '
             'it per QEMU process and nothing can name its share. '
             'Give it one (qm set %s --smbios1 uuid=$(cat '
             '/proc/sys/kernel/random/uuid)), then run this again')


class ProxmoxError(ValueError):
    """A VM, its configuration or a mapping that cannot get a share."""


def _vmid(vmid):
    vmid = str(vmid)
    if not _VMID.fullmatch(vmid):
        raise ProxmoxError('a Proxmox VMID is a number, not %r' % (vmid,))
    return vmid


def share_key(vmid, smbios_uuid):
    """What the qemu inventory calls VM ``vmid`` with that smbios1 uuid."""
    if not isinstance(smbios_uuid, str) or not _UUID.fullmatch(smbios_uuid):
        raise ProxmoxError('not an SMBIOS uuid: %r' % (smbios_uuid,))
    return 'proxmox-%s-%s' % (_vmid(vmid), smbios_uuid.lower())


def is_share_key(key):
    return isinstance(key, str) and _KEY.fullmatch(key) is not None


def mapping_id(key):
    """The directory mapping id, and so the guest's virtiofs tag, of the
    share ``key``: ``scaph-`` + 30 hex digits of its uuid (module doc)."""
    match = _KEY.fullmatch(key)
    if not match:
        raise ProxmoxError('not a Proxmox share key: %r' % (key,))
    tag = MAPPING_PREFIX + match.group(1).replace('-', '')
    return tag[:VIRTIOFS_TAG_MAX]


def config_options(config_text):
    """{option: value} of the VM's current configuration: the lines before
    its first ``[section]`` (snapshots, pending changes)."""
    options = {}
    for line in config_text.splitlines():
        if line.startswith('['):
            break
        key, sep, value = line.partition(':')
        if sep and not line.startswith('#'):
            options[key.strip()] = value.strip()
    return options


def config_smbios_uuid(config_text):
    """The uuid of ``smbios1:`` in the VM's current configuration (not in
    its ``[snapshot]`` sections), or None."""
    for item in config_options(config_text).get('smbios1', '').split(','):
        name, sep, found = item.partition('=')
        if sep and name == 'uuid' and _UUID.fullmatch(found):
            return found.lower()
    return None


def config_path(vmid, pve_dir=None):
    return os.path.join(pve_dir or PVE_DIR, 'qemu-server',
                        '%s.conf' % _vmid(vmid))


def read_config(vmid, pve_dir=None, path=None):
    """(path, text) of VM ``vmid``'s configuration on this node, or of
    the file ``path`` when given."""
    path = path or config_path(vmid, pve_dir)
    try:
        with open(path) as f:
            return path, f.read()
    except OSError as exc:
        raise ProxmoxError('cannot read the configuration of VM %s: %s'
                           % (vmid, exc))


def key_of_config(vmid, path, text):
    uuid = config_smbios_uuid(text)
    if uuid is None:
        raise ProxmoxError(NO_SMBIOS % (vmid, path, vmid))
    return share_key(vmid, uuid)


def vm_share_key(vmid, config_dir=None):
    """VM ``vmid``'s share key, from ``<config_dir>/<vmid>.conf``
    (default: the node's VM configurations, PVE_CONFIG_DIR)."""
    vmid = _vmid(vmid)
    path, text = read_config(vmid, path=config_dir and os.path.join(
        config_dir, '%s.conf' % vmid))
    return key_of_config(vmid, path, text)


def parse_directory_mappings(text):
    """{mapping id: {node: path}} of mapping/directory.cfg: a section
    header is the id alone on a line, each ``map node=N,path=P`` line below
    it (indented) one node's directory (PVE::Mapping::Dir)."""
    mappings, current = {}, None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith('#'):
            continue
        if not line[0].isspace():
            current = mappings.setdefault(line.strip(), {})
            continue
        key, _, value = line.strip().partition(' ')
        if key != 'map' or current is None:
            continue
        entry = dict(item.partition('=')[::2] for item in value.split(','))
        if entry.get('node') and entry.get('path'):
            current[entry['node']] = entry['path']
    return mappings


def read_directory_mappings(pve_dir=None):
    path = os.path.join(pve_dir or PVE_DIR, MAPPING_FILE)
    try:
        with open(path) as f:
            return parse_directory_mappings(f.read())
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ProxmoxError('cannot read the directory mappings %s: %s'
                           % (path, exc))


def node_name(configured=None):
    """This node's name: Proxmox uses the host name up to its first dot
    (PVE::INotify::nodename)."""
    return configured or os.uname().nodename.split('.')[0]


def share_dir(export_dir, key):
    return '%s/%s' % (export_dir.rstrip('/'), layout.instance_dir_name(key))


def qemu_value(value, what):
    """``value`` as one QEMU option value in an ``args:`` line."""
    if not value or _UNSAFE.search(value):
        raise ProxmoxError('%s %r cannot go into an args: line (empty, or '
                           'whitespace, a quote, a backslash or a control '
                           'character)' % (what, value))
    return value.replace(',', ',,')


def args_options(path, tag=layout.DEFAULT_TAG):
    """The QEMU options of the read-only 9p export of ``path``."""
    return ['-fsdev', 'local,security_model=passthrough,readonly=on,'
                      'id=%s,path=%s' % (FSDEV_ID,
                                         qemu_value(path, 'export_dir')),
            '-device', 'virtio-9p-pci,id=%s,fsdev=%s,mount_tag=%s' % (
                DEVICE_ID, FSDEV_ID, qemu_value(tag, 'tag'))]


def args_line(vmid, export_dir, tag=layout.DEFAULT_TAG, config_dir=None,
              key=None):
    """The line for ``/etc/pve/qemu-server/<vmid>.conf``. ``key``: the
    VM's share key, read from its configuration when not given."""
    key = key or vm_share_key(vmid, config_dir)
    return 'args: ' + ' '.join(args_options(share_dir(export_dir, key), tag))


def _fsdev_paths(args_value):
    """path= of each -fsdev in an args: value, QEMU's ',,' unescaped."""
    try:
        words = shlex.split(args_value)
    except ValueError:
        return []
    paths = []
    for index, word in enumerate(words[:-1]):
        if word != '-fsdev':
            continue
        # ',,' is a literal comma: split on single commas only.
        for item in re.split(r'(?<!,),(?!,)', words[index + 1]):
            name, sep, value = item.partition('=')
            if sep and name == 'path':
                paths.append(value.replace(',,', ','))
    return paths


def _without_our_9p(args_value):
    """The words of an args: value, less the options args_options() adds."""
    words = shlex.split(args_value or '')
    kept, index = [], 0
    while index < len(words):
        pair = words[index:index + 2]
        if len(pair) == 2 and pair[0] in ('-fsdev', '-device') and (
                'id=%s,' % FSDEV_ID in pair[1] + ','
                or 'fsdev=%s' % FSDEV_ID in pair[1]):
            index += 2
            continue
        kept.append(words[index])
        index += 1
    return kept


def virtiofs_options(options):
    """{option name: mapping id} of the VM's virtiofsN options."""
    found = {}
    for slot in range(MAX_VIRTIOFS):
        value = options.get('virtiofs%d' % slot)
        if value:
            first = value.split(',')[0]
            found['virtiofs%d' % slot] = first.partition('=')[2] \
                if first.startswith('dirid=') else first
    return found


def _under(path, directory):
    path = os.path.normpath(path)
    return path.startswith(os.path.normpath(directory).rstrip('/') + '/')


def foreign_shares(options, key, export_dir, mappings, node):
    """Why VM options name a share that is not ``key``'s: a list of
    sentences, empty when none does (a clone keeps its source's lines)."""
    ours = share_dir(export_dir, key)
    problems = []
    for path in _fsdev_paths(options.get('args', '')):
        if _under(path, export_dir) and os.path.normpath(path) != ours:
            problems.append('its args: line exports %s, not this VM\'s share '
                            '%s' % (path, ours))
    for option, dirid in sorted(virtiofs_options(options).items()):
        path = mappings.get(dirid, {}).get(node)
        if path and _under(path, export_dir) and \
                os.path.normpath(path) != ours:
            problems.append('%s: %s names directory mapping %s, whose path '
                            'on node %s is %s, not this VM\'s share %s'
                            % (option, dirid, dirid, node, path, ours))
    return problems


@dataclasses.dataclass
class SharePlan:
    """What VM ``vmid`` needs for its share: ``commands`` (argv lists of
    qm/pvesh, empty when nothing is to change) and the guest's mount."""
    vmid: str
    key: str
    transport: str
    share_dir: str
    tag: str
    commands: list
    guest_mount: str


def _plan_9p(vmid, options, path, tag):
    words = _without_our_9p(options.get('args', '')) + \
        args_options(path, tag)
    value = ' '.join(shlex.quote(w) for w in words)
    if value == options.get('args'):
        return []
    return [['qm', 'set', vmid, '--args', value]]


def _plan_virtiofs(vmid, options, key, path, mappings, nodes):
    dirid = mapping_id(key)
    maps = ['node=%s,path=%s' % (node, path) for node in nodes]
    for value in (path,) + tuple(nodes):
        if re.search(r'[;,=()\s]', value):
            # PVE::Mapping::Dir refuses these in a path (property string).
            raise ProxmoxError('%r cannot go into a directory mapping '
                               '(";,=()" or whitespace)' % (value,))
    commands = []
    current = mappings.get(dirid)
    if current is None:
        commands.append(['pvesh', 'create', '/cluster/mapping/dir',
                         '--id', dirid, '--description',
                         'scaph-openstack energy share of VM %s' % vmid]
                        + [arg for m in maps for arg in ('--map', m)])
    elif any(current.get(node) != path for node in nodes):
        merged = dict(current, **{node: path for node in nodes})
        commands.append(['pvesh', 'set', '/cluster/mapping/dir/%s' % dirid]
                        + [arg for node in sorted(merged)
                           for arg in ('--map', 'node=%s,path=%s'
                                       % (node, merged[node]))])
    slots = virtiofs_options(options)
    if dirid not in slots.values():
        # A slot naming another share mapping (a clone's copy) is reused.
        stale = sorted(option for option, other in slots.items()
                       if other.startswith(MAPPING_PREFIX))
        free = ['virtiofs%d' % n for n in range(MAX_VIRTIOFS)
                if 'virtiofs%d' % n not in slots]
        if not stale + free:
            raise ProxmoxError('VM %s has no free virtiofsN option (0 to %d)'
                               % (vmid, MAX_VIRTIOFS - 1))
        commands.append(['qm', 'set', vmid, '--' + (stale + free)[0],
                         dirid])
    return dirid, commands


def plan(vmid, transport, export_dir, tag=layout.DEFAULT_TAG, pve_dir=None,
         node=None, nodes=(), hookscript=None):
    """The SharePlan of VM ``vmid`` (its configuration in ``pve_dir``):
    ``nodes`` the other cluster nodes its mapping covers (this one always),
    ``hookscript`` the volume id the VM must call before it starts."""
    if transport not in TRANSPORTS:
        raise ProxmoxError('transport is one of %s, not %r'
                           % (', '.join(TRANSPORTS), transport))
    vmid = _vmid(vmid)
    path_, text = read_config(vmid, pve_dir)
    options = config_options(text)
    key = key_of_config(vmid, path_, text)
    path = share_dir(export_dir, key)
    node = node_name(node)
    if transport == '9p':
        commands = _plan_9p(vmid, options, path, tag)
        guest_mount = guest_mount_command(tag)
    else:
        mappings = read_directory_mappings(pve_dir)
        covered = [node] + [n for n in nodes if n != node]
        tag, commands = _plan_virtiofs(vmid, options, key, path, mappings,
                                       covered)
        guest_mount = guest_mount_command(tag, fstype='virtiofs')
    current_hook = options.get('hookscript')
    if hookscript and current_hook != hookscript:
        if current_hook:
            raise ProxmoxError(
                'VM %s already has hookscript %s: a VM has one. Call '
                '"scaph-openstack proxmox-hook %s <phase>" from it for the '
                'pre-start phase, or replace it with %s'
                % (vmid, current_hook, vmid, hookscript))
        commands.append(['qm', 'set', vmid, '--hookscript', hookscript])
    return SharePlan(vmid, key, transport, path, tag, commands, guest_mount)


def guest_mount_command(tag=layout.DEFAULT_TAG,
                        mountpoint=layout.GUEST_MOUNTPOINT, fstype='9p'):
    mountpoint, tag = shlex.quote(mountpoint), shlex.quote(tag)
    options = 'ro,trans=virtio,version=9p2000.L' if fstype == '9p' else 'ro'
    return 'mkdir -p %s && mount -t %s -o %s %s %s' % (
        mountpoint, fstype, options, tag, mountpoint)
