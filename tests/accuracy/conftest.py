"""Shared preconditions of the accuracy tests that run real guests."""

import os

import pytest

from tests.functional import helpers
from tests.functional.helpers import libvirtd


@pytest.fixture(scope='session')
def libvirt_host():
    """Root, libvirtd, QEMU and two CPUs, or skip (a failure in CI)."""
    helpers.require(os.geteuid() == 0, 'needs root for libvirtd')
    helpers.require(libvirtd.can_run_guests(),
                    'cannot run guests: %s' % libvirtd.unavailable_reason())
    helpers.require((os.cpu_count() or 1) >= 2,
                    'needs two CPUs: one per emulated socket')
    libvirtd.ensure_libvirtd()
    return libvirtd.DEFAULT_URI
