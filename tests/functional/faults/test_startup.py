"""Startup: a service that fails loudly (doc/faults.md, "Startup").

The real launcher: ``scaph-openstack-agent --config-file ...`` in its own
process group, oslo.service's threading backend (cotyledon) forking its
worker, the worker forking privsep when root. Simulated energy (no RAPL
here), the ``qemu`` inventory on an empty fixture /proc (no libvirtd
needed), the snapshot publisher.

Each fatal case must end the whole service (master included) within
seconds with exit status 2, one line on stderr that names the fix, no
traceback anywhere, no worker respawned, no READY=1 sent, no process
left. And READY=1 must reach NOTIFY_SOCKET only once the first snapshot
is written and the share mounts are there.
"""

import os
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from scaph_openstack import snapshot as snapshot_mod
from tests.functional import helpers
from tests.functional.faults import support
from tests.functional.helpers import agent as agent_helper

INTERVAL = 0.5
EXIT_WITHIN_S = 10.0
WORKER_STARTS = 'Agent worker '      # + pid + ' starting', once per worker
RESPAWN = 'exited with status'      # cotyledon: a worker died on its own


class Run:
    """One agent process group: stdout (the log) to a file, stderr kept
    apart, NOTIFY_SOCKET on a datagram socket of our own."""

    def __init__(self, tmp_path, sections, ledger_text=None, prefix=()):
        self.dir = str(tmp_path)
        self.prefix = list(prefix)
        state = os.path.join(self.dir, 'state')
        os.makedirs(state, exist_ok=True)
        proc = os.path.join(self.dir, 'proc')
        os.makedirs(proc, exist_ok=True)
        self.sections = {
            'agent': {'interval': INTERVAL, 'state_dir': state,
                      'publishers': 'snapshot', 'inventory': 'qemu'},
            'energy': {'source': 'simulated'},
            'qemu': {'proc_path': proc},
            'snapshot': {'path': os.path.join(self.dir, 'snapshot.json')},
        }
        for section, options in sections.items():
            self.sections.setdefault(section, {}).update(options)
        if ledger_text is not None:
            with open(os.path.join(state, 'ledger.json'), 'w') as f:
                f.write(ledger_text)
        self.config = agent_helper.write_config(
            os.path.join(self.dir, 'agent.conf'), self.sections)
        # A short path: sun_path holds 108 bytes.
        self._sockdir = tempfile.mkdtemp(prefix='scaph-notify-')
        self.notify_path = os.path.join(self._sockdir, 'notify')
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        self.stdout_path = os.path.join(self.dir, 'agent.log')
        self.stderr_path = os.path.join(self.dir, 'agent.err')
        self.proc = None
        self.started = None

    @property
    def snapshot_path(self):
        return self.sections['snapshot']['path']

    def start(self):
        executable = agent_helper.venv_bin('scaph-openstack-agent')
        assert executable, 'scaph-openstack-agent is not installed'
        env = dict(os.environ, NOTIFY_SOCKET=self.notify_path)
        with open(self.stdout_path, 'wb') as out, \
                open(self.stderr_path, 'wb') as err:
            self.started = time.monotonic()
            self.proc = subprocess.Popen(
                self.prefix + [executable, '--config-file', self.config],
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
                start_new_session=True)
        return self

    def wait_exit(self, timeout):
        """(exit status or None if still running, seconds)."""
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            status = None
        return status, time.monotonic() - self.started

    def group_alive(self):
        return any(group == self.proc.pid for _pid, _ppid, group
                   in agent_helper.live_processes())

    def wait_group_gone(self, timeout=5.0):
        deadline = time.monotonic() + timeout
        while self.group_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        return not self.group_alive()

    def next_message(self, timeout):
        """The next datagram on NOTIFY_SOCKET, as soon as it comes; None
        if none comes within ``timeout``."""
        self.notify.settimeout(timeout)
        try:
            return self.notify.recv(4096)
        except TimeoutError:
            return None

    def messages(self, timeout):
        """Every datagram on NOTIFY_SOCKET within ``timeout``."""
        got = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return got
            message = self.next_message(left)
            if message is None:
                return got
            got.append(message)

    def stderr(self):
        with open(self.stderr_path, errors='replace') as f:
            return f.read()

    def stdout(self):
        with open(self.stdout_path, errors='replace') as f:
            return f.read()

    def close(self):
        if self.proc is not None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                if not self.group_alive():
                    break
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                self.wait_group_gone(10)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
        self.notify.close()
        try:
            os.unlink(self.notify_path)
            os.rmdir(self._sockdir)
        except OSError:
            pass


@pytest.fixture
def run(tmp_path):
    runs = []

    def make(sections=None, ledger_text=None, prefix=()):
        r = Run(tmp_path, sections or {}, ledger_text, prefix)
        runs.append(r)
        return r
    yield make
    for r in runs:
        r.close()


@pytest.fixture
def busy_port():
    """A port something else listens on."""
    sock = socket.socket()
    sock.bind(('127.0.0.1', 0))
    sock.listen()
    yield sock.getsockname()[1]
    sock.close()


def _fatal_cases():
    # id: (sections, ledger text, what the line must say, where checked)
    return {
        'corrupt-ledger': ({}, 'garbage{', ['ledger', 'is unusable',
                                            'move it aside'], 'master'),
        'list-ledger': ({}, '[]', ['ledger', 'is unusable',
                                   'move it aside'], 'master'),
        'bad-plugin': ({'agent': {'inventory': 'nope'}}, None,
                       ['[agent] inventory = nope', 'one of:', 'libvirt',
                        'qemu'], 'master'),
        'idle-power': ({'attribution': {'idle_power': 'package-0:abc'}},
                       None, ['[attribution]', "'abc'"], 'master'),
        'bad-value': ({'agent': {'interval': 'abc'}}, None,
                      ['[agent] interval', "'abc'", 'fix the value'],
                      'master'),
        'bad-choice': ({'attribution': {'idle_policy': 'everyone'}}, None,
                       ['[attribution] idle_policy', 'everyone',
                        'fix the value'], 'master'),
        'port-in-use': (None, None, ['publisher prometheus',
                                     'Address already in use',
                                     '[prometheus]'], 'worker'),
        'share-mount': (None, None, ['publisher share', '[share] work_dir'],
                        'worker'),
        'privsep-caps': ({}, None, ['privsep', 'CAP_SYS_ADMIN',
                                    'bounding set'], 'master'),
    }


# What systemd's CapabilityBoundingSet= does, without CAP_SYS_ADMIN.
NO_SYS_ADMIN = ['setpriv', '--bounding-set',
                '-all,+dac_override,+dac_read_search,+fowner,+chown']


FATAL = _fatal_cases()


@pytest.mark.parametrize('case', sorted(FATAL))
def test_fatal_startup_error_stops_the_whole_service_in_one_line(
        run, tmp_path, busy_port, case, record_property):
    sections, ledger_text, needles, where = FATAL[case]
    if case == 'port-in-use':
        sections = {'agent': {'publishers': 'snapshot,prometheus'},
                    'prometheus': {'listen_address': '127.0.0.1',
                                   'port': busy_port}}
    elif case == 'share-mount':
        helpers.require(os.geteuid() == 0, 'needs root: privsep mounts')
        blocker = tmp_path / 'a-file'
        blocker.write_text('not a directory\n')
        sections = {'agent': {'publishers': 'snapshot,share'},
                    'share': {'manage_mounts': True,
                              'work_dir': str(blocker / 'work'),
                              'export_dir': str(blocker / 'export')}}
    prefix = ()
    if case == 'privsep-caps':
        helpers.require(os.geteuid() == 0, 'needs root: privsep')
        prefix = NO_SYS_ADMIN
    r = run(sections, ledger_text, prefix).start()
    status, elapsed = r.wait_exit(EXIT_WITHIN_S + 5)
    gone = r.wait_group_gone() if status is not None else False
    ready = r.messages(0.2)
    err = r.stderr()
    out = r.stdout()
    lines = [line for line in err.splitlines() if line.strip()]
    starts = out.count(WORKER_STARTS)
    support.summary(
        record_property, 'startup-%s' % case,
        'exit status %s after %.2fs (checked in the %s), %d worker start(s), '
        '%d respawn(s), process group gone %s, notify messages %s, stderr: '
        '%r' % (status, elapsed, where, starts, out.count(RESPAWN), gone,
                ready, err[-400:]))
    assert status is not None, (
        'still running after %ss: the worker is being respawned while the '
        'master looks healthy; stderr:\n%s\nlog:\n%s'
        % (EXIT_WITHIN_S + 5, err[-2000:], out[-3000:]))
    assert status == 2, (status, err, out[-3000:])
    assert elapsed < EXIT_WITHIN_S, elapsed
    assert gone, 'processes of the agent group are left'
    assert 'Traceback' not in err and 'Traceback' not in out, (err, out)
    assert len(lines) == 1, 'stderr must be one line, not:\n%s' % err
    line = lines[0]
    assert line.startswith('scaph-openstack-agent: '), line
    for needle in needles:
        assert needle in line, (needle, line)
    # Not respawned: no worker at all when the master refused to start,
    # exactly one otherwise, and none that died by itself.
    assert starts == (0 if where == 'master' else 1), out[-3000:]
    assert RESPAWN not in out, out[-3000:]
    assert ready == [], 'READY=1 sent by a service that did not start'
    assert not os.path.exists(r.snapshot_path)


def _mountinfo():
    mounts = {}
    with open('/proc/self/mountinfo') as f:
        for line in f:
            left, _, right = line.partition(' - ')
            fields = left.split()
            mounts[fields[4].replace('\\040', ' ')] = (right.split()[0],
                                                      fields[5].split(','))
    return mounts


def test_ready_only_after_the_first_snapshot_and_the_share_mounts(
        run, tmp_path, record_property):
    helpers.require(os.geteuid() == 0, 'needs root: the share mounts')
    work = str(tmp_path / 'shares')
    export = str(tmp_path / 'export')
    r = run({'agent': {'publishers': 'snapshot,share'},
             'share': {'manage_mounts': True, 'work_dir': work,
                       'export_dir': export, 'tmpfs_size': '4m'}})
    try:
        r.start()
        seen_at = None
        snapshot_then = mounts_then = None
        deadline = time.monotonic() + 30
        while seen_at is None and time.monotonic() < deadline:
            message = r.next_message(0.5)
            if message is not None and \
                    b'READY=1' in message.split(b'\n'):
                # As soon as it arrives: what exists now existed when
                # the agent said it was ready.
                snapshot_then = os.path.exists(r.snapshot_path)
                mounts_then = _mountinfo()
                seen_at = time.monotonic() - r.started
            assert r.proc.poll() is None, (r.stderr(), r.stdout()[-3000:])
        later = r.messages(2 * INTERVAL + 1.0)
        snap = snapshot_mod.read(r.snapshot_path, check_stale=False)
        err = r.stderr()
        support.summary(
            record_property, 'startup-ready',
            'READY=1 after %s s; then: snapshot existed %s, work_dir %s, '
            'export_dir %s; later messages %s; stderr %r' % (
                seen_at and round(seen_at, 2), snapshot_then,
                (mounts_then or {}).get(work),
                (mounts_then or {}).get(export), later, err[-300:]))
        assert seen_at is not None, 'no READY=1 within 30 s:\n%s' % (
            r.stdout()[-3000:])
        assert snapshot_then, 'READY=1 came before the first snapshot'
        assert mounts_then.get(work, ('',))[0] == 'tmpfs', (
            'READY=1 came before the shares tmpfs was mounted')
        assert 'ro' in mounts_then.get(export, ('', []))[1], (
            'READY=1 came before the read-only export was mounted')
        assert snap.document['time'] > 0
        assert later == [], 'READY=1 more than once: %s' % later
        assert err.strip() == '', err
    finally:
        r.close()
        support.umount(export, work)
