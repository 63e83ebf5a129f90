"""A RabbitMQ broker on loopback for the functional tests.

Debian's rabbitmq-server, started by hand (no systemd here, and the
package's policy-rc.d keeps it from starting on install; doc/design.md,
Facts 4). Our own node name and ports picked free at start, so a
broker that is already there (a developer's, devstack's) is left alone.
Idempotent: a node started by an earlier test is reused, its port read
from STATE_FILE. Erlang distribution and epmd listen on 127.0.0.1 only.
"""

import collections
import fcntl
import json
import os
import shutil
import socket
import subprocess
import time

from tests.functional.helpers.agent import free_port

NODE = 'scaph-test@localhost'
STATE_FILE = '/run/scaph-test-rabbitmq.json'
LOCK_FILE = '/run/scaph-test-rabbitmq.lock'
LOG_DIR = '/var/log/rabbitmq'
PATH_EXTRA = ':/usr/sbin:/sbin:/usr/bin:/bin'

Broker = collections.namedtuple('Broker', 'url port started')


class RabbitMQError(RuntimeError):
    pass


def _which(name):
    return shutil.which(name, path=os.environ.get('PATH', '') + PATH_EXTRA)


def unavailable_reason():
    """Why no broker can be run here, or None. Checks without starting."""
    if os.geteuid() != 0:
        return 'not root: rabbitmq-server runs as the rabbitmq user'
    if not _which('rabbitmq-server') and not _which('apt-get'):
        return 'rabbitmq-server is not installed and apt-get is missing'
    return None


def install(timeout=600):
    """apt-get install rabbitmq-server when it is missing."""
    if _which('rabbitmq-server'):
        return
    env = dict(os.environ, DEBIAN_FRONTEND='noninteractive')
    for argv in (['apt-get', 'update', '-qq'],
                 ['apt-get', 'install', '-y', '-qq',
                  '--no-install-recommends', 'rabbitmq-server']):
        res = subprocess.run(argv, env=env, capture_output=True, text=True,
                             timeout=timeout)
        if res.returncode != 0:
            raise RabbitMQError('%s failed: %s' % (' '.join(argv),
                                                   res.stderr.strip()))


def _listening(port):
    try:
        with socket.create_connection(('127.0.0.1', port), timeout=1):
            return True
    except OSError:
        return False


def _ctl(*args, timeout=30):
    """rabbitmqctl against our node; (returncode, output)."""
    try:
        res = subprocess.run([_which('rabbitmqctl'), '-n', NODE] +
                             list(args), capture_output=True, text=True,
                             timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, 'rabbitmqctl %s timed out' % ' '.join(args)
    return res.returncode, res.stdout + res.stderr


def _url(port):
    return 'rabbit://guest:guest@127.0.0.1:%d/' % port


def _read_state():
    try:
        with open(STATE_FILE) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


class _Lock:
    """Serialises start and stop between concurrent test processes."""

    def __enter__(self):
        self._f = open(LOCK_FILE, 'w')
        fcntl.flock(self._f, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self._f, fcntl.LOCK_UN)
        self._f.close()


def _answering(state):
    return (state is not None and _listening(state['port'])
            and _ctl('status', timeout=20)[0] == 0)


def _log_tail():
    for name in ('%s.log' % NODE, 'startup_err', 'startup_log'):
        try:
            with open(os.path.join(LOG_DIR, name), errors='replace') as f:
                tail = ''.join(f.readlines()[-15:]).strip()
        except OSError:
            continue
        if tail:
            return '%s:\n%s' % (name, tail)
    return ''


def _start(timeout):
    port, dist_port = free_port(), free_port()
    env = dict(
        os.environ,
        RABBITMQ_NODENAME=NODE,
        RABBITMQ_NODE_IP_ADDRESS='127.0.0.1',
        RABBITMQ_NODE_PORT=str(port),
        RABBITMQ_DIST_PORT=str(dist_port),
        ERL_EPMD_ADDRESS='127.0.0.1',
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=(
            '-kernel inet_dist_use_interface {127,0,0,1}'))
    res = subprocess.run([_which('rabbitmq-server'), '-detached'], env=env,
                         capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        raise RabbitMQError('rabbitmq-server -detached failed: %s'
                            % (res.stderr or res.stdout).strip())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _listening(port):
            # Listening comes last in RabbitMQ's boot; await_startup makes
            # sure the guest user and default vhost are there too.
            rc, out = _ctl('await_startup', timeout=max(
                1, deadline - time.monotonic()))
            if rc == 0:
                return port
        time.sleep(0.5)
    _stop_node(timeout=30)
    raise RabbitMQError('RabbitMQ did not listen on 127.0.0.1:%d within '
                        '%ss. %s' % (port, timeout, _log_tail()))


def ensure_rabbitmq(timeout=90):
    """A Broker(url, port, started) answering on loopback.

    ``started`` is True when this call started it: the caller then stops
    it with stop_rabbitmq() when done. Raises RabbitMQError if impossible.
    """
    reason = unavailable_reason()
    if reason:
        raise RabbitMQError(reason)
    try:
        install()
        with _Lock():
            state = _read_state()
            if _answering(state):
                return Broker(_url(state['port']), state['port'], False)
            port = _start(timeout)
            with open(STATE_FILE, 'w') as f:
                json.dump({'node': NODE, 'port': port}, f)
            return Broker(_url(port), port, True)
    except subprocess.SubprocessError as exc:  # a command timed out
        raise RabbitMQError(str(exc))


def _beam_pids():
    """PIDs of the Erlang VM running our node. Its command line does not
    name the node; the environment we started it with does."""
    wanted = b'RABBITMQ_NODENAME=' + NODE.encode()
    pids = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open('/proc/%s/comm' % entry) as f:
                if f.read().strip() != 'beam.smp':
                    continue
            with open('/proc/%s/environ' % entry, 'rb') as f:
                environ = f.read().split(b'\0')
        except OSError:
            continue
        if wanted in environ:
            pids.append(int(entry))
    return pids


def _stop_node(timeout):
    _ctl('stop', timeout=timeout)
    for pid in _beam_pids():
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    epmd = _which('epmd')
    if epmd:
        res = subprocess.run([epmd, '-names'], capture_output=True,
                             text=True, timeout=10)
        # Leave epmd to other Erlang nodes (a real RabbitMQ) if any.
        if res.returncode == 0 and 'name ' not in res.stdout:
            subprocess.run([epmd, '-kill'], capture_output=True, timeout=10)


def stop_rabbitmq(timeout=60):
    """Stop our node (and epmd if nothing else uses it); a no-op when it
    is not running. Only the caller that started it should: a concurrent
    test run may be using it (ensure_rabbitmq said started=False there)."""
    with _Lock():
        _stop_node(timeout)
        try:
            os.unlink(STATE_FILE)
        except FileNotFoundError:
            pass
