"""Helpers shared by the functional tests (real libvirtd, real guests)."""

import os

import pytest


def in_ci():
    """True when the environment variable CI is "true" (any case) or "1"."""
    return os.environ.get('CI', '').strip().lower() in ('true', '1', 'yes')


def require(condition, reason):
    """Skip the calling test unless ``condition`` holds.

    In CI (``CI=true``) nothing may be skipped: the test fails instead, with
    the same reason, so that a machine that cannot run the functional tests
    is noticed rather than silently passing.
    """
    if condition:
        return
    if in_ci():
        pytest.fail('CI=true and a requirement is not met: %s' % reason,
                    pytrace=False)
    pytest.skip(reason)


def require_guests(root_reason='needs root for libvirtd'):
    """Root, a QEMU that can run guests and a running libvirtd (started if
    needed), or skip (a failure in CI), with the reason."""
    from tests.functional.helpers import libvirtd
    require(os.geteuid() == 0, root_reason)
    require(libvirtd.can_run_guests(),
            'cannot run guests: %s' % libvirtd.unavailable_reason())
    try:
        libvirtd.ensure_libvirtd()
    except (libvirtd.LibvirtdError, OSError) as exc:
        require(False, 'libvirtd cannot be started: %s' % exc)
