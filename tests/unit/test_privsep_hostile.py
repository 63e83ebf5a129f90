"""The privileged entry points called with hostile arguments, in this
process (no daemon, no mount): traversal, leading dashes, option
injection, trailing slashes, symlinks planted and swapped in a loop by
another process. Nothing outside the configured trees may be touched or
read. tests/functional/test_privsep_hostile.py does the same through the
real daemon, with real mounts.
"""

import inspect
import os
import stat
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest
from oslo_config import cfg

from scaph_openstack import conf as scaph_conf
from scaph_openstack.energy import rapl as energy_rapl
from scaph_openstack import handoff
from scaph_openstack import privsep
from scaph_openstack.privsep import fs
from scaph_openstack.privsep import mounts
from scaph_openstack.privsep import rapl

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
FILTERS_DIR = os.path.join(REPO, 'etc', 'scaph-openstack', 'rootwrap.d')
UUID = '0b7d3c52-2f3e-4c1a-9d6b-1f2e3d4c5b6a'
COUNTER = '123456\n'
SECRET = '987654321987\n'          # digits: only O_NOFOLLOW stops it
SWAPS = 3000

HOSTILE_UUIDS = [
    '../victim', '../../etc', 'x/../../victim', UUID + '/../../victim',
    '-rf', '--help', '.', '..', '', ' ' + UUID, UUID + '\n', UUID + '/',
    UUID.upper(), UUID[:-1], UUID + '0', 'proxmox-100',
    UUID.replace('-', ''), UUID.encode(), 42, None, [UUID],
]
HOSTILE_ZONES = [
    '../secret', '../../', 'intel-rapl:0/../../secret', '/etc',
    'intel-rapl:0/energy_uj', '-o', '--', 'intel-rapl:0\n', 'intel-rapl:',
    'intel-rapl:a', 'intel-rapl:0:0:0', ' intel-rapl:0', 'intel-rapl:-1',
    '', b'intel-rapl:0', 0, None,
]


def tree_state(root, skip=()):
    """{relative path: (mode, uid, link target or content)} of everything
    under root, symlinks not followed."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames
                       if os.path.join(dirpath, d) not in skip]
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                what = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                with open(path, 'rb') as f:
                    what = f.read()
            else:
                what = None
            state[os.path.relpath(path, root)] = (st.st_mode, st.st_uid,
                                                  what)
    return state


@pytest.fixture
def victim(tmp_path):
    """A root-only directory and file nobody may reach through the
    entry points."""
    path = tmp_path / 'victim'
    path.mkdir(mode=0o700)
    secret = path / 'secret'
    secret.write_text(SECRET)
    secret.chmod(0o400)
    return path


@pytest.fixture
def in_process():
    privsep.sys_admin.set_client_mode(False)
    yield
    privsep.sys_admin.set_client_mode(True)


class Overrides:
    """set_override on cfg.CONF, cleared one by one afterwards:
    oslo_config's fixture resets the whole CONF, defaults included, and
    with them the capabilities oslo.privsep set for every later daemon."""

    def __init__(self):
        self.done = set()

    def config(self, group, **options):
        for name, value in options.items():
            cfg.CONF.set_override(name, value, group=group)
            self.done.add((group, name))

    def clear(self):
        for group, name in self.done:
            cfg.CONF.clear_override(name, group=group)


@pytest.fixture
def global_conf():
    scaph_conf.register_opts(cfg.CONF)
    cfg.CONF.register_opts(privsep.PRIVSEP_OPTS, group=privsep.CFG_SECTION)
    overrides = Overrides()
    yield overrides
    overrides.clear()


@pytest.fixture
def agent_conf(tmp_path):
    """The agent's configuration with these [share] options, from a file
    (set_override would leak: ConfigOpts share the option groups)."""
    def make(**share):
        path = tmp_path / ('agent-%d.conf' % len(os.listdir(tmp_path)))
        path.write_text('[share]\n' + ''.join(
            '%s = %s\n' % item for item in share.items()))
        conf = cfg.ConfigOpts()
        scaph_conf.register_opts(conf)
        conf(['--config-file', str(path)], project='scaph-openstack',
             default_config_files=[], default_config_dirs=[])
        return conf
    return make


def settings(work='/srv/work', export='/srv/export', size='4m'):
    """What the daemon checks of its configuration, with any string."""
    return privsep.ShareSettings('share', work, export, size,
                                 True).check_mounts()


# -- the configuration the daemon reads ---------------------------------------

@pytest.mark.parametrize('path', [
    '', 'relative/dir', '/var/lib/scaph/', '/var/lib/../../etc',
    '/var/./lib', '//etc', '/', '-o', '--bind', '/var/lib/x\0', ' /x',
    '/var/lib/scaph/..', '/var/lib/x\n', None, b'/var/lib/x'])
def test_share_paths_must_be_absolute_and_normalised(path):
    for work, export in ((path, '/srv/export'), ('/srv/work', path)):
        with pytest.raises(privsep.Refused, match='normalised'):
            settings(work, export)


def test_configured_paths_are_checked(agent_conf):
    with pytest.raises(privsep.Refused, match='normalised'):
        privsep.share_settings(agent_conf(work_dir='/var/lib/scaph/'))


@pytest.mark.parametrize('work,export', [
    ('/srv/a', '/srv/a'), ('/srv/a', '/srv/a/b'), ('/srv/a/b', '/srv/a')])
def test_work_and_export_must_be_apart(work, export):
    with pytest.raises(privsep.Refused, match='apart'):
        settings(work, export)


@pytest.mark.parametrize('size', [
    '128m,uid=1000', '128m,mode=4777', '4m,nosuid=0', '50%,uid=0', '0',
    '00', '0m', '-1', '1e9', '128 m', '128m\n', '', '101%', '0%', '12t',
    'size=1m', '1m ', '99999999999999999m', None, 128])
def test_tmpfs_size_option_injection_is_refused(size):
    with pytest.raises(privsep.Refused, match='tmpfs size'):
        settings(size=size)


def test_configured_size_is_checked(agent_conf):
    conf = agent_conf(tmpfs_size='128m,uid=1000')
    with pytest.raises(privsep.Refused, match='tmpfs size'):
        privsep.share_settings(conf).check_mounts()


@pytest.mark.parametrize('size', ['128m', '4m', '1048576', '8G', '512k',
                                  '50%', '100%'])
def test_tmpfs_sizes(size):
    assert settings(size=size).tmpfs_size == size


def test_agent_daemon_reads_share(agent_conf):
    settings = privsep.share_settings(agent_conf(work_dir='/srv/w'))
    assert (settings.group, settings.work_dir) == ('share', '/srv/w')


def test_nova_daemon_reads_scaphandre(tmp_path):
    """privsep-helper --config-file nova.conf: nothing registered, [share]
    means nothing to Nova, [scaphandre] is read."""
    path = tmp_path / 'nova.conf'
    path.write_text('[share]\nwork_dir = /wrong\n'
                    '[scaphandre]\nwork_dir = /srv/w\ntmpfs_size = 8m\n')
    conf = cfg.ConfigOpts()
    conf(['--config-file', str(path)], project='privsep')
    settings = privsep.share_settings(conf)
    assert (settings.group, settings.work_dir, settings.tmpfs_size,
            settings.export_dir) == ('scaphandre', '/srv/w', '8m',
                                     '/var/lib/libvirt/scaphandre')


def test_cli_daemon_through_sudo_reads_the_agents_share(tmp_path):
    path = tmp_path / 'scaph-openstack.conf'
    path.write_text('[share]\nwork_dir = /srv/w\n')
    conf = cfg.ConfigOpts()
    conf(['--config-file', str(path)], project='privsep')
    assert privsep.share_settings(conf).group == 'share'


def test_test_only_switches_default_to_checking():
    conf = cfg.ConfigOpts()
    assert privsep.require_sysfs(conf) and privsep.require_tmpfs(conf)


# -- the entry points take no path and no size -------------------------------

def test_entry_points_take_no_path_and_no_size():
    def parameters(entrypoint):
        (func,) = entrypoint.args          # functools.partial(_wrap, func)
        assert privsep.sys_admin.is_entrypoint(entrypoint)
        return list(inspect.signature(func).parameters)
    assert parameters(mounts.ensure_share_mounts) == []
    assert parameters(mounts.create_instance_share) == ['uuid', 'with_dram']
    assert parameters(mounts.create_proxmox_share) == ['key']
    assert parameters(rapl.read_energy_uj) == ['zone']
    assert parameters(mounts.hold_counters) == ['uuid', 'token', 'expires']
    assert parameters(mounts.held_counters) == ['uuid', 'token']
    assert parameters(mounts.release_counters) == ['uuid']
    assert parameters(mounts.start_counters) == ['uuid', 'counters']


def test_paths_and_sizes_from_a_caller_are_refused(in_process, global_conf,
                                                   tmp_path):
    global_conf.config(group='share', work_dir=str(tmp_path / 'w'),
                       export_dir=str(tmp_path / 'e'), manage_mounts=False)
    with pytest.raises(TypeError):
        mounts.ensure_share_mounts('/etc', str(tmp_path / 'x'), '1m')
    with pytest.raises(privsep.Refused):
        mounts.create_instance_share('/etc', UUID)
    with pytest.raises(privsep.Refused):
        rapl.read_energy_uj('/etc/shadow')
    assert os.listdir(tmp_path) == []


def test_mounts_not_managed_are_not_made(in_process, global_conf, tmp_path):
    global_conf.config(group='share', work_dir=str(tmp_path / 'w'),
                       export_dir=str(tmp_path / 'e'), manage_mounts=False)
    with pytest.raises(privsep.Refused, match='manage_mounts'):
        mounts.ensure_share_mounts()
    assert os.listdir(tmp_path) == []


# -- create_instance_share ----------------------------------------------------

@pytest.fixture
def share(tmp_path, victim, in_process, global_conf):
    """work_dir a plain directory ([scaph_openstack_privsep] require_tmpfs
    false, as tests only may say) beside the victim."""
    work = tmp_path / 'work'
    work.mkdir()
    global_conf.config(group='share', work_dir=str(work),
                       export_dir=str(tmp_path / 'export'))
    global_conf.config(group=privsep.CFG_SECTION, require_tmpfs=False)
    return work


@pytest.mark.parametrize('uuid', HOSTILE_UUIDS,
                         ids=[repr(u) for u in HOSTILE_UUIDS])
def test_hostile_uuids_touch_nothing(share, tmp_path, uuid):
    before = tree_state(tmp_path)
    with pytest.raises(privsep.Refused, match='not an instance UUID'):
        mounts.create_instance_share(uuid)
    assert tree_state(tmp_path) == before


@pytest.mark.parametrize('with_dram', ['yes', 1, '../x', None])
def test_hostile_with_dram(share, tmp_path, with_dram):
    before = tree_state(tmp_path)
    with pytest.raises(privsep.Refused):
        mounts.create_instance_share(UUID, with_dram)
    assert tree_state(tmp_path) == before


PROXMOX_KEY = 'proxmox-105-' + UUID
HOSTILE_KEYS = HOSTILE_UUIDS + [
    UUID, PROXMOX_KEY.upper(), 'proxmox-105-' + UUID.upper(),
    'proxmox--' + UUID, 'proxmox-1a-' + UUID, 'proxmox-105-../' + UUID,
    'proxmox-12345678901-' + UUID, PROXMOX_KEY + '/..', PROXMOX_KEY + '\n']


@pytest.mark.parametrize('key', HOSTILE_KEYS, ids=[repr(k) for k in
                                                   HOSTILE_KEYS])
def test_hostile_proxmox_keys_touch_nothing(share, tmp_path, key):
    """The hookscript's entry point takes a Proxmox key alone: not an
    instance uuid (Nova's entry point), nothing path-like."""
    before = tree_state(tmp_path)
    with pytest.raises(privsep.Refused, match='not a Proxmox VM share key'):
        mounts.create_proxmox_share(key)
    assert tree_state(tmp_path) == before


def test_proxmox_share_is_made_and_kept(share):
    mounts.create_proxmox_share(PROXMOX_KEY)
    counter = share / PROXMOX_KEY / 'intel-rapl:0' / 'energy_uj'
    assert counter.read_text() == '0\n'
    os.chmod(counter, 0o644)
    counter.write_text('5\n')
    mounts.create_proxmox_share(PROXMOX_KEY)     # a second start
    assert counter.read_text() == '5\n'


def test_instance_share_is_made_read_only(share):
    mounts.create_instance_share(UUID, True)
    top = share / UUID
    assert sorted(os.listdir(top)) == ['intel-rapl:0', 'intel-rapl:0:0',
                                       'scaph-openstack.json']
    for path, kind in ((top, 0o555), (top / 'intel-rapl:0', 0o555),
                       (top / 'intel-rapl:0' / 'energy_uj', 0o444)):
        assert stat.S_IMODE(os.lstat(path).st_mode) == kind
    assert (top / 'intel-rapl:0' / 'energy_uj').read_text() == '0\n'


def test_share_made_where_work_is_its_own_view(share, global_conf):
    """Creating a share uses work_dir only: export_dir may be work_dir
    itself where no read-only view is mounted (scaph-openstack attach on
    a test host); mounting refuses that."""
    global_conf.config(group='share', export_dir=str(share))
    mounts.create_instance_share(UUID)
    assert os.listdir(share) == [UUID]
    global_conf.config(group='share', manage_mounts=True)
    with pytest.raises(privsep.Refused, match='apart'):
        mounts.ensure_share_mounts()


def test_work_dir_must_be_the_mounted_tmpfs(share, global_conf, tmp_path):
    global_conf.config(group=privsep.CFG_SECTION, require_tmpfs=True)
    with pytest.raises(privsep.Refused, match='not a mount point'):
        mounts.create_instance_share(UUID)
    assert os.listdir(share) == []
    # On a tmpfs, but a directory of /dev/shm: not a tmpfs mounted there.
    shm = tempfile.mkdtemp(dir='/dev/shm')
    try:
        fd = os.open(shm, os.O_RDONLY)
        assert fs.fs_type(fd) == fs.TMPFS_MAGIC
        os.close(fd)
        global_conf.config(group='share', work_dir=shm)
        with pytest.raises(privsep.Refused, match='not a mount point'):
            mounts.create_instance_share(UUID)
        assert os.listdir(shm) == []
    finally:
        os.rmdir(shm)


def test_symlinked_work_dir_is_refused(share, global_conf, tmp_path,
                                       victim):
    (tmp_path / 'link').symlink_to(victim)
    (tmp_path / 'parent-link').symlink_to(tmp_path)
    before = tree_state(tmp_path)
    for work in (tmp_path / 'link', tmp_path / 'parent-link' / 'work'):
        global_conf.config(group='share', work_dir=str(work))
        with pytest.raises(privsep.Refused, match='symlink'):
            mounts.create_instance_share(UUID)
    assert tree_state(tmp_path) == before


@pytest.mark.parametrize('planted', ['', 'intel-rapl:0'])
def test_planted_directory_symlinks_are_not_followed(share, tmp_path, victim,
                                                     planted):
    if planted:
        (share / UUID).mkdir()
    (share / UUID / planted if planted else share / UUID).symlink_to(victim)
    before = tree_state(victim)
    with pytest.raises(privsep.Refused, match='symlink'):
        mounts.create_instance_share(UUID)
    assert tree_state(victim) == before


def test_planted_file_symlinks_are_kept_not_followed(share, victim):
    (share / UUID).mkdir()
    (share / UUID / 'scaph-openstack.json').symlink_to(victim / 'secret')
    before = tree_state(victim)
    mounts.create_instance_share(UUID)
    assert tree_state(victim) == before
    assert os.path.islink(share / UUID / 'scaph-openstack.json')


def swapper(script, *args):
    """Another process (another CPU: no GIL between the two) running
    ``script`` in a loop until killed."""
    proc = subprocess.Popen(
        [sys.executable, '-c', textwrap.dedent(script)] + [str(a)
                                                           for a in args])
    time.sleep(0.2)
    assert proc.poll() is None
    return proc


def stop(proc):
    proc.kill()
    proc.wait()


SWAP_DIR = """
    import os, sys
    inst, victim, junk = sys.argv[1:]
    i = 0
    while True:
        try:
            os.rename(inst, '%s/%d' % (junk, i))
            i += 1
        except OSError:
            pass
        try:
            os.symlink(victim, inst)
        except OSError:
            pass
        try:
            os.unlink(inst)
        except OSError:
            pass
"""


def test_directory_swapped_for_a_symlink_in_a_loop(share, tmp_path, victim,
                                                   monkeypatch):
    """mkdir, then a symlink to the victim in its place before the chmod:
    the mode is set on the opened directory, never through the name. A
    pause after each mkdir widens the window (the old chmod through the
    name then reached the victim within a few tries)."""
    junk = tmp_path / 'junk'
    junk.mkdir()
    mkdir = os.mkdir

    def slow_mkdir(*args, **kwargs):
        mkdir(*args, **kwargs)
        time.sleep(0.0005)
    monkeypatch.setattr(os, 'mkdir', slow_mkdir)
    before = tree_state(victim)
    attacker = swapper(SWAP_DIR, share / UUID, victim, junk)
    made = refused = 0
    try:
        for _ in range(SWAPS):
            try:
                mounts.create_instance_share(UUID)
                made += 1
            except (privsep.Refused, OSError):
                refused += 1
    finally:
        stop(attacker)
    assert tree_state(victim) == before
    # The race was run: the attacker won some calls (refused); whether it
    # also lost some depends on scheduling (on an idle 2-core host it
    # wins them all), so the sound case is checked once it is gone.
    assert refused, (made, refused)
    shutil.rmtree(share / UUID, ignore_errors=True)
    if os.path.islink(share / UUID):
        os.unlink(share / UUID)
    mounts.create_instance_share(UUID)
    assert (share / UUID / 'intel-rapl:0' / 'energy_uj').is_file()


# -- read_energy_uj -----------------------------------------------------------

@pytest.fixture
def powercap(tmp_path, victim, in_process, global_conf):
    root = tmp_path / 'powercap'
    zone = root / 'intel-rapl:0'
    zone.mkdir(parents=True)
    (zone / 'energy_uj').write_text(COUNTER)
    # Named as the old check wanted: intel-rapl:*/energy_uj, outside.
    elsewhere = victim / 'intel-rapl:9'
    elsewhere.mkdir()
    (elsewhere / 'energy_uj').write_text(SECRET)
    (elsewhere / 'energy_uj').chmod(0o400)
    global_conf.config(group='energy', powercap_path=str(root))
    global_conf.config(group=privsep.CFG_SECTION, require_sysfs=False)
    return root


def test_zone_is_read(powercap):
    assert rapl.read_energy_uj('intel-rapl:0') == COUNTER


@pytest.mark.parametrize('zone', HOSTILE_ZONES,
                         ids=[repr(z) for z in HOSTILE_ZONES])
def test_hostile_zones_are_refused(powercap, zone):
    with pytest.raises(privsep.Refused, match='not a RAPL zone'):
        rapl.read_energy_uj(zone)


def test_energy_uj_symlink_is_not_followed(powercap, victim):
    for target in (victim / 'secret', victim / 'intel-rapl:9' / 'energy_uj'):
        os.unlink(powercap / 'intel-rapl:0' / 'energy_uj')
        (powercap / 'intel-rapl:0' / 'energy_uj').symlink_to(target)
        with pytest.raises(privsep.Refused, match='symlink'):
            rapl.read_energy_uj('intel-rapl:0')


def test_zone_symlink_is_not_followed_outside_sysfs(powercap, victim,
                                                    global_conf):
    (powercap / 'intel-rapl:1').symlink_to(victim / 'intel-rapl:9')
    with pytest.raises(privsep.Refused, match='symlink'):
        rapl.read_energy_uj('intel-rapl:1')
    global_conf.config(group=privsep.CFG_SECTION, require_sysfs=True)
    with pytest.raises(privsep.Refused, match='not on sysfs'):
        rapl.read_energy_uj('intel-rapl:1')


def test_powercap_path_with_a_symlink_is_refused(powercap, tmp_path,
                                                 global_conf):
    (tmp_path / 'link').symlink_to(powercap)
    global_conf.config(group='energy', powercap_path=str(tmp_path / 'link'))
    with pytest.raises(privsep.Refused, match='symlink'):
        rapl.read_energy_uj('intel-rapl:0')


def test_fixture_tree_is_refused_where_sysfs_is_required(powercap,
                                                         global_conf):
    global_conf.config(group=privsep.CFG_SECTION, require_sysfs=True)
    with pytest.raises(privsep.Refused, match='not on sysfs'):
        rapl.read_energy_uj('intel-rapl:0')


def test_sysfs_symlinks_are_followed_into_sysfs_only():
    """/sys/class/powercap/intel-rapl:N are the kernel's symlinks into
    /sys/devices: followed from a sysfs directory, to a sysfs directory."""
    root = os.open('/sys/class/net', fs.DIR_FLAGS)
    try:
        name = sorted(os.listdir(root))[0]
        assert os.path.islink(os.path.join('/sys/class/net', name))
        with pytest.raises(privsep.Refused):
            rapl._open_zone(root, name, False)
        fd = rapl._open_zone(root, name, True)
        assert fs.fs_type(fd) == fs.SYSFS_MAGIC
        os.close(fd)
    finally:
        os.close(root)


def test_fifo_does_not_hang_the_daemon(powercap):
    os.unlink(powercap / 'intel-rapl:0' / 'energy_uj')
    os.mkfifo(powercap / 'intel-rapl:0' / 'energy_uj')
    with pytest.raises(privsep.Refused, match='not a regular file'):
        rapl.read_energy_uj('intel-rapl:0')


def test_only_digits_come_back(powercap):
    (powercap / 'intel-rapl:0' / 'energy_uj').write_text('s3cr3t:x:0:\n')
    with pytest.raises(privsep.Refused) as err:
        rapl.read_energy_uj('intel-rapl:0')
    assert 's3cr3t' not in str(err.value)


SWAP_FILE = """
    import os, sys
    path, secret, counter = sys.argv[1:]
    link, plain = path + '.link', path + '.plain'
    while True:
        try:
            os.unlink(link)
        except OSError:
            pass
        os.symlink(secret, link)
        os.rename(link, path)
        with open(plain, 'w') as f:
            f.write(counter)
        os.rename(plain, path)
"""


def read_outcomes(count, zone='intel-rapl:0'):
    """{what came back, or the exception's class name: how many times}
    of ``count`` reads of ``zone`` (while an attacker swaps files)."""
    seen = {}
    for _ in range(count):
        try:
            value = rapl.read_energy_uj(zone)
        except (privsep.Refused, OSError) as exc:
            value = type(exc).__name__
        seen[value] = seen.get(value, 0) + 1
    return seen


def test_energy_uj_swapped_for_a_symlink_in_a_loop(powercap, victim):
    """The file is a regular file at one instant and a symlink to a
    root-only file the next, thousands of times: the secret never comes
    back (the old realpath() check then open() returned it)."""
    path = powercap / 'intel-rapl:0' / 'energy_uj'
    attacker = swapper(SWAP_FILE, path, victim / 'intel-rapl:9' / 'energy_uj',
                       COUNTER)
    try:
        seen = read_outcomes(SWAPS)
    finally:
        stop(attacker)
    assert SECRET not in seen
    assert seen.get(COUNTER) and seen.get('Refused'), seen   # both happened


def test_agent_reader_sends_only_the_zone(powercap, monkeypatch):
    sent = []
    monkeypatch.setattr(rapl, 'read_energy_uj',
                        lambda zone: sent.append(zone) or COUNTER)
    conf = cfg.ConfigOpts()
    scaph_conf.register_opts(conf)
    conf.set_override('powercap_path', str(powercap), group='energy')
    source = energy_rapl.from_conf(conf)
    assert source.privileged_reader(
        str(powercap / 'intel-rapl:0' / 'energy_uj')) == COUNTER
    assert sent == ['intel-rapl:0']


# -- mounts, without mounting -------------------------------------------------

@pytest.fixture
def no_mount(monkeypatch):
    calls = []

    def mount(source, target_fd, fstype, flags, data=None, source_fd=None):
        calls.append((source, os.readlink('/proc/self/fd/%d' % target_fd),
                      fstype, flags, data))
        raise OSError('not mounting in unit tests')
    monkeypatch.setattr(fs, 'mount', mount)
    return calls


@pytest.mark.parametrize('work,export,size', [
    ('{t}/w/', '{t}/e', '4m'), ('{t}/w', '{t}/e/', '4m'),
    ('{t}/x/../w', '{t}/e', '4m'), ('-o', '{t}/e', '4m'),
    ('{t}/w', '--bind', '4m'), ('{t}/w', '{t}/e', '4m,uid=1000'),
    ('{t}/w', '{t}/e', '-o'), ('{t}/w', '{t}/w/e', '4m')])
def test_hostile_mount_settings_touch_nothing(tmp_path, no_mount, work,
                                              export, size):
    before = tree_state(tmp_path)
    with pytest.raises(privsep.Refused):
        mounts.ensure_share_mounts_unprivileged(
            work.format(t=tmp_path), export.format(t=tmp_path), size)
    assert tree_state(tmp_path) == before and no_mount == []


def test_tmpfs_is_mounted_on_the_opened_directory(tmp_path, no_mount):
    with pytest.raises(OSError, match='not mounting'):
        mounts.ensure_share_mounts_unprivileged(
            str(tmp_path / 'w'), str(tmp_path / 'e'), '4m')
    assert no_mount == [(mounts.TMPFS_SOURCE, str(tmp_path / 'w'), 'tmpfs',
                         fs.MS_NOSUID | fs.MS_NODEV | fs.MS_NOEXEC,
                         'size=4m,mode=0755')]
    assert stat.S_IMODE(os.stat(tmp_path / 'w').st_mode) == 0o755


def test_nothing_is_mounted_over_files_or_through_symlinks(tmp_path, victim,
                                                           no_mount):
    (tmp_path / 'w').mkdir()
    (tmp_path / 'w' / 'file').write_text('x')
    with pytest.raises(privsep.Refused, match='not empty'):
        mounts.ensure_share_mounts_unprivileged(
            str(tmp_path / 'w'), str(tmp_path / 'e'), '4m')
    (tmp_path / 'link').symlink_to(victim)
    (tmp_path / 'dir-link').symlink_to(tmp_path)
    for work in (tmp_path / 'link', tmp_path / 'dir-link' / 'x'):
        with pytest.raises(privsep.Refused, match='symlink'):
            mounts.ensure_share_mounts_unprivileged(
                str(work), str(tmp_path / 'e'), '4m')
    (tmp_path / 'w.lock').unlink()
    (tmp_path / 'w.lock').symlink_to(victim / 'secret')
    with pytest.raises(privsep.Refused, match='symlink'):
        mounts.ensure_share_mounts_unprivileged(
            str(tmp_path / 'w'), str(tmp_path / 'e'), '4m')
    assert no_mount == [] and (victim / 'secret').read_text() == SECRET


# -- the rootwrap filter ------------------------------------------------------

def our_filters():
    from oslo_rootwrap import wrapper
    return [f for f in wrapper.load_filters([FILTERS_DIR])
            if f.name != 'privsep-helper']      # oslo.rootwrap's catch-all


def helper_argv(config_files, context='scaph_openstack.privsep.sys_admin',
                sock='/tmp/tmpk3j_x9ab/privsep.sock'):
    argv = ['privsep-helper']
    for path in config_files:
        argv += ['--config-file', path]
    return argv + ['--privsep_context', context, '--privsep_sock_path', sock]


HOSTILE_CONFIG_FILES = [
    '/etc/nova/../../tmp/evil.conf', '/etc/../tmp/evil.conf', '/etc/..',
    '/etc/nova/..', '/etc/nova/x/../../../root/evil.conf',
    '/etc/nova/..conf/../../tmp/e', '/etc/nova/nova.conf\n',
    '/etc/nova/nova.conf\n/tmp/e', '/etc/', '/tmp/evil.conf',
    '/etc/nova/ nova.conf']
HOSTILE_SOCKETS = [
    '/tmp/../run/x/privsep.sock', '/tmp/tmpabc/../../run/privsep.sock',
    '/tmp/privsep.sock', '/tmp/tmpabc/privsep.sock\n', '/tmp/tmpabc/x.sock',
    '/tmp/tmpabc/sub/privsep.sock']


def test_rootwrap_filter_accepts_novas_command_lines():
    filters = our_filters()
    for files in (['/etc/nova/nova-cpu.conf'],
                  ['/etc/nova/nova.conf', '/etc/nova/nova-compute.conf']):
        assert [f.name for f in filters if f.match(helper_argv(files))]


@pytest.mark.parametrize('path', HOSTILE_CONFIG_FILES)
def test_rootwrap_filter_refuses_dotdot_anywhere(path):
    filters = our_filters()
    for files in ([path], [path, '/etc/nova/nova.conf'],
                  ['/etc/nova/nova.conf', path]):
        assert not [f.name for f in filters if f.match(helper_argv(files))]


@pytest.mark.parametrize('sock', HOSTILE_SOCKETS)
def test_rootwrap_filter_refuses_other_sockets(sock):
    filters = our_filters()
    argv = helper_argv(['/etc/nova/nova.conf'], sock=sock)
    assert not [f.name for f in filters if f.match(argv)]


# -- the counter handoff (handoff.py) -----------------------------------------

GOOD_COUNTERS = {'token': 't1', 'energy_uj': {'package': 5},
                 'shown_uj': {'package': 0}}


@pytest.mark.parametrize('call', [
    lambda uuid: mounts.hold_counters(uuid, 't1'),
    lambda uuid: mounts.held_counters(uuid, 't1'),
    lambda uuid: mounts.release_counters(uuid),
    lambda uuid: mounts.start_counters(uuid, GOOD_COUNTERS),
])
@pytest.mark.parametrize('uuid', HOSTILE_UUIDS)
def test_handoff_refuses_hostile_uuids(share, victim, call, uuid):
    with pytest.raises(privsep.Refused):
        call(uuid)
    assert not (share / handoff.DIR_NAME).exists()
    assert os.listdir(victim) == ['secret']


@pytest.mark.parametrize('call', [
    lambda: mounts.hold_counters(UUID, '../victim'),
    lambda: mounts.hold_counters(UUID, 't' * 65),
    lambda: mounts.hold_counters(UUID, 7),
    lambda: mounts.hold_counters(UUID, 't1', expires='never'),
    lambda: mounts.hold_counters(UUID, 't1', expires=float('inf')),
    lambda: mounts.held_counters(UUID, 'a/b'),
    lambda: mounts.start_counters(UUID, dict(GOOD_COUNTERS,
                                             energy_uj={'package': -1})),
    lambda: mounts.start_counters(UUID, dict(GOOD_COUNTERS,
                                             energy_uj={'package': 2 ** 64})),
    lambda: mounts.start_counters(UUID, dict(GOOD_COUNTERS,
                                             shown_uj={'../x': 1})),
    lambda: mounts.start_counters(UUID, dict(GOOD_COUNTERS,
                                             shown_uj={'package': '1'})),
    lambda: mounts.start_counters(UUID, 'not a dict'),
])
def test_handoff_refuses_hostile_values(share, call):
    with pytest.raises(privsep.Refused):
        call()
    assert not (share / handoff.DIR_NAME / (UUID + '.hold')).exists()
    assert not (share / UUID).exists()


def test_handoff_never_follows_a_planted_symlink(share, victim):
    (share / handoff.DIR_NAME).symlink_to(victim)
    with pytest.raises(OSError):
        mounts.hold_counters(UUID, 't1')
    with pytest.raises(OSError):
        mounts.start_counters(UUID, GOOD_COUNTERS)
    assert os.listdir(victim) == ['secret']


def test_handoff_directory_is_root_only(share):
    mounts.hold_counters(UUID, 't1')
    mode = (share / handoff.DIR_NAME).stat().st_mode
    assert stat.S_IMODE(mode) == handoff.DIR_MODE == 0o700
    hold = share / handoff.DIR_NAME / (UUID + '.hold')
    assert stat.S_IMODE(hold.stat().st_mode) == handoff.FILE_MODE
