import os

from scaph_openstack.inventory import hoststat
from scaph_openstack.inventory import qemu

STAT = '%d (%s) S 1 1 1 0 -1 4194560 1 0 0 0 %d %d 0 0 20 0 5 0 1 1 1\n'


def add_process(proc, pid, argv, utime=0, stime=0, comm='qemu'):
    d = proc / str(pid)
    os.makedirs(d)
    (d / 'cmdline').write_bytes(b'\0'.join(a.encode() for a in argv) + b'\0')
    (d / 'stat').write_text(STAT % (pid, comm, utime, stime))


def test_finds_libvirt_proxmox_rhel_and_plain_qemu(tmp_path):
    add_process(tmp_path, 100, [
        '/usr/bin/qemu-system-x86_64', '-name',
        'guest=instance-00000001,debug-threads=on', '-uuid',
        '6f1c7a9e-0000-4000-8000-000000000001', '-smp', '2,sockets=2'],
        utime=100, stime=50, comm='qemu-system-x86')
    add_process(tmp_path, 200, [
        '/usr/bin/kvm', '-id', '105', '-name', 'web,debug-threads=on',
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
    assert libvirt_vm.uuid == '6f1c7a9e-0000-4000-8000-000000000001'
    assert libvirt_vm.cpu_time_ns == 150 * hoststat.NS_PER_TICK
    assert libvirt_vm.vcpus == 2
    assert found['web'].uuid == 'proxmox-105'
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
    os.makedirs(tmp_path / '10')  # exited: no files
    names = [u.identity.name for u in
             qemu.QemuProcessInventory(str(tmp_path)).list_instances()]
    assert names == ['ok']
