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


# -- both transports: proxmox.plan() ----------------------------------------

MAPPINGS = """other
\tmap node=pve1,path=/srv/data
\tmap node=pve2,path=/srv/data2

scaph-0a5b2c3d1111422283334444555566
\tmap node=pve2,path=/e/proxmox-105-%s
""" % UUID


def pve_dir(tmp_path, config=CONFIG, mappings=None):
    (tmp_path / 'qemu-server').mkdir(exist_ok=True)
    (tmp_path / 'qemu-server' / '105.conf').write_text(config)
    if mappings is not None:
        (tmp_path / 'mapping').mkdir(exist_ok=True)
        (tmp_path / 'mapping' / 'directory.cfg').write_text(mappings)
    return str(tmp_path)


def test_directory_mappings_are_read_per_node():
    mappings = proxmox.parse_directory_mappings(MAPPINGS)
    assert mappings['other'] == {'pve1': '/srv/data', 'pve2': '/srv/data2'}
    assert list(mappings) == ['other', 'scaph-0a5b2c3d1111422283334444555566']


def test_mapping_id_is_a_virtiofs_tag_the_guest_can_compute():
    key = proxmox.share_key('105', UUID)
    dirid = proxmox.mapping_id(key)
    assert dirid == 'scaph-' + UUID.replace('-', '')[:30]
    assert len(dirid.encode()) == proxmox.VIRTIOFS_TAG_MAX
    assert proxmox._CONFIGID.fullmatch(dirid)
    with pytest.raises(ValueError):
        proxmox.mapping_id(UUID)


def test_virtiofs_plan_creates_the_mapping_and_the_option(tmp_path):
    plan = proxmox.plan('105', 'virtiofs', '/e', pve_dir=pve_dir(tmp_path),
                        node='pve1', hookscript='local:snippets/h')
    dirid = 'scaph-' + UUID.replace('-', '')[:30]
    assert plan.tag == dirid and plan.share_dir == '/e/proxmox-105-' + UUID
    assert plan.commands == [
        ['pvesh', 'create', '/cluster/mapping/dir', '--id', dirid,
         '--description', 'scaph-openstack energy share of VM 105',
         '--map', 'node=pve1,path=/e/proxmox-105-' + UUID],
        ['qm', 'set', '105', '--virtiofs0', dirid],
        ['qm', 'set', '105', '--hookscript', 'local:snippets/h']]
    assert plan.guest_mount.endswith('mount -t virtiofs -o ro %s '
                                     '/var/scaphandre' % dirid)


def test_virtiofs_plan_adds_a_node_and_reuses_a_cloned_slot(tmp_path):
    """The mapping exists for pve2 only: set, keeping pve2. virtiofs0
    names another VM's share mapping (copied by a clone): replaced;
    virtiofs1 (the operator's own share) is left."""
    config = CONFIG.replace('name: web\n', 'name: web\nvirtiofs0: scaph-'
                            'ffff,cache=never\nvirtiofs1: other\n'
                            'hookscript: local:snippets/h\n')
    plan = proxmox.plan('105', 'virtiofs', '/e', pve_dir=pve_dir(
        tmp_path, config, MAPPINGS), node='pve1',
        hookscript='local:snippets/h')
    dirid = 'scaph-' + UUID.replace('-', '')[:30]
    path = '/e/proxmox-105-' + UUID
    assert plan.commands == [
        ['pvesh', 'set', '/cluster/mapping/dir/' + dirid,
         '--map', 'node=pve1,path=' + path, '--map', 'node=pve2,path=' + path],
        ['qm', 'set', '105', '--virtiofs0', dirid]]


def test_nothing_to_change_once_applied(tmp_path):
    dirid = 'scaph-' + UUID.replace('-', '')[:30]
    config = CONFIG.replace('name: web\n', 'name: web\nvirtiofs2: %s\n'
                            'hookscript: local:snippets/h\n' % dirid)
    mappings = '%s\n\tmap node=pve1,path=/e/proxmox-105-%s\n' % (dirid, UUID)
    assert proxmox.plan('105', 'virtiofs', '/e', pve_dir=pve_dir(
        tmp_path, config, mappings), node='pve1',
        hookscript='local:snippets/h').commands == []


def test_9p_plan_merges_into_an_existing_args_line(tmp_path):
    """Other options of args: stay; a previous share export (an older
    export_dir, or a clone's) is replaced, not doubled."""
    old = proxmox.args_options('/old/proxmox-9-' + UUID)
    config = CONFIG.replace('name: web\n', 'name: web\nargs: -no-reboot %s '
                            "-smbios 'type=0,vendor=a b'\n" % ' '.join(old))
    plan = proxmox.plan('105', '9p', '/e', pve_dir=pve_dir(tmp_path, config))
    ((qm, verb, vmid, flag, value),) = plan.commands
    words = shlex.split(value)
    assert words[:4] == ['-no-reboot', '-smbios', 'type=0,vendor=a b',
                         '-fsdev']
    assert words[4].endswith('path=/e/proxmox-105-' + UUID)
    assert value.count('-fsdev') == 1 and '/old/' not in value
    assert plan.guest_mount.startswith('mkdir -p /var/scaphandre && mount '
                                       '-t 9p')


def test_another_hookscript_is_not_replaced(tmp_path):
    config = CONFIG.replace('name: web\n', 'name: web\nhookscript: '
                            'local:snippets/theirs.pl\n')
    with pytest.raises(proxmox.ProxmoxError, match='theirs.pl'):
        proxmox.plan('105', '9p', '/e', pve_dir=pve_dir(tmp_path, config),
                     hookscript='local:snippets/h')


def test_unknown_transport_and_unsafe_mapping_paths(tmp_path):
    with pytest.raises(proxmox.ProxmoxError, match='transport'):
        proxmox.plan('105', 'nfs', '/e', pve_dir=pve_dir(tmp_path))
    with pytest.raises(proxmox.ProxmoxError, match='directory mapping'):
        proxmox.plan('105', 'virtiofs', '/e=x', pve_dir=pve_dir(tmp_path),
                     node='pve1')


@pytest.mark.parametrize('options,problem', [
    ({}, None),
    ({'args': '-fsdev local,id=fsdev-scaph,path=/e/proxmox-105-%s' % UUID},
     None),
    ({'args': '-fsdev local,id=fsdev-scaph,path=/e/proxmox-104-%s' % UUID},
     'args: line exports /e/proxmox-104-'),
    ({'args': '-fsdev local,id=x,path=/srv/data'}, None),
    ({'virtiofs0': 'other'}, None),
    ({'virtiofs3': 'scaph-0a5b2c3d1111422283334444555566,cache=auto'},
     'virtiofs3: scaph-0a5b2c3d1111422283334444555566 names directory '
     'mapping'),
])
def test_foreign_shares(options, problem):
    """Options naming another VM's directory under export_dir (a clone's
    copies) are reported; the VM's own, and other directories, are not."""
    mappings = proxmox.parse_directory_mappings(
        MAPPINGS.replace('pve2,path=/e/proxmox-105', 'pve1,path=/e/'
                         'proxmox-104'))
    problems = proxmox.foreign_shares(options, 'proxmox-105-' + UUID, '/e',
                                      mappings, 'pve1')
    if problem is None:
        assert problems == []
    else:
        (found,) = problems
        assert problem in found


def test_other_nodes_are_added_to_this_one(tmp_path):
    plan = proxmox.plan('105', 'virtiofs', '/e', pve_dir=pve_dir(tmp_path),
                        node='pve1', nodes=['pve2', 'pve1'])
    maps = [arg for arg in plan.commands[0] if arg.startswith('node=')]
    assert maps == ['node=pve1,path=/e/proxmox-105-' + UUID,
                    'node=pve2,path=/e/proxmox-105-' + UUID]
