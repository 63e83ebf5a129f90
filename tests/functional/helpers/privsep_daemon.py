"""The real privsep daemon (scaph_openstack.privsep.sys_admin), forked
from the test process with the configuration a test gives.

The daemon reads work_dir, export_dir, tmpfs_size and powercap_path from
its own configuration, the copy of cfg.CONF it got when forked: a test
that needs other values starts another daemon. The daemon is reaped when
the test leaves the block.

    with privsep_daemon.running({'share': {'work_dir': w, ...}}):
        mounts.ensure_share_mounts()
"""

import contextlib
import glob
import os
import time

from oslo_config import cfg
from oslo_privsep import priv_context

from scaph_openstack import conf as scaph_conf
from scaph_openstack import privsep
from tests.functional import helpers
from tests.unit import test_privsep_hostile


def _children():
    found = set()
    for path in glob.glob('/proc/self/task/*/children'):
        with open(path) as f:
            found.update(int(pid) for pid in f.read().split())
    return found


def _reap(pid, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done:
            return
        time.sleep(0.02)
    raise AssertionError('privsep daemon %d did not exit' % pid)


def stop():
    """Stop the daemon this process runs, if any (start_if_root's too)."""
    privsep.sys_admin.stop()


@contextlib.contextmanager
def running(sections):
    """A daemon whose configuration is cfg.CONF with ``sections``
    ({group: {option: value}}) on top, for the duration of the block."""
    helpers.require(os.geteuid() == 0, 'the privsep daemon is forked as '
                    'root')
    scaph_conf.register_opts(cfg.CONF)
    cfg.CONF.register_opts(privsep.PRIVSEP_OPTS, group=privsep.CFG_SECTION)
    stop()
    # Overrides cleared one by one: oslo_config's fixture would reset the
    # defaults too, the capabilities oslo.privsep set among them.
    overrides = test_privsep_hostile.Overrides()
    try:
        for group, options in sections.items():
            overrides.config(group, **options)
        before = _children()
        privsep.sys_admin.start(priv_context.Method.FORK)
        daemons = _children() - before
        try:
            yield
        finally:
            stop()
            for pid in daemons:
                _reap(pid)
    finally:
        overrides.clear()
