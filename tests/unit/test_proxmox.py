import shlex

import pytest

from scaph_openstack import proxmox
from scaph_openstack.inventory import qemu
from scaph_openstack.share import layout

UUID = '0a5b2c3d-1111-4222-8333-444455556666'
CONFIG = """boot: order=scsi0
cores: 2
name: web
smbios1: manufacturer=QUNNRQ==,uuid=%s,base64=1
vmgenid: 5f6e7d8c-0000-4000-8000-000000000000

[before-upgrade]
smbios1: uuid=11111111-2222-4333-8444-555555555555
""" % UUID.upper()


def write_config(tmp_path, vmid=105, text=CONFIG):
    (tmp_path / ('%s.conf' % vmid)).write_text(text)
    return str(tmp_path)


def test_args_line_names_the_key_of_the_inventory(tmp_path):
    """The args: line's path is what the qemu inventory calls the running
    VM (/usr/bin/kvm -id 105 -smbios type=1,...,uuid=U): its share."""
    line = proxmox.args_line('105', '/var/lib/libvirt/scaphandre/',
                             config_dir=write_config(tmp_path))
    key = 'proxmox-105-' + UUID
    assert line.startswith('args: -fsdev local,')
    assert 'readonly=on' in line
    assert 'path=/var/lib/libvirt/scaphandre/%s ' % key in line
    assert line.endswith('mount_tag=scaphandre')
    running = qemu.identity_from_argv(
        ['/usr/bin/kvm', '-id', '105', '-smbios',
         'type=1,manufacturer=QEMU,uuid=' + UUID], 4242)
    assert running.uuid == key
    assert layout.instance_dir_name(key) == key


def test_no_smbios_uuid_no_line(tmp_path):
    config_dir = write_config(tmp_path, text='name: old\n[snap]\nsmbios1: '
                                             'uuid=%s\n' % UUID)
    with pytest.raises(ValueError, match='qm set 105 --smbios1'):
        proxmox.args_line('105', '/e', config_dir=config_dir)
    with pytest.raises(ValueError, match='cannot read'):
        proxmox.args_line('106', '/e', config_dir=config_dir)


@pytest.mark.parametrize('vmid', ['../x', '', '1/2', '\u0661\u0660\u0665',
                                  '105\n'])
def test_vmid_is_a_number(tmp_path, vmid):
    with pytest.raises(ValueError):
        proxmox.args_line(vmid, '/e', config_dir=write_config(tmp_path))


def test_commas_are_escaped_for_qemu(tmp_path):
    """A comma in export_dir or tag, written as is, would end the path= or
    mount_tag= value and start another QEMU option (here readonly=off)."""
    line = proxmox.args_line('105', '/srv/a,readonly=off', 't,x',
                             config_dir=write_config(tmp_path))
    (fsdev,) = [a for a in shlex.split(line[len('args: '):])
                if a.startswith('local,')]
    options = qemu.qemu_opts(fsdev)
    assert ('path', '/srv/a,readonly=off/proxmox-105-' + UUID) in options
    assert [v for k, v in options if k == 'readonly'] == ['on']
    assert line.endswith('mount_tag=t,,x')


@pytest.mark.parametrize('export_dir,tag', [
    ('/srv/a b', 'scaphandre'), ('/srv/x\nargs: -evil', 'scaphandre'),
    ("/srv/it's", 'scaphandre'), ('/srv/a\\b', 'scaphandre'),
    ('/srv', 'two words'), ('/srv', ''), ('/srv', 'a"b')])
def test_what_would_split_the_args_line_is_refused(tmp_path, export_dir,
                                                   tag):
    with pytest.raises(ValueError):
        proxmox.args_line('105', export_dir, tag,
                          config_dir=write_config(tmp_path))


def test_guest_mount_command():
    assert proxmox.guest_mount_command().endswith(
        'mount -t 9p -o ro,trans=virtio,version=9p2000.L scaphandre '
        '/var/scaphandre')
    assert "'a;b'" in proxmox.guest_mount_command('a;b')


def test_vm_share_key(tmp_path):
    assert proxmox.vm_share_key(105, write_config(tmp_path)) == \
        'proxmox-105-' + UUID
    with pytest.raises(ValueError):
        proxmox.share_key('105', 'not-a-uuid')
