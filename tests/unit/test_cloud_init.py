"""etc/cloud-init/scaphandre-share.yaml: valid cloud-config, one mount entry
whose options both util-linux and busybox mount accept, and a bootcmd
fallback that mounts exactly that entry.

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


def _run_bootcmd(tmp_path, shell, mounted=False, mount_rc=0):
    """Runs bootcmd's script with mkdir, mountpoint and mount replaced by
    shell functions (busybox sh prefers its own applets to PATH, so only
    functions reliably stand in for them); returns mount's arguments."""
    log = tmp_path / 'mount.args'
    (command,) = load()['bootcmd']
    assert command[:2] == ['sh', '-c']
    script, argv0, args = command[2], command[3], command[4:]
    fakes = ('mkdir() { :; }\n'
             'mountpoint() { return %d; }\n'
             'mount() { printf "%%s\\n" "$@" > %s; return %d; }\n'
             % (0 if mounted else 1, log, mount_rc))
    subprocess.run(shell + ['-c', fakes + script, argv0] + args,
                   check=True, timeout=30)
    return log.read_text().splitlines() if log.exists() else None


@pytest.mark.parametrize('shell', [['sh'], ['busybox', 'sh']],
                         ids=['sh', 'busybox-sh'])
def test_bootcmd_mounts_the_same_entry(tmp_path, shell):
    if shutil.which(shell[0]) is None:
        pytest.skip('%s is not installed' % shell[0])
    tag, mountpoint, fstype, options = mount_entry()[:4]
    assert _run_bootcmd(tmp_path, shell) == [
        '-t', fstype, '-o', options, tag, mountpoint]


def test_bootcmd_leaves_a_mounted_share_alone(tmp_path):
    assert _run_bootcmd(tmp_path, ['sh'], mounted=True) is None


def test_bootcmd_never_fails_the_boot(tmp_path):
    """No share on this instance (mount fails): bootcmd still exits 0."""
    assert _run_bootcmd(tmp_path, ['sh'], mount_rc=32) is not None


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
