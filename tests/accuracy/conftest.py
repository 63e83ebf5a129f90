"""Shared preconditions of the accuracy tests that run real guests."""

import os

import pytest

from tests.functional import helpers
from tests.functional.helpers import libvirtd


@pytest.fixture(scope='session')
def libvirt_host():
    """Root, libvirtd, QEMU and two CPUs, or skip (a failure in CI)."""
    helpers.require((os.cpu_count() or 1) >= 2,
                    'needs two CPUs: one per emulated socket')
    helpers.require_guests()
    return libvirtd.DEFAULT_URI
