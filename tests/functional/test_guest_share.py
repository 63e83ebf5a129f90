"""End to end: a real guest reads its own energy from its share.

The real agent (fixture RAPL, real libvirtd inventory, share publisher on
a real tmpfs with its read-only view, mounted through privsep), the real
`scaph-openstack attach` command editing the domain the way the Nova hook
does, and a software-emulated guest that mounts the share with the mount
options of the cloud-init snippet we ship, then reads energy_uj every
second and tries to write, link, create and walk out.
"""

import os
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET

import pytest
import yaml

from scaph_openstack.privsep import mounts
from scaph_openstack.share import layout
from scaph_openstack.share import tree
from tests.functional import helpers
from tests.functional.helpers import agent as agent_helper
from tests.functional.helpers import guest as guest_helper
from tests.functional.helpers import privsep_daemon
from tests.functional.helpers import rapl
from tests.functional.nova import harness as nova_harness

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
CLOUD_INIT = os.path.join(ROOT, 'etc', 'cloud-init', 'scaphandre-share.yaml')
NOVA_NS = 'http://openstack.org/xmlns/libvirt/nova/1.1'
OTHER = '0ther000-0000-4000-8000-000000000000'
WRITE_PROBES = ('write-existing', 'append', 'truncate', 'chmod', 'create',
                'mkdir', 'symlink', 'hardlink', 'mkfifo', 'rename', 'fill',
                'rm', 'write-after-remount', 'create-after-remount')


def cloud_init_mount():
    """(tag, mount point, fstype, options) of the snippet tenants use."""
    with open(CLOUD_INIT) as f:
        entry = yaml.safe_load(f)['mounts'][0]
    return entry[0], entry[1], entry[2], entry[3]


class SnapshotWatcher(threading.Thread):
    """Every package_uj value the host ledger published for one instance."""

    def __init__(self, agent, uuid):
        super().__init__(daemon=True)
        self.agent, self.uuid = agent, uuid
        self.values = {0}              # the initial files say 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.wait(0.02):
            snap = self.agent.read_snapshot(check_stale=False)
            for item in (snap.instances if snap else ()):
                if item['uuid'] == self.uuid:
                    self.values.add(item['package_uj'])


@pytest.fixture
def agent_with_share(tmp_path):
    helpers.require_guests('needs root: mounts and libvirtd')
    work, export = str(tmp_path / 'work'), str(tmp_path / 'export')
    sections = {
        'agent': {'interval': 0.5, 'publishers': 'snapshot,share'},
        'energy': {'source': 'rapl', 'use_privsep': False,
                   'powercap_path': str(tmp_path / 'powercap')},
        'share': {'work_dir': work, 'export_dir': export,
                  'manage_mounts': True, 'tmpfs_size': '4m',
                  'min_interval': 0, 'resolution_uj': 1},
    }
    try:
        with rapl.MovingRapl(tmp_path / 'powercap'), \
                agent_helper.Agent(tmp_path, sections) as agent:
            agent.wait_for_snapshot(timeout=60)
            yield agent, work, export
    finally:
        for path in (export, work):
            subprocess.run(['umount', path], capture_output=True)


def create_share(work, export, uuid):
    """What nova-compute's privsep daemon does before the domain starts,
    with its own options naming this test's directories."""
    with privsep_daemon.running({'share': {'work_dir': work,
                                           'export_dir': export}}):
        mounts.create_instance_share(uuid)


def attach_with_cli(config_path):
    def attach(guest):
        result = subprocess.run(
            [sys.executable, '-m', 'scaph_openstack.cli', 'attach',
             guest.name, '--uri', 'qemu:///system', '--config-file',
             config_path], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert 'takes effect at the next start' in result.stdout
    return attach


def test_guest_reads_its_energy_and_cannot_touch_the_share(
        agent_with_share):
    agent, work, export = agent_with_share
    tag, mountpoint, fstype, options = cloud_init_mount()
    assert mounts._mountinfo()[export][1].split(',')[0] == 'ro'
    tree.ShareTree(work).write_instance(OTHER, layout.initial_files(OTHER))
    guest = guest_helper.Guest(
        label='share', before_create=attach_with_cli(agent.config_path),
        cmdline_params={'tag': tag, 'mnt': mountpoint, 'fstype': fstype,
                        'opts': options, 'probes': 1, 'period': 1})
    watcher = SnapshotWatcher(agent, guest.uuid)
    watcher.start()
    try:
        with guest:
            xml = guest.domain().XMLDesc(0)
            assert "type='virtiofs'" in xml and 'memfd' in xml
            assert os.path.join(export, guest.uuid) in xml
            guest.wait_for(r'SCAPH-MOUNT ok', timeout=120)
            guest.wait_probes(timeout=120)
            first = guest.line_count()
            reads = guest.wait_for_read(
                lambda r: len([x for x in guest.reads()
                               if x.line_no > first]) >= 5
                and r.int() > 0, timeout=120)
            values = [r.int() for r in guest.reads()]
            probes, walks = guest.probes(), guest.walks()
            listing = ' '.join(' '.join(entries)
                               for entries in guest.listings())
    finally:
        watcher.stop.set()
        watcher.join(5)
    assert reads
    assert values == sorted(values) and values[-1] > values[0]
    unknown = [v for v in values if v not in watcher.values]
    assert not unknown, ('guest read values the host never published: %s'
                         % unknown)
    for name in WRITE_PROBES:
        assert probes[name] != 0, '%s succeeded inside the guest' % name
    assert OTHER not in ' '.join(walks.values()) + listing
    assert 'intel-rapl:0/' in listing
    # nothing the guest tried reached the host tree
    assert sorted(os.listdir(os.path.join(work, guest.uuid))) == \
        sorted([layout.PACKAGE_DIR, layout.DRAM_DIR, layout.META_FILE])


# Devices of Nova's XML that need host resources this test does not have
# (disk images, a VNC port, a pty console): replaced by the test guest's
# kernel boot and file serial. Everything else is Nova's, as generated.
HOST_BOUND = ('disk', 'interface', 'serial', 'console', 'graphics', 'video')


def boot_nova_xml(nova_xml, share_dir):
    """A transform turning the test guest's XML into Nova's XML that
    boots our kernel: Nova's UUID (also in its sysinfo), memory backing,
    metadata, features and virtiofs filesystem are kept as generated."""
    def transform(ours_xml):
        nova = ET.fromstring(nova_xml)
        ours = ET.fromstring(ours_xml)
        for tag in ('name', 'description', 'os', 'on_reboot'):
            replace_child(nova, ours, tag)
        devices = nova.find('devices')
        for device in list(devices):
            if device.tag in HOST_BOUND:
                devices.remove(device)
        devices.append(ours.find('devices/serial'))
        for fs in devices.iterfind('filesystem'):
            fs.find('source').set('dir', share_dir)
        return ET.tostring(nova, encoding='unicode')
    return transform


def replace_child(target, source, tag):
    old, new = target.find(tag), source.find(tag)
    if old is not None:
        target.remove(old)
    if new is not None:
        target.insert(0, new)


def test_nova_generated_xml_boots_and_the_guest_reads_its_share(
        agent_with_share):
    """The XML scaphandre.LibvirtDriver made for a server booted through
    the Nova API (Nova's own functional harness), defined and started in
    the real libvirtd: Nova's memfd backing and virtiofs device work, the
    agent names the instance from Nova's metadata, the guest reads it."""
    agent, work, export = agent_with_share
    nova_xml = nova_harness.domain_xml(virt_type='qemu')
    nova_root = ET.fromstring(nova_xml)
    nova_name = nova_root.findtext(
        'metadata/{%s}instance/{%s}name' % (NOVA_NS, NOVA_NS))
    tag, mountpoint, fstype, options = cloud_init_mount()
    guest = guest_helper.Guest(
        label='nova-xml', uuid=nova_root.findtext('uuid'),
        before_create=lambda g: create_share(work, export, g.uuid),
        cmdline_params={'tag': tag, 'mnt': mountpoint, 'fstype': fstype,
                        'opts': options, 'period': 1})
    guest.xml_transform = boot_nova_xml(
        nova_xml, os.path.join(export, guest.uuid))
    with guest:
        defined = ET.fromstring(guest.domain().XMLDesc(0))
        assert defined.find('memoryBacking/source').get('type') == 'memfd'
        assert defined.find('memoryBacking/access').get('mode') == 'shared'
        guest.wait_for(r'SCAPH-MOUNT ok', timeout=120)
        first = guest.line_count()
        guest.wait_for_read(lambda r: r.line_no > first and r.int() > 0,
                            timeout=120)
        snap = agent.wait_for_snapshot(
            lambda s: any(i['uuid'] == guest.uuid and i['total_uj'] > 0
                          for i in s.instances), timeout=60)
    (item,) = [i for i in snap.instances if i['uuid'] == guest.uuid]
    assert item['nova'] and item['display_name'] == nova_name
    assert item['flavor'] and item['memory_mb'] == 512
