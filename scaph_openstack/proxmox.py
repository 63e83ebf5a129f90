"""Proxmox VE (no libvirt): the ``args:`` line exporting a VM's share.

Proxmox starts ``/usr/bin/kvm -id VMID``; the qemu inventory keys such a
VM as ``proxmox-<VMID>``, so that is its share directory. virtio-9p with
``readonly=on`` keeps the guest from writing, on top of the read-only
bind mount.
"""

from scaph_openstack.share import layout


def share_key(vmid):
    if not str(vmid).isdigit():
        raise ValueError('a Proxmox VMID is a number, not %r' % (vmid,))
    return 'proxmox-%s' % vmid


def args_line(vmid, export_dir, tag=layout.DEFAULT_TAG):
    path = '%s/%s' % (export_dir.rstrip('/'), share_key(vmid))
    return ('args: -fsdev local,security_model=passthrough,readonly=on,'
            'id=fsdev-scaph,path=%s -device virtio-9p-pci,id=fs-scaph,'
            'fsdev=fsdev-scaph,mount_tag=%s' % (path, tag))


def guest_mount_command(tag=layout.DEFAULT_TAG,
                        mountpoint=layout.GUEST_MOUNTPOINT):
    return ('mkdir -p %s && mount -t 9p -o ro,trans=virtio,version=9p2000.L'
            ' %s %s' % (mountpoint, tag, mountpoint))
