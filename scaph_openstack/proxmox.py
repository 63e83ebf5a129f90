"""Proxmox VE (no libvirt): the ``args:`` line exporting a VM's share.

Proxmox starts ``/usr/bin/kvm -id VMID ... -smbios type=1,uuid=U``, U
being the ``smbios1:`` uuid of the VM's configuration. The qemu inventory
keys such a VM as ``proxmox-<VMID>-<U>`` (scaph_openstack.inventory.qemu:
VMIDs are reused, U is generated anew when Proxmox creates or clones a
VM), so that is its share directory, and the ``args:`` line is made from
the VM's configuration file. virtio-9p with ``readonly=on`` keeps the
guest from writing, on top of the read-only bind mount.

Values go into QEMU options (``,`` separates options: a literal comma is
written ``,,``) inside a line that Proxmox splits like a shell
(Text::ParseWords): whitespace, quotes, backslashes and control characters
would split or end it, and are refused.
"""

import os
import re
import shlex

from scaph_openstack.share import layout

PVE_CONFIG_DIR = '/etc/pve/qemu-server'
_VMID = re.compile(r'[0-9]{1,10}')
_UUID = re.compile(r'[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}')
_UNSAFE = re.compile(r'[\s\'"\\\x00-\x1f\x7f]')
NO_SMBIOS = ('VM %s has no smbios1 uuid in %s: without one the agent keys '
             'it per QEMU process and no args: line can name its share. '
             'Give it one (qm set %s --smbios1 uuid=$(cat '
             '/proc/sys/kernel/random/uuid)), then run this again')


def _vmid(vmid):
    vmid = str(vmid)
    if not _VMID.fullmatch(vmid):
        raise ValueError('a Proxmox VMID is a number, not %r' % (vmid,))
    return vmid


def share_key(vmid, smbios_uuid):
    """What the qemu inventory calls VM ``vmid`` with that smbios1 uuid."""
    if not isinstance(smbios_uuid, str) or not _UUID.fullmatch(smbios_uuid):
        raise ValueError('not an SMBIOS uuid: %r' % (smbios_uuid,))
    return 'proxmox-%s-%s' % (_vmid(vmid), smbios_uuid.lower())


def config_smbios_uuid(config_text):
    """The uuid of ``smbios1:`` in the VM's current configuration (not in
    its ``[snapshot]`` sections), or None."""
    for line in config_text.splitlines():
        if line.startswith('['):
            break
        key, sep, value = line.partition(':')
        if not sep or key.strip() != 'smbios1':
            continue
        for item in value.strip().split(','):
            name, sep, found = item.partition('=')
            if sep and name == 'uuid' and _UUID.fullmatch(found):
                return found.lower()
    return None


def vm_share_key(vmid, config_dir=None):
    """VM ``vmid``'s share key, from ``<config_dir>/<vmid>.conf``
    (default: PVE_CONFIG_DIR, the node's VM configurations)."""
    vmid = _vmid(vmid)
    path = os.path.join(config_dir or PVE_CONFIG_DIR, '%s.conf' % vmid)
    try:
        with open(path) as f:
            text = f.read()
    except OSError as exc:
        raise ValueError('cannot read the configuration of VM %s: %s'
                         % (vmid, exc))
    uuid = config_smbios_uuid(text)
    if uuid is None:
        raise ValueError(NO_SMBIOS % (vmid, path, vmid))
    return share_key(vmid, uuid)


def qemu_value(value, what):
    """``value`` as one QEMU option value in an ``args:`` line."""
    if not value or _UNSAFE.search(value):
        raise ValueError('%s %r cannot go into an args: line (empty, or '
                         'whitespace, a quote, a backslash or a control '
                         'character)' % (what, value))
    return value.replace(',', ',,')


def args_line(vmid, export_dir, tag=layout.DEFAULT_TAG, config_dir=None,
              key=None):
    """The line for ``/etc/pve/qemu-server/<vmid>.conf``. ``key``: the
    VM's share key, read from its configuration when not given."""
    key = layout.instance_dir_name(key or vm_share_key(vmid, config_dir))
    path = qemu_value('%s/%s' % (export_dir.rstrip('/'), key), 'export_dir')
    tag = qemu_value(tag, 'tag')
    return ('args: -fsdev local,security_model=passthrough,readonly=on,'
            'id=fsdev-scaph,path=%s -device virtio-9p-pci,id=fs-scaph,'
            'fsdev=fsdev-scaph,mount_tag=%s' % (path, tag))


def guest_mount_command(tag=layout.DEFAULT_TAG,
                        mountpoint=layout.GUEST_MOUNTPOINT):
    mountpoint, tag = shlex.quote(mountpoint), shlex.quote(tag)
    return ('mkdir -p %s && mount -t 9p -o ro,trans=virtio,version=9p2000.L'
            ' %s %s' % (mountpoint, tag, mountpoint))
