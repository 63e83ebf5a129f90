"""etc/cloud-init/scaphandre-share.yaml: valid cloud-config, one mount entry
whose options both util-linux and busybox mount accept, and a bootcmd
fallback that mounts that entry, or finds the share under another tag
(Proxmox VE).

The end-to-end guest test reads the same entry (mounts[0]: tag, mount
point, fstype, options) and mounts it in a real guest.
"""

import os
import shutil
import subprocess

import pytest
import yaml

from scaph_openstack.share import layout

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
SNIPPET = os.path.join(REPO, 'etc', 'cloud-init', 'scaphandre-share.yaml')
MOUNT_FLAGS = {'ro', 'nosuid', 'nodev', 'noexec'}


def load():
    with open(SNIPPET) as f:
        return yaml.safe_load(f)


def mount_entry():
    return load()['mounts'][0]


def test_is_cloud_config():
    with open(SNIPPET) as f:
        assert f.readline() == '#cloud-config\n'


def test_cloud_init_schema_accepts_it():
    cloud_init = shutil.which('cloud-init')
    if cloud_init is None:
        pytest.skip('cloud-init is not installed (apt-get install '
                    'cloud-init; touch /etc/cloud/cloud-init.disabled)')
    result = subprocess.run([cloud_init, 'schema', '--config-file', SNIPPET],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'Valid cloud-config' in result.stdout


def test_mount_entry_shape():
    entries = load()['mounts']
    assert len(entries) == 1
    tag, mountpoint, fstype, options, freq, passno = entries[0]
    assert tag == layout.DEFAULT_TAG
    assert mountpoint == layout.GUEST_MOUNTPOINT
    assert ':' not in mountpoint          # breaks scaphandre's path parsing
    assert fstype == 'virtiofs'           # a virtiofs tag, never 9p
    assert (freq, passno) == ('0', '0')
    assert all(isinstance(field, str) for field in entries[0])
    opts = options.split(',')
    assert opts[0] == 'ro'
    assert 'nofail' in opts               # instances without the share boot
    assert set(opts) <= MOUNT_FLAGS | {'nofail'}


def _run_bootcmd(tmp_path, shell=('sh',), mounted=False, shares=(),
                 sysfs=None):
    """Runs bootcmd's script with mount, umount and grep (of
    /proc/mounts) replaced by shell functions (busybox sh prefers its own
    applets to PATH, so only functions reliably stand in for them), the
    mount point in ``tmp_path`` and SCAPH_SYS a fake sysfs of ``sysfs``
    ({relative path: bytes}). ``shares`` are (fstype, tag, is_energy):
    the mounts that succeed, and whether they hold energy_uj. Returns
    (mount calls as argument lists, umount count, stdout)."""
    calls, umounts = tmp_path / 'mount.calls', tmp_path / 'umount.calls'
    mnt = tmp_path / 'mnt'
    sys_dir = tmp_path / 'sys'
    for rel, data in (sysfs or {}).items():
        (sys_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (sys_dir / rel).write_bytes(data)
    (command,) = load()['bootcmd']
    assert command[:2] == ['sh', '-c']
    script, argv0, (tag, _, fstype, options) = (command[2], command[3],
                                                 command[4:])
    cases = ''.join(
        '    "%s %s") %s ;;\n' % (fs, t, 'mkdir -p "$6/intel-rapl:0" && '
                                  ': > "$6/intel-rapl:0/energy_uj"'
                                  if energy else ':')
        for fs, t, energy in shares)
    fakes = ('grep() { return %d; }\n'
             'umount() { echo x >> %s; rm -rf "$1/intel-rapl:0"; }\n'
             'mount() {\n'
             '  printf "%%s|" "$@" >> %s; echo >> %s\n'
             '  case "$2 $5" in\n%s    *) return 32 ;;\n  esac\n}\n'
             % (0 if mounted else 1, umounts, calls, calls, cases))
    result = subprocess.run(
        list(shell) + ['-c', fakes + script, argv0, tag, str(mnt), fstype,
                       options],
        env=dict(os.environ, SCAPH_SYS=str(sys_dir)), capture_output=True,
        text=True, check=True, timeout=30)
    mount_calls = [line.rstrip('|').split('|') for line in
                   calls.read_text().splitlines()] if calls.exists() else []
    count = len(umounts.read_text().split()) if umounts.exists() else 0
    return mount_calls, count, result.stdout


@pytest.mark.parametrize('shell', [['sh'], ['busybox', 'sh']],
                         ids=['sh', 'busybox-sh'])
def test_bootcmd_mounts_the_same_entry_first(tmp_path, shell):
    """OpenStack and libvirt hosts: the fstab entry's tag, one mount."""
    if shutil.which(shell[0]) is None:
        pytest.skip('%s is not installed' % shell[0])
    tag, _, fstype, options = mount_entry()[:4]
    calls, umounts, out = _run_bootcmd(tmp_path, shell,
                                       shares=[(fstype, tag, True)])
    assert calls == [['-t', fstype, '-o', options, tag,
                      str(tmp_path / 'mnt')]]
    assert umounts == 0
    assert 'virtiofs share scaphandre mounted' in out


def test_bootcmd_leaves_a_mounted_share_alone(tmp_path):
    assert _run_bootcmd(tmp_path, mounted=True,
                        shares=[('virtiofs', 'scaphandre', True)])[0] == []


@pytest.mark.parametrize('shell', [['sh'], ['busybox', 'sh']],
                         ids=['sh', 'busybox-sh'])
def test_bootcmd_finds_the_proxmox_mapping_from_the_smbios_uuid(tmp_path,
                                                                shell):
    """Proxmox VE 8.4+: the tag is the mapping id proxmox-share made, which
    a kernel before 6.10 does not list: computed from product_uuid."""
    from scaph_openstack import proxmox
    uuid = '0a5b2c3d-1111-4222-8333-444455556666'
    dirid = proxmox.mapping_id(proxmox.share_key('105', uuid))
    assert dirid == 'scaph-0a5b2c3d1111422283334444555566'  # 30 hex digits
    calls, umounts, out = _run_bootcmd(
        tmp_path, shell, shares=[('virtiofs', dirid, True)],
        sysfs={'class/dmi/id/product_uuid': (uuid + '\n').encode()})
    assert [c[-2] for c in calls] == ['scaphandre', dirid]
    assert calls[-1][:4] == ['-t', 'virtiofs', '-o', mount_entry()[3]]
    assert 'virtiofs share %s mounted' % dirid in out


def test_bootcmd_tries_the_tags_the_kernel_lists(tmp_path):
    """Any other tag: the virtiofs tags of Linux 6.10+ (a share without
    energy_uj is unmounted again), then 9p tags (sysfs ends them with a
    NUL byte), over 9p's transport options."""
    calls, umounts, out = _run_bootcmd(
        tmp_path, shares=[('virtiofs', 'data', False),
                          ('9p', 'energy', True)],
        sysfs={'fs/virtiofs/0/tag': b'data\n',
               'bus/virtio/drivers/9pnet_virtio/virtio1/mount_tag':
                   b'energy\0'})
    assert [(c[1], c[-2]) for c in calls] == [
        ('virtiofs', 'scaphandre'), ('virtiofs', 'data'), ('9p', 'energy')]
    assert calls[-1][3] == mount_entry()[3] + \
        ',trans=virtio,version=9p2000.L'
    assert umounts == 1
    assert '9p share energy mounted' in out


def test_bootcmd_never_fails_the_boot(tmp_path):
    """No share on this instance: every mount fails, bootcmd exits 0."""
    calls, umounts, out = _run_bootcmd(tmp_path)
    assert [(c[1], c[-2]) for c in calls] == [
        ('virtiofs', 'scaphandre'), ('9p', 'scaphandre')]
    assert 'no energy share' in out


@pytest.mark.parametrize('mount', [['mount'], ['busybox', 'mount']],
                         ids=['util-linux', 'busybox'])
def test_mount_accepts_the_options(tmp_path, mount):
    """Mounts a tmpfs with the snippet's options: the generic flags and
    nofail are handled by mount itself, the same for any filesystem."""
    if os.geteuid() != 0:
        pytest.skip('mounting needs root')
    if shutil.which(mount[0]) is None:
        pytest.skip('%s is not installed' % mount[0])
    options = mount_entry()[3]
    target = tmp_path / 'mnt'
    target.mkdir()
    subprocess.run(mount + ['-t', 'tmpfs', '-o', options, 'scaph-test',
                            str(target)], check=True, timeout=30)
    try:
        with open('/proc/self/mountinfo') as f:
            fields = next(line.split() for line in f
                          if line.split()[4] == str(target))
        assert MOUNT_FLAGS <= set(fields[5].split(','))
    finally:
        subprocess.run(['umount', str(target)], check=True, timeout=30)
