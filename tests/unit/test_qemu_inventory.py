import os

import pytest

from scaph_openstack.inventory import hoststat
from scaph_openstack.inventory import qemu

STAT = ('%d (%s) S 1 1 1 0 -1 4194560 1 0 0 0 %d %d 0 0 20 0 5 0 %d 1 1\n')
STATUS = 'Name:\tqemu\nUmask:\t0022\nState:\tS (sleeping)\nUid:\t%s\n'
VICTIM = '6f1c7a9e-0000-4000-8000-000000000001'
SMBIOS_A = '0a5b2c3d-1111-4222-8333-444455556666'
SMBIOS_B = '9e8d7c6b-aaaa-4bbb-8ccc-ddddeeeeffff'


def add_process(proc, pid, argv, utime=0, stime=0, comm='qemu', uids=0,
                exe=None, start=1):
    """A fixture /proc/PID: cmdline, stat, status (Uid:), exe (a symlink,
    as in procfs; by default the absolute argv[0], or /usr/bin/<it>)."""
    d = proc / str(pid)
    os.makedirs(d)
    (d / 'cmdline').write_bytes(b'\0'.join(a.encode() for a in argv) + b'\0')
    (d / 'stat').write_text(STAT % (pid, comm, utime, stime, start))
    if isinstance(uids, int):
        uids = (uids,) * 4
    (d / 'status').write_text(STATUS % '\t'.join(str(u) for u in uids))
    if exe is None:
        exe = argv[0] if argv[0].startswith('/') else '/usr/bin/' + argv[0]
    if exe is not False:
        os.symlink(exe, d / 'exe')
    return d


def listed(proc, **kwargs):
    return {u.uuid: u for u in
            qemu.QemuProcessInventory(str(proc), **kwargs).list_instances()}


def test_finds_libvirt_proxmox_rhel_and_plain_qemu(tmp_path):
    add_process(tmp_path, 100, [
        '/usr/bin/qemu-system-x86_64', '-name',
        'guest=instance-00000001,debug-threads=on', '-uuid', VICTIM,
        '-smp', '2,sockets=2'],
        utime=100, stime=50, comm='qemu-system-x86')
    add_process(tmp_path, 200, [
        '/usr/bin/kvm', '-id', '105', '-name', 'web,debug-threads=on',
        '-smbios', 'type=1,uuid=%s' % SMBIOS_A,
        '-smp', '4,sockets=1,cores=4'], utime=7, comm='kvm')
    add_process(tmp_path, 300, ['/usr/libexec/qemu-kvm', '-name', 'rhel'],
                comm='qemu-kvm')
    add_process(tmp_path, 400, ['/usr/bin/python3', 'qemu-system-x86_64'])
    add_process(tmp_path, 500, ['/usr/bin/kvm-ok'])
    os.makedirs(tmp_path / 'self')
    found = {i.identity.name: i for i in
             qemu.QemuProcessInventory(str(tmp_path)).list_instances()}
    assert sorted(found) == ['instance-00000001', 'rhel', 'web']
    libvirt_vm = found['instance-00000001']
    assert libvirt_vm.uuid == VICTIM
    assert libvirt_vm.cpu_time_ns == 150 * hoststat.NS_PER_TICK
    assert libvirt_vm.vcpus == 2
    assert found['web'].uuid == 'proxmox-105-' + SMBIOS_A
    assert found['web'].vcpus == 4
    assert found['rhel'].uuid == 'qemu-name-rhel'


def test_comm_with_spaces_and_parens(tmp_path):
    add_process(tmp_path, 7, ['qemu-system-aarch64', '-name', 'a'],
                utime=3, stime=4, comm='CPU 0/KVM) x')
    (usage,) = qemu.QemuProcessInventory(str(tmp_path)).list_instances()
    assert usage.cpu_time_ns == 7 * hoststat.NS_PER_TICK


def test_vanishing_and_garbage_processes_are_skipped(tmp_path):
    add_process(tmp_path, 8, ['qemu-system-x86_64', '-name', 'ok'])
    add_process(tmp_path, 9, ['qemu-system-x86_64', '-name', 'bad'])
    (tmp_path / '9' / 'stat').write_text('garbage')
    add_process(tmp_path, 11, ['qemu-system-x86_64', '-name', 'no-status'])
    os.unlink(tmp_path / '11' / 'status')
    os.makedirs(tmp_path / '10')  # exited: no files
    names = [u.identity.name for u in
             qemu.QemuProcessInventory(str(tmp_path)).list_instances()]
    assert names == ['ok']


# -- whom to believe ---------------------------------------------------------

def test_another_users_process_cannot_claim_a_vm(tmp_path):
    """A local user runs the real QEMU binary (anyone may) with a victim's
    -uuid, or any program under exec -a: not counted, and the victim's
    counters stay its own. All four uids of /proc/PID/status count: the
    owner of the /proc/PID directory is the effective uid alone (0 for
    the (1000, 0, 0, 0) process) and the files' is root for a
    non-dumpable process (the fixture's are the test user's, root in
    CI)."""
    add_process(tmp_path, 100, ['/usr/bin/qemu-system-x86_64', '-name',
                                'guest=victim', '-uuid', VICTIM], utime=10)
    add_process(tmp_path, 200, ['/usr/bin/qemu-system-x86_64', '-name',
                                'guest=evil', '-uuid', VICTIM],
                utime=99999, uids=1000)
    # setuid-like mixes: a root effective uid is not enough.
    add_process(tmp_path, 300, ['qemu-system-x86_64', '-uuid', VICTIM],
                utime=99999, uids=(1000, 0, 0, 0))
    add_process(tmp_path, 400, ['/usr/bin/kvm', '-id', '105', '-smbios',
                                'type=1,uuid=' + SMBIOS_A], uids=1000)
    found = listed(tmp_path)
    assert list(found) == [VICTIM]
    assert found[VICTIM].identity.name == 'victim'
    assert found[VICTIM].cpu_time_ns == 10 * hoststat.NS_PER_TICK
    # With the user allowed, its process counts (and, same key, the last
    # one listed wins: what the old inventory did with everyone).
    assert 'proxmox-105-' + SMBIOS_A in listed(
        tmp_path, allowed_uids={0, 1000})


@pytest.mark.parametrize('exe,counted', [
    ('/usr/bin/qemu-system-x86_64', True),
    ('/usr/bin/qemu-system-x86_64 (deleted)', True),   # upgraded meanwhile
    ('/usr/bin/kvm', True),
    ('/usr/libexec/qemu-kvm', True),
    ('/usr/bin/sleep', False),                # root's exec -a qemu-system-...
    ('/tmp/qemu-system-x86_64', False),
    ('/usr/bin/x/qemu-system-x86_64', False),  # '*' stays in its directory
    ('/usr/bin/qemu-system-x86_64/../../../tmp/x', False),
    (False, False),                            # exe unreadable
])
def test_only_known_qemu_binaries_count(tmp_path, exe, counted):
    add_process(tmp_path, 100, ['/usr/bin/qemu-system-x86_64', '-uuid',
                                VICTIM], exe=exe)
    assert (VICTIM in listed(tmp_path)) is counted


def test_binaries_and_users_options(tmp_path):
    add_process(tmp_path, 100, ['qemu-system-x86_64', '-uuid', VICTIM],
                exe='/opt/qemu/bin/qemu-system-x86_64', uids=107)
    assert listed(tmp_path) == {}
    assert VICTIM in listed(tmp_path, allowed_uids={107},
                            binaries=['/opt/qemu/bin/qemu-system-*'])
    assert qemu.resolve_users(['root', ' 107', 'no-such-user-scaph']) == {
        0, 107}


def test_exe_unreadable_for_lack_of_ptrace_is_refused(tmp_path, monkeypatch):
    add_process(tmp_path, 100, ['qemu-system-x86_64', '-uuid', VICTIM])

    def denied(*args, **kwargs):
        raise PermissionError(13, 'Permission denied')

    monkeypatch.setattr(qemu.os, 'readlink', denied)
    inventory = qemu.QemuProcessInventory(str(tmp_path))
    assert inventory.list_instances() == ()
    assert 'CAP_SYS_PTRACE' in inventory._refused['100']


def test_a_reused_pid_never_mixes_two_processes(tmp_path, monkeypatch):
    """The user's process 7 claims the victim's uuid; right after its
    cmdline is read it exits and root's QEMU gets pid 7. Every read goes
    through the first process's directory: the status read is the user's
    (refused), not root's (which would credit the user's argv)."""
    add_process(tmp_path, 7, ['qemu-system-x86_64', '-uuid', VICTIM],
                uids=1000)
    add_process(tmp_path / 'next', 7, ['qemu-system-x86_64', '-uuid',
                                       SMBIOS_B])
    real_read = qemu.QemuProcessInventory._read

    def read_then_reuse(dir_fd, name, binary=False):
        text = real_read(dir_fd, name, binary)
        if name == 'cmdline' and not (tmp_path / 'gone').exists():
            os.rename(tmp_path / '7', tmp_path / 'gone')
            os.rename(tmp_path / 'next' / '7', tmp_path / '7')
        return text

    monkeypatch.setattr(qemu.QemuProcessInventory, '_read',
                        staticmethod(read_then_reuse))
    assert listed(tmp_path) == {}


# -- keys --------------------------------------------------------------------

def proxmox_argv(vmid, *extra):
    return ['/usr/bin/kvm', '-id', str(vmid), '-name',
            'vm%s,debug-threads=on' % vmid] + list(extra)


def test_proxmox_key_survives_restarts_not_vmid_reuse(tmp_path):
    """VM 105 stops and starts (new pid, new start time, same smbios1
    uuid): same key, its counters go on. VM 105 is destroyed and the VMID
    given to a new VM (Proxmox generates a new smbios1 uuid on create and
    clone): a new key, zero counters, another share directory."""
    key_a = 'proxmox-105-' + SMBIOS_A
    add_process(tmp_path, 1000, proxmox_argv(105, '-smbios',
                                             'type=1,uuid=' + SMBIOS_A),
                start=500)
    assert list(listed(tmp_path)) == [key_a]
    os.rename(tmp_path / '1000', tmp_path / 'old-1000')
    add_process(tmp_path, 2000, proxmox_argv(105, '-smbios',
                                             'type=1,uuid=' + SMBIOS_A),
                start=90000)
    assert list(listed(tmp_path)) == [key_a]
    os.rename(tmp_path / '2000', tmp_path / 'old-2000')
    add_process(tmp_path, 3000, proxmox_argv(105, '-smbios',
                                             'type=1,uuid=' + SMBIOS_B))
    assert list(listed(tmp_path)) == ['proxmox-105-' + SMBIOS_B]


def test_proxmox_smbios_parsing(tmp_path):
    # qemu-server sorts the fields (uuid after manufacturer, product...)
    # and doubles commas inside values; upper case is the same uuid.
    argv = proxmox_argv(
        106, '-smbios', 'type=0,uuid=' + SMBIOS_B, '-smbios',
        'type=1,manufacturer=a,,uuid=%s,product=p,uuid=%s' % (
            SMBIOS_B, SMBIOS_A.upper()))
    assert qemu.smbios_uuid(argv) == SMBIOS_A
    assert qemu.smbios_uuid(proxmox_argv(
        106, '-smbios', 'type=1,manufacturer=x,,uuid=' + SMBIOS_B)) is None
    assert qemu.smbios_uuid(proxmox_argv(
        106, '-smbios', 'type=1,uuid=../../etc')) is None
    assert qemu.qemu_opts('a=1,,2,b,c=') == [('a', '1,2'), ('', 'b'),
                                             ('c', '')]


def test_proxmox_without_smbios_is_keyed_per_process(tmp_path):
    """The last resort: the VMID, the host's boot id and the QEMU's start
    time. A new VM on a reused VMID never inherits; the price is a new
    key (zero counters) at each start of such a VM."""
    random = tmp_path / 'sys' / 'kernel' / 'random'
    os.makedirs(random)
    (random / 'boot_id').write_text('3f2a9c1e-5b7d-4e8f-9a0b-1c2d3e4f5a6b\n')
    add_process(tmp_path, 1000, proxmox_argv(105), start=500)
    assert list(listed(tmp_path)) == ['proxmox-105-boot-3f2a9c1e-500']
    os.rename(tmp_path / '1000', tmp_path / 'old-1000')
    add_process(tmp_path, 1001, proxmox_argv(105), start=777)
    assert list(listed(tmp_path)) == ['proxmox-105-boot-3f2a9c1e-777']


def test_keys_are_share_directory_names(tmp_path):
    from scaph_openstack.share import layout
    for key in ('proxmox-105-' + SMBIOS_A, 'proxmox-4294967295-boot-'
                '3f2a9c1e-18446744073709551615'):
        assert layout.instance_dir_name(key) == key
