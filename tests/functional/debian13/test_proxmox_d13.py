"""Proxmox VE 9 is built on Debian 13: both share paths of
tests/functional/test_proxmox.py again, with Debian 13's QEMU 10.0 (run in
root "a" of tools/debian13-stack, as ProxmoxVM(root=...) does) instead of
this host's QEMU 7.2. virtiofsd is 1.13 in both.

Everything QEMU opens must be visible in that root: the guest images,
sockets and serial log are in the stack's shared directory, and for 9p the
agent's read-only export_dir is bound, read-only, at the same path in the
root (a Proxmox node has no root to cross: QEMU sees the host's)."""

import os
import subprocess

import pytest

from tests.functional.test_proxmox import pve_agent_running
from tests.functional.test_proxmox import share_over_9p
from tests.functional.test_proxmox import share_over_virtiofs


@pytest.fixture
def d13_pve(tmp_path, d13_stack):
    """(the Proxmox-like node and agent, ProxmoxVM options) for QEMU 10."""
    root = d13_stack.hosts['a'].root
    binaries = '/usr/bin/qemu-system-*,%s/usr/bin/qemu-system-*' % root
    vm_options = {'root': root, 'images': d13_stack.images('amd64'),
                  'tmp_base': d13_stack.shared_dir}
    with pve_agent_running(tmp_path, {'qemu': {'binaries': binaries}}) \
            as running:
        export = running[3]
        inside = root + export
        os.makedirs(inside, exist_ok=True)
        subprocess.run(['mount', '--bind', export, inside], check=True)
        try:
            subprocess.run(['mount', '-o', 'remount,bind,ro', inside],
                           check=True)
            yield running, vm_options
        finally:
            subprocess.run(['umount', inside], capture_output=True)
            os.rmdir(inside)


def test_9p_args_line_with_qemu_10(d13_pve):
    running, vm_options = d13_pve
    exe = share_over_9p(running, '115', **vm_options)
    assert exe == vm_options['root'] + '/usr/bin/qemu-system-x86_64'


def test_virtiofs_directory_mapping_with_qemu_10(d13_pve):
    running, vm_options = d13_pve
    exe = share_over_virtiofs(running, '116', **vm_options)
    assert exe == vm_options['root'] + '/usr/bin/qemu-system-x86_64'
