"""Run the real scaph-openstack-agent (or any daemon) in a functional test.

``ManagedProcess`` starts a command in its own session and always signals
the whole process group: oslo.service and cotyledon fork workers, and the
agent forks a privsep daemon, none of which may outlive a test. ``Agent``
writes a config file from a dict of sections and waits for the snapshot.

    with agent.Agent(tmp_path, {'agent': {'interval': 1},
                                'energy': {'source': 'simulated'}}) as a:
        snap = a.wait_for_snapshot(lambda s: s.running_instances)
        a.kill()    # kill -9, the snapshot stays as it was
"""

import copy
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

from scaph_openstack import snapshot as snapshot_mod


def venv_bin(name):
    """``name`` next to the running interpreter (the tests' virtualenv),
    else on PATH, else None."""
    candidate = os.path.join(os.path.dirname(sys.executable), name)
    if os.access(candidate, os.X_OK):
        return candidate
    return shutil.which(name)


def free_port():
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def render_value(value):
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, (list, tuple)):
        return ','.join(render_value(v) for v in value)
    if isinstance(value, dict):  # oslo.config DictOpt
        return ','.join('%s:%s' % (k, render_value(v))
                        for k, v in value.items())
    return str(value)


def write_config(path, sections):
    """Write an oslo.config INI file from {section: {option: value}}."""
    lines = []
    for section, options in sections.items():
        lines.append('[%s]' % section)
        lines.extend('%s = %s' % (k, render_value(v))
                     for k, v in options.items())
        lines.append('')
    with open(path, 'w') as f:
        f.write('\n'.join(lines))
    return path


def live_processes():
    """(pid, ppid, pgid) of every process alive now. Zombies are left
    out: PID 1 of a container may be slow to reap them."""
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % entry) as f:
                fields = f.read().rsplit(')', 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != 'Z':
            yield int(entry), int(fields[1]), int(fields[2])


def _group_alive(pgid):
    """True while a process of group ``pgid`` is alive."""
    return any(group == pgid for _pid, _ppid, group in live_processes())


class ProcessError(AssertionError):
    pass


class ManagedProcess:
    """A daemon in its own process group, logging to ``log_path``."""

    def __init__(self, argv, log_path, env=None, cwd=None, name=None):
        self.argv = list(argv)
        self.log_path = str(log_path)
        self.env = env
        self.cwd = cwd
        self.name = name or os.path.basename(self.argv[0])
        self.proc = None

    def start(self):
        if self.running:
            raise ProcessError('%s is already running' % self.name)
        with open(self.log_path, 'ab') as log:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd,
                start_new_session=True)
        return self

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def _signal_group(self, sig):
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def _wait_group(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None and \
                    not _group_alive(self.proc.pid):
                return True
            time.sleep(0.05)
        return False

    def stop(self, timeout=20):
        """SIGTERM to the group, SIGKILL what is left after ``timeout``.
        Returns True when it stopped gracefully."""
        if self.proc is None:
            return True
        self._signal_group(signal.SIGTERM)
        if self._wait_group(timeout):
            return True
        self.kill()
        return False

    def kill(self, timeout=10):
        """kill -9 the whole group, like a crash or the OOM killer."""
        if self.proc is None:
            return
        self._signal_group(signal.SIGKILL)
        if not self._wait_group(timeout):
            raise ProcessError('%s (group %d) survived SIGKILL for %ss'
                               % (self.name, self.proc.pid, timeout))

    def log_text(self):
        try:
            with open(self.log_path, errors='replace') as f:
                return f.read()
        except FileNotFoundError:
            return ''

    def tail(self, lines=40):
        return '\n'.join(self.log_text().splitlines()[-lines:])

    def check_alive(self):
        if not self.running:
            raise ProcessError('%s exited with %s; last lines of %s:\n%s'
                               % (self.name, self.proc.returncode,
                                  self.log_path, self.tail()))

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class Agent(ManagedProcess):
    """scaph-openstack-agent with a config made from ``sections``.

    Unless the sections say otherwise, the ledger and the snapshot go to
    ``workdir`` and only the snapshot publisher runs (no mounts needed).
    """

    DEFAULTS = {'agent': {'publishers': 'snapshot'}}

    def __init__(self, workdir, sections=None, executable=None,
                 name='scaph-openstack-agent', product_pacing=False):
        self.workdir = str(workdir)
        self.sections = copy.deepcopy(self.DEFAULTS)
        for section, options in (sections or {}).items():
            self.sections.setdefault(section, {}).update(options)
        agent = self.sections['agent']
        agent.setdefault('state_dir', os.path.join(self.workdir, 'state'))
        snap = self.sections.setdefault('snapshot', {})
        snap.setdefault('path', os.path.join(self.workdir, 'snapshot.json'))
        # Tests read the snapshot at the agent's own pace; the product's
        # pacing (``product_pacing``: 10 s) is what
        # tests/functional/test_publication.py and tests/unit/test_tick.py
        # check.
        if not product_pacing:
            snap.setdefault('min_interval', 0)
        os.makedirs(agent['state_dir'], exist_ok=True)
        self.config_path = write_config(
            os.path.join(self.workdir, '%s.conf' % name), self.sections)
        executable = executable or venv_bin('scaph-openstack-agent')
        if executable is None:
            raise ProcessError('scaph-openstack-agent is not installed '
                               '(pip install -e .)')
        super().__init__([executable, '--config-file', self.config_path],
                         os.path.join(self.workdir, '%s.log' % name),
                         name=name)

    @property
    def snapshot_path(self):
        return self.sections['snapshot']['path']

    def read_snapshot(self, check_stale=True):
        """The snapshot now, or None if there is none (yet)."""
        try:
            return snapshot_mod.read(self.snapshot_path,
                                     check_stale=check_stale)
        except snapshot_mod.SnapshotError:
            return None

    def wait_for_snapshot(self, predicate=None, timeout=30,
                          newer_than=None):
        """The first fresh snapshot (written after ``newer_than``, a
        timestamp, when given) for which ``predicate`` holds."""
        deadline = time.monotonic() + timeout
        snap = None
        while time.monotonic() < deadline:
            self.check_alive()
            snap = self.read_snapshot()
            if snap is not None and \
                    (newer_than is None or snap.time > newer_than) and \
                    (predicate is None or predicate(snap)):
                return snap
            time.sleep(0.2)
        raise ProcessError(
            'no matching snapshot at %s within %ss (last: %s); last lines '
            'of %s:\n%s' % (self.snapshot_path, timeout,
                            snap and snap.document, self.log_path,
                            self.tail()))
