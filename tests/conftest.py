"""Nothing is skipped in CI: with CI=true a skip is reported as a failure.

Tests that need root, libvirtd, QEMU or RabbitMQ may skip on a developer
laptop; in CI the machine is set up for them (tools/install-deps), so a
skip there means something is broken.
"""

import os

import pytest

IN_CI = os.environ.get('CI', '').lower() == 'true'


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, 'wasxfail'):
        report.outcome = 'failed'
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) \
            else report.longrepr
        report.longrepr = 'skipped in CI (CI=true forbids skips): %s' % (
            reason,)
