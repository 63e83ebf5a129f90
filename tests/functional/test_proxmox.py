"""Proxmox VE's two share transports, end to end on real parts.

For each transport (9p ``args:`` before Proxmox VE 8.4, a directory
mapping and ``virtiofsN`` from 8.4 on): ``scaph-openstack proxmox-share
--apply`` edits the VM's configuration (through qm/pvesh stand-ins: there
is no Proxmox here, helpers/proxmox.py), the shipped hookscript runs in
Proxmox's calling convention and makes the share, QEMU starts with the
command line qemu-server generates from that configuration (virtiofsd
1.13 started the way qemu-server starts it), the real agent finds the VM
with the ``qemu`` inventory, and the guest runs the cloud-init snippet's
bootcmd, which finds its share whatever the tag, mounts it read-only,
reads a growing counter and fails every hostile probe.
"""

import contextlib
import os
import subprocess
import sys
import uuid as uuidlib

import pytest
import yaml

from scaph_openstack import proxmox
from scaph_openstack.share import layout
from scaph_openstack.share import tree
from tests.functional import helpers
from tests.functional.helpers import agent as agent_helper
from tests.functional.helpers import proxmox as pve
from tests.functional.helpers import rapl
from tests.functional.test_guest_share import CLOUD_INIT
from tests.functional.test_guest_share import SnapshotWatcher
from tests.functional.test_guest_share import WRITE_PROBES

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
HOOKSCRIPT = os.path.join(ROOT, 'etc', 'proxmox', 'scaph-share-hook')
VOLID = 'local:snippets/scaph-share-hook'
OTHER = 'proxmox-104-0ther000-0000-4000-8000-000000000000'


def snippet_bootcmd():
    with open(CLOUD_INIT) as f:
        (bootcmd,) = yaml.safe_load(f)['bootcmd']
    return bootcmd


@contextlib.contextmanager
def pve_agent_running(tmp_path, sections=None):
    """(node, agent, work, export): a Proxmox-like node and the agent
    with the qemu inventory and the share publisher, both reading the
    same configuration file (the hookscript's too); ``sections`` adds to
    that configuration."""
    helpers.require_guests('needs root: mounts, QEMU and virtiofsd as '
                           'Proxmox runs them')
    helpers.require(os.access(pve.VIRTIOFSD, os.X_OK),
                    'no Debian 13 root with virtiofsd 1.13 at %s: run '
                    'bash tools/debian13-stack setup' % pve.VIRTIOFSD)
    node = pve.PveNode(tmp_path / 'node')
    work, export = str(tmp_path / 'work'), str(tmp_path / 'export')
    config = {
        'agent': {'interval': 0.5, 'publishers': 'snapshot,share',
                  'inventory': 'qemu'},
        'energy': {'source': 'rapl', 'use_privsep': False,
                   'powercap_path': str(tmp_path / 'powercap')},
        'share': {'work_dir': work, 'export_dir': export,
                  'manage_mounts': True, 'tmpfs_size': '4m',
                  'min_interval': 0, 'resolution_uj': 1},
        'proxmox': {'pve_dir': node.pve_dir, 'node': node.node},
    }
    for section, options in (sections or {}).items():
        config.setdefault(section, {}).update(options)
    try:
        with rapl.MovingRapl(tmp_path / 'powercap'), \
                agent_helper.Agent(tmp_path, config) as agent:
            agent.wait_for_snapshot(timeout=60)
            yield node, agent, work, export
    finally:
        for path in (export, work):
            subprocess.run(['umount', path], capture_output=True)


@pytest.fixture
def pve_agent(tmp_path):
    with pve_agent_running(tmp_path) as running:
        yield running


def cli(node, agent, *argv):
    return subprocess.run(
        [sys.executable, '-m', 'scaph_openstack.cli'] + list(argv)
        + ['--config-file', agent.config_path], env=node.env(),
        capture_output=True, text=True, timeout=120)


def hook_env(node, agent):
    return node.env(SCAPH_OPENSTACK=os.path.join(
        os.path.dirname(sys.executable), 'scaph-openstack'),
        SCAPH_OPENSTACK_CONFIG=agent.config_path)


def new_vm(node, vmid, name='web'):
    smbios = str(uuidlib.uuid4())
    # Proxmox writes it as generated; the key is in lower case.
    node.write_vm(vmid, smbios.upper(), name=name)
    return proxmox.share_key(vmid, smbios)


def boot_and_read(node, agent, work, vmid, key, **vm_options):
    """Pre-start hookscript, QEMU as qemu-server starts it (ProxmoxVM with
    ``vm_options``), the guest's bootcmd and probes, checked; returns
    (QEMU's command line, its /proc/PID/exe, the SCAPH-AUTO lines)."""
    result = pve.run_hookscript(HOOKSCRIPT, vmid, 'pre-start',
                                hook_env(node, agent), stop_on_error=True)
    assert 'share of VM %s ready' % vmid in result.stdout
    assert sorted(os.listdir(os.path.join(work, key))) == sorted(
        [layout.PACKAGE_DIR, layout.META_FILE])
    tree.ShareTree(work).write_instance(OTHER, layout.initial_files(OTHER))
    watcher = SnapshotWatcher(agent, key)
    watcher.start()
    vm = pve.ProxmoxVM(node, vmid, {'tag': 'auto', 'probes': 1,
                                     'period': 1}, bootcmd=snippet_bootcmd(),
                       **vm_options)
    try:
        with vm:
            cmdline = vm.cmdline()
            exe = os.readlink('/proc/%d/exe' % vm.qemu.pid)
            vm.wait_for(r'SCAPH-MOUNT ok', timeout=300)
            vm.wait_probes(timeout=240)
            first = vm.line_count()
            vm.wait_for_read(lambda r: r.line_no > first and r.int() > 0
                             and len([x for x in vm.reads()
                                      if x.line_no > first]) >= 4,
                             timeout=180)
            snap = agent.wait_for_snapshot(
                lambda s: any(i['uuid'] == key and i['total_uj'] > 0
                              for i in s.instances), timeout=60)
            values = [r.int() for r in vm.reads()]
            probes, walks = vm.probes(), vm.walks()
            listing = ' '.join(' '.join(e) for e in vm.listings())
            auto = [rest for _, rest in vm.markers('AUTO')]
    finally:
        watcher.stop.set()
        watcher.join(5)
    assert pve.run_hookscript(HOOKSCRIPT, vmid, 'post-stop',
                              hook_env(node, agent)).returncode == 0
    (item,) = [i for i in snap.instances if i['uuid'] == key]
    assert item['name'] == 'web'
    assert cmdline[:3] == ['/usr/bin/kvm', '-id', vmid]
    assert values == sorted(values) and values[-1] > values[0]
    unknown = [v for v in values if v not in watcher.values]
    assert not unknown, 'the guest read values never published: %s' % unknown
    for name in WRITE_PROBES:
        assert probes[name] != 0, '%s succeeded inside the guest' % name
    assert OTHER not in ' '.join(walks.values()) + listing
    assert 'intel-rapl:0/' in listing
    # nothing the guest tried reached the host tree
    assert set(os.listdir(os.path.join(work, key))) <= {
        layout.PACKAGE_DIR, layout.DRAM_DIR, layout.META_FILE}
    return cmdline, exe, auto


def share_over_9p(running, vmid, **vm_options):
    """The 9p path for VM ``vmid``, from proxmox-share to the guest."""
    node, agent, work, export = running
    key = new_vm(node, vmid)
    result = cli(node, agent, 'proxmox-share', vmid, '--transport', '9p',
                 '--apply')
    assert result.returncode == 0, result.stderr
    options = node.options(vmid)
    assert options['hookscript'] == VOLID
    assert 'readonly=on' in options['args']
    assert 'path=%s/%s ' % (export, key) in options['args']
    cmdline, exe, auto = boot_and_read(node, agent, work, vmid, key,
                                       **vm_options)
    assert 'virtio-9p-pci,id=fs-scaph,fsdev=fsdev-scaph,' \
           'mount_tag=scaphandre' in cmdline
    assert auto == ['scaph-openstack: 9p share scaphandre mounted at '
                    '/var/scaphandre']
    return exe


def share_over_virtiofs(running, vmid, **vm_options):
    """The directory mapping path for VM ``vmid``, from proxmox-share to
    the guest."""
    node, agent, work, export = running
    key = new_vm(node, vmid)
    result = cli(node, agent, 'proxmox-share', vmid, '--apply')
    assert result.returncode == 0, result.stderr
    options = node.options(vmid)
    dirid = proxmox.mapping_id(key)
    assert options['virtiofs0'] == dirid and len(dirid) <= 36
    assert options['hookscript'] == VOLID
    assert node.mapping_path(dirid) == '%s/%s' % (export, key)
    cmdline, exe, auto = boot_and_read(node, agent, work, vmid, key,
                                       **vm_options)
    assert 'vhost-user-fs-pci,queue-size=1024,chardev=virtiofs0,tag=%s' \
           % dirid in cmdline
    assert 'memory-backend-memfd,id=virtiofs-mem,size=256M,share=on' \
           in cmdline
    # The tag is not the snippet's "scaphandre": found from the SMBIOS uuid.
    assert auto == ['scaph-openstack: virtiofs share %s mounted at '
                    '/var/scaphandre' % dirid]
    return exe


def test_9p_args_line_before_proxmox_8_4(pve_agent):
    assert share_over_9p(pve_agent, '105') == pve.QEMU


def test_virtiofs_directory_mapping_from_proxmox_8_4(pve_agent):
    assert share_over_virtiofs(pve_agent, '106') == pve.QEMU


def test_hookscript_refuses_a_clone_of_either_transport(pve_agent):
    """A clone keeps its source's args: and virtiofs0: lines and gets a
    new uuid: its pre-start fails, and nothing is created for it, until
    proxmox-share has given it its own share."""
    node, agent, work, export = pve_agent
    env = hook_env(node, agent)
    for source, clone, transport in (('201', '202', '9p'),
                                      ('203', '204', 'virtiofs')):
        new_vm(node, source)
        assert cli(node, agent, 'proxmox-share', source, '--transport',
                   transport, '--apply').returncode == 0
        with open(node.config_path(source)) as f:
            text = f.read()
        source_uuid = node.options(source)['smbios1'].split('=')[1]
        clone_uuid = str(uuidlib.uuid4())
        with open(node.config_path(clone), 'w') as f:
            f.write(text.replace(source_uuid, clone_uuid))
        clone_key = proxmox.share_key(clone, clone_uuid)
        with pytest.raises(pve.HookscriptError) as refused:
            pve.run_hookscript(HOOKSCRIPT, clone, 'pre-start', env,
                               stop_on_error=True)
        message = str(refused.value)
        assert 'VM %s not started' % clone in message
        assert proxmox.share_key(source, source_uuid) in message
        assert 'proxmox-share %s --apply' % clone in message
        assert not os.path.exists(os.path.join(work, clone_key))
        for phase in ('post-start', 'pre-stop', 'post-stop'):
            assert pve.run_hookscript(HOOKSCRIPT, clone, phase,
                                      env).returncode == 0
        # Given its own share, the clone starts.
        assert cli(node, agent, 'proxmox-share', clone, '--transport',
                   transport, '--apply').returncode == 0
        pve.run_hookscript(HOOKSCRIPT, clone, 'pre-start', env,
                           stop_on_error=True)
        assert os.path.isdir(os.path.join(work, clone_key))
        assert proxmox.share_key(source, source_uuid) not in ''.join(
            node.options(clone).values())


def test_hookscript_without_smbios_uuid_stops_the_start(pve_agent, tmp_path):
    node, agent, work, export = pve_agent
    with open(node.config_path('300'), 'w') as f:
        f.write('name: old\nmemory: 256\n')
    with pytest.raises(pve.HookscriptError, match='qm set 300 --smbios1'):
        pve.run_hookscript(HOOKSCRIPT, '300', 'pre-start',
                           hook_env(node, agent), stop_on_error=True)
    copy = tmp_path / 'not-executable'
    copy.write_text(open(HOOKSCRIPT).read())
    with pytest.raises(pve.HookscriptError, match='not executable'):
        pve.run_hookscript(str(copy), '300', 'pre-start',
                           hook_env(node, agent), stop_on_error=True)


def total_of(snap, key):
    return [i['total_uj'] for i in snap.instances if i['uuid'] == key][0]


def run_until_it_counts(node, agent, work, vmid, key):
    """Start VM ``vmid`` (busy guest) and stop it once its total has grown
    threefold; returns (its first published total, its share's last
    counter)."""
    pve.run_hookscript(HOOKSCRIPT, vmid, 'pre-start', hook_env(node, agent),
                       stop_on_error=True)
    with pve.ProxmoxVM(node, vmid, {'load': 'busy'}):
        first = total_of(agent.wait_for_snapshot(
            lambda s: any(i['uuid'] == key and i['total_uj'] > 0
                          for i in s.instances), timeout=120), key)
        agent.wait_for_snapshot(lambda s: total_of(s, key) > 3 * first,
                                timeout=120)
        with open(os.path.join(work, key, 'intel-rapl:0', 'energy_uj')) as f:
            return first, int(f.read())


def test_a_reused_vmid_starts_from_zero(pve_agent):
    """VM 107 is destroyed and its VMID given to a new VM (a new smbios1
    uuid, as Proxmox generates one): the qemu inventory reads -id and
    -smbios from the new QEMU's command line, keys it anew, and its
    counter starts from zero in its own directory; the old VM's is left
    as it was."""
    node, agent, work, export = pve_agent
    old_key = new_vm(node, '107')
    assert cli(node, agent, 'proxmox-share', '107', '--transport', '9p',
               '--apply').returncode == 0
    _, old_total = run_until_it_counts(node, agent, work, '107', old_key)
    new_key = new_vm(node, '107')
    assert cli(node, agent, 'proxmox-share', '107', '--transport', '9p',
               '--apply').returncode == 0
    new_first, _ = run_until_it_counts(node, agent, work, '107', new_key)
    assert new_key != old_key
    # The new VM's first published total is its own: below what the old
    # one had reached, which its directory still holds.
    assert new_first < old_total
    with open(os.path.join(work, old_key, 'intel-rapl:0', 'energy_uj')) as f:
        assert int(f.read()) == old_total
