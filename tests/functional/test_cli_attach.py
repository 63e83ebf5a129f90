"""`scaph-openstack attach` against the real libvirtd.

The command runs as an operator runs it (a subprocess, as root, privsep
forked), with a configuration file of its own tag and share mounts (the
default file, /etc/scaph-openstack/scaph-openstack.conf, is the unit
tests' business: this machine's /etc is left alone). What it writes must
define and boot: a guest with NUMA cells (one inheriting the memory
access, one private) and a guest on huge pages mount the share and read
a value written on the host. A transient domain is refused and left as
it was, without a share directory.
"""

import contextlib
import os
import subprocess
import sys
import types
import xml.etree.ElementTree as ET

import pytest

from scaph_openstack.privsep import mounts
from tests.functional import helpers
from tests.functional.helpers import guest as guest_helper
from tests.functional.helpers import libvirtd

TAG = 'scaph-cli-test'
VALUE = 4242
ENERGY = 'intel-rapl:0/energy_uj'
NR_HUGEPAGES = '/proc/sys/vm/nr_hugepages'
HUGETLBFS = '/run/scaph-test-hugepages'


@pytest.fixture
def host(tmp_path):
    helpers.require_guests('needs root: libvirtd, privsep')
    work, export = str(tmp_path / 'work'), str(tmp_path / 'export')
    config = tmp_path / 'scaph-openstack.conf'
    config.write_text('[share]\nwork_dir = %s\nexport_dir = %s\ntag = %s\n'
                      % (work, export, TAG))
    # the share tmpfs and its read-only view, as the agent mounts them
    mounts.ensure_share_mounts_unprivileged(work, export, '4m')
    try:
        yield types.SimpleNamespace(work=work, export=export,
                                    config=str(config))
    finally:
        for path in (export, work):
            subprocess.run(['umount', path], capture_output=True)


def cli(host, *argv):
    return subprocess.run(
        [sys.executable, '-m', 'scaph_openstack.cli', *argv,
         '--config-file', host.config, '--uri', libvirtd.DEFAULT_URI],
        capture_output=True, text=True, timeout=60)


def attach_and_write(host):
    """before_create: attach, then put VALUE where the guest reads."""
    def attach(guest):
        result = cli(host, 'attach', guest.name)
        assert result.returncode == 0, result.stderr
        assert 'configuration: %s' % host.config in result.stdout
        guest_helper.write_atomic(
            os.path.join(host.work, guest.uuid, ENERGY), '%d\n' % VALUE)
    return attach


def memory(backing, cells=()):
    """A transform: the test guest's memfd shared memory replaced by
    ``backing`` (None: no <memoryBacking>), guest NUMA cells of 64 MiB,
    one per vCPU, each a memAccess value (None: no attribute)."""
    def transform(xml):
        root = ET.fromstring(xml)
        root.remove(root.find('memoryBacking'))
        if backing is not None:
            root.append(ET.fromstring(backing))
        if cells:
            numa = ET.SubElement(ET.SubElement(root, 'cpu'), 'numa')
            for i, access in enumerate(cells):
                cell = ET.SubElement(numa, 'cell', id=str(i), cpus=str(i),
                                     memory='64', unit='MiB')
                if access is not None:
                    cell.set('memAccess', access)
        return ET.tostring(root, encoding='unicode')
    return transform


def boots_and_reads_the_share(guest, host, check=None):
    with guest:
        defined = ET.fromstring(guest.domain().XMLDesc(0))
        guest.wait_for(r'SCAPH-MOUNT ok', timeout=180)
        guest.wait_for_value(ENERGY, VALUE, timeout=60)
        if check is not None:
            check(guest)
    (fs,) = defined.findall('devices/filesystem')
    assert fs.find('target').get('dir') == TAG
    assert fs.find('source').get('dir') == os.path.join(host.export,
                                                        guest.uuid)
    return defined


def test_numa_cells_get_shared_memory_and_the_guest_reads_the_share(host):
    guest = guest_helper.Guest(
        label='cli-numa', vcpus=2, memory_mb=128,
        cmdline_params={'tag': TAG, 'period': 1},
        xml_transform=memory(None, cells=(None, 'private')),
        before_create=attach_and_write(host))
    defined = boots_and_reads_the_share(guest, host)
    # the first cell inherits <access mode='shared'/> (libvirt 9.0 takes
    # that as shared), the private one had to change
    assert [c.get('memAccess') for c in
            defined.iterfind('cpu/numa/cell')] == [None, 'shared']
    assert defined.find('memoryBacking/access').get('mode') == 'shared'
    assert defined.find('memoryBacking/source').get('type') == 'memfd'


def _hugetlbfs_mounted():
    with open('/proc/mounts') as f:
        return any(line.split()[2] == 'hugetlbfs' for line in f)


def _write(path, value):
    with open(path, 'w') as f:
        f.write('%d\n' % value)


def _read_int(path):
    with open(path) as f:
        return int(f.read())


def _meminfo(key):
    with open('/proc/meminfo') as f:
        for line in f:
            name, _, value = line.partition(':')
            if name == key:
                return int(value.split()[0])
    raise KeyError(key)


def _on_huge_pages(pages):
    """A check: the running guest holds (or has reserved) its memory in
    huge pages."""
    def check(guest):
        held = (_meminfo('HugePages_Total') - _meminfo('HugePages_Free') +
                _meminfo('HugePages_Rsvd'))
        assert held >= pages, 'guest memory is not in huge pages'
    return check


@contextlib.contextmanager
def huge_pages(count):
    """``count`` more 2 MiB huge pages reserved and a hugetlbfs that
    libvirtd knows (it looks for one when it starts: restarted after
    mounting one, and again after unmounting it); all undone after."""
    before = _read_int(NR_HUGEPAGES)
    mount = not _hugetlbfs_mounted()
    try:
        _write(NR_HUGEPAGES, before + count)
    except OSError as exc:
        helpers.require(False, 'cannot reserve huge pages: %s' % exc)
    try:
        got = _read_int(NR_HUGEPAGES) - before
        helpers.require(got >= count, 'the kernel reserved %d of %d huge '
                        'pages' % (got, count))
        if mount:
            os.makedirs(HUGETLBFS, exist_ok=True)
            subprocess.run(['mount', '-t', 'hugetlbfs', 'scaph-test',
                            HUGETLBFS], check=True, capture_output=True)
            libvirtd.restart_libvirtd()
        try:
            yield
        finally:
            if mount:
                subprocess.run(['umount', HUGETLBFS], capture_output=True)
                os.rmdir(HUGETLBFS)
                libvirtd.restart_libvirtd()
    finally:
        _write(NR_HUGEPAGES, before)


def test_huge_pages_get_shared_access_and_the_guest_reads_the_share(host):
    guest = guest_helper.Guest(
        label='cli-hugepages', memory_mb=128,
        cmdline_params={'tag': TAG, 'period': 1},
        xml_transform=memory('<memoryBacking><hugepages/></memoryBacking>'),
        before_create=attach_and_write(host))
    with huge_pages(128 // 2 + 8):
        defined = boots_and_reads_the_share(guest, host,
                                            check=_on_huge_pages(128 // 2))
    backing = defined.find('memoryBacking')
    assert backing.find('hugepages') is not None
    assert backing.find('source') is None
    assert backing.find('access').get('mode') == 'shared'


def test_a_transient_domain_is_refused_and_left_alone(host):
    with guest_helper.Guest(label='cli-transient', persistent=False) as g:
        for command in ('attach', 'detach'):
            result = cli(host, command, g.name)
            assert result.returncode == 2, result.stdout
            assert '%s is a transient domain' % g.name in result.stderr
            assert 'virsh define' in result.stderr
        dom = g.domain()
        assert not dom.isPersistent() and dom.isActive()
        assert 'filesystem' not in dom.XMLDesc(0)
    assert os.listdir(host.work) == []
