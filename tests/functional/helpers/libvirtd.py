"""Start, stop and restart a real libvirtd for the functional tests.

On the test machines there is no systemd (doc/design.md, Facts 3): libvirtd
and virtlogd are started by hand, after creating what libvirtd insists on
(user ``libvirt-qemu``, group ``kvm``, ``/var/log/libvirt``, ``/run/libvirt``)
and writing a ``qemu.conf`` that runs QEMU as root without a security
driver or dynamic ownership, which keeps file ownership simple in tests.
Where systemd is PID 1 and knows libvirtd, it is used instead.
"""

import fcntl
import os
import shutil
import signal
import subprocess
import time

DEFAULT_URI = 'qemu:///system'
QEMU_CONF = '/etc/libvirt/qemu.conf'
LIBVIRTD_PIDFILE = '/run/libvirtd.pid'
VIRTLOGD_PIDFILE = '/run/virtlogd.pid'
LOCK_FILE = '/run/scaph-test-libvirtd.lock'
LIBVIRTD_LOG = '/var/log/libvirt/scaph-test-libvirtd.log'

_MARK_BEGIN = '# BEGIN scaph-openstack functional tests (managed block)'
_MARK_END = '# END scaph-openstack functional tests'
_MARK_DISABLED = '#scaph-test-disabled# '
QEMU_CONF_SETTINGS = (
    ('user', '"root"'),
    ('group', '"root"'),
    ('dynamic_ownership', '0'),
    ('security_driver', '"none"'),
)

VIRTIOFSD_CANDIDATES = (
    '/usr/lib/qemu/virtiofsd',       # Debian 12 (QEMU 7.2, C virtiofsd)
    '/usr/libexec/virtiofsd',        # Debian 13+/Fedora (Rust virtiofsd)
    '/usr/lib/virtiofsd',
    '/usr/libexec/qemu/virtiofsd',
    '/usr/bin/virtiofsd',
)


class LibvirtdError(RuntimeError):
    pass


def _which(name):
    return shutil.which(name, path=os.environ.get('PATH', '') +
                        ':/usr/sbin:/sbin:/usr/bin:/bin')


def virtiofsd_path():
    """Path of a virtiofsd binary, or None when none is installed."""
    for path in VIRTIOFSD_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    return _which('virtiofsd')


def qemu_binary():
    """Path of qemu-system-x86_64, or None."""
    return _which('qemu-system-x86_64')


def unavailable_reason():
    """Why this machine cannot run the real-guest tests, or None if it can.

    Checks what does not need starting anything: Linux, root, the binaries
    (libvirtd, virtlogd, virsh, qemu-system-x86_64, virtiofsd, busybox,
    cpio, apt-get) and the libvirt Python binding. Whether libvirtd then
    really starts is found by ensure_libvirtd().
    """
    if not os.uname().sysname == 'Linux':
        return 'not Linux'
    if os.geteuid() != 0:
        return 'not root: libvirtd, mounts and virtiofsd need root'
    for tool in ('libvirtd', 'virtlogd', 'virsh', 'qemu-system-x86_64'):
        if not _which(tool):
            return '%s is not installed (tools/install-deps)' % tool
    if not virtiofsd_path():
        return 'virtiofsd is not installed (qemu-system-x86 on Debian 12)'
    if not os.path.exists('/bin/busybox'):
        return 'busybox-static is not installed (tools/install-deps)'
    if not _which('cpio'):
        return 'cpio is not installed (tools/install-deps)'
    try:
        import libvirt  # noqa: F401
    except ImportError:
        return 'the libvirt Python binding (libvirt-python) is not installed'
    return None


def can_run_guests():
    """True when unavailable_reason() finds nothing missing."""
    return unavailable_reason() is None


def _systemd_manages(unit='libvirtd.service'):
    """True when systemd is PID 1 and has a libvirtd unit."""
    try:
        with open('/proc/1/comm') as f:
            if f.read().strip() != 'systemd':
                return False
    except OSError:
        return False
    if not _which('systemctl'):
        return False
    res = subprocess.run(['systemctl', 'cat', unit], capture_output=True)
    return res.returncode == 0


def virsh_answers(uri=DEFAULT_URI, timeout=10):
    """True when ``virsh -c URI version`` answers."""
    virsh = _which('virsh')
    if not virsh:
        return False
    try:
        res = subprocess.run([virsh, '-c', uri, 'version'],
                             capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    return res.returncode == 0


def _ensure_account():
    """Create user libvirt-qemu and groups kvm and libvirt-qemu if missing:
    libvirtd resolves its built-in default user and group before reading
    qemu.conf and refuses to load the QEMU driver without them ("Failed to
    parse user/group 'libvirt-qemu'"), even when qemu.conf says root."""
    for group in ('kvm', 'libvirt-qemu'):
        res = subprocess.run(['getent', 'group', group], capture_output=True)
        if res.returncode != 0:
            subprocess.run(['groupadd', '--system', group], check=True,
                           capture_output=True)
    res = subprocess.run(['getent', 'passwd', 'libvirt-qemu'],
                         capture_output=True)
    if res.returncode != 0:
        subprocess.run(['useradd', '--system', '--no-create-home',
                        '--home-dir', '/var/lib/libvirt',
                        '--shell', '/usr/sbin/nologin',
                        '--gid', 'kvm', 'libvirt-qemu'],
                       check=True, capture_output=True)


def _configure_qemu_conf(path=QEMU_CONF):
    """Idempotently put our settings in qemu.conf.

    Lines elsewhere in the file that set the same keys are commented out
    (libvirt uses the first occurrence of a key), and our settings are kept
    in one marked block at the end. Returns True when the file changed.
    """
    try:
        with open(path) as f:
            old = f.read()
    except FileNotFoundError:
        old = ''
    keys = {k for k, _ in QEMU_CONF_SETTINGS}
    out = []
    inside = False
    for line in old.splitlines():
        if line.strip() == _MARK_BEGIN:
            inside = True
            continue
        if inside:
            if line.strip() == _MARK_END:
                inside = False
            continue
        stripped = line.strip()
        key = stripped.split('=', 1)[0].strip() if '=' in stripped else None
        if key in keys and not stripped.startswith('#'):
            line = _MARK_DISABLED + line
        out.append(line)
    while out and not out[-1].strip():
        out.pop()
    block = [_MARK_BEGIN]
    block += ['%s = %s' % kv for kv in QEMU_CONF_SETTINGS]
    block.append(_MARK_END)
    new = '\n'.join(out + ([''] if out else []) + block) + '\n'
    if new == old:
        return False
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + '.scaph-tmp'
    with open(tmp, 'w') as f:
        f.write(new)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return True


def _read_pid(pidfile):
    try:
        with open(pidfile) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return pid if _pid_is(pid, os.path.basename(pidfile)[:-4]) else None


def _pid_is(pid, comm):
    """Whether ``pid`` is a ``comm`` of this host's root: the daemons of
    the Debian 13 stack (tests/functional/helpers/debian13.py) have the
    same names, in chroots, and are not the host's."""
    try:
        with open('/proc/%d/comm' % pid) as f:
            if f.read().strip() != comm:
                return False
        return os.readlink('/proc/%d/root' % pid) == '/'
    except OSError:
        return False


def _pids_named(comm):
    pids = []
    for entry in os.listdir('/proc'):
        if entry.isdigit() and _pid_is(int(entry), comm):
            pids.append(int(entry))
    return pids


def libvirtd_pid():
    """PID of the running libvirtd, or None."""
    pid = _read_pid(LIBVIRTD_PIDFILE)
    if pid:
        return pid
    pids = _pids_named('libvirtd')
    return pids[0] if pids else None


class _Lock:
    """Serialises start/stop between concurrent test processes."""

    def __enter__(self):
        os.makedirs(os.path.dirname(LOCK_FILE), exist_ok=True)
        self._f = open(LOCK_FILE, 'w')
        fcntl.flock(self._f, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self._f, fcntl.LOCK_UN)
        self._f.close()


def _wait_answering(uri, timeout, systemd=False):
    deadline = time.monotonic() + timeout
    gone_since = None
    why = 'did not answer on %s within %ss' % (uri, timeout)
    while time.monotonic() < deadline:
        left = deadline - time.monotonic()
        if virsh_answers(uri, timeout=max(1, min(10, left))):
            return
        if not systemd and libvirtd_pid() is None:
            # libvirtd -d forks: give it a moment, then it has died.
            gone_since = gone_since or time.monotonic()
            if time.monotonic() - gone_since > 3:
                why = 'exited without answering on %s' % uri
                break
        else:
            gone_since = None
        time.sleep(0.3)
    tail = ''
    try:
        with open(LIBVIRTD_LOG) as f:
            tail = ''.join(f.readlines()[-20:])
    except OSError:
        pass
    raise LibvirtdError('libvirtd %s%s' % (
        why, ('; last lines of %s:\n%s' % (LIBVIRTD_LOG, tail))
        if tail else ''))


def _start_daemons():
    if _systemd_manages():
        subprocess.run(['systemctl', 'start', 'virtlogd.socket'],
                       capture_output=True)
        subprocess.run(['systemctl', 'start', 'libvirtd.service'], check=True,
                       capture_output=True)
        return
    if not _read_pid(VIRTLOGD_PIDFILE) and not _pids_named('virtlogd'):
        subprocess.run([_which('virtlogd'), '-d'], check=True,
                       capture_output=True)
    if libvirtd_pid() is None:
        env = dict(os.environ)
        env.setdefault('LIBVIRT_LOG_OUTPUTS', '3:file:' + LIBVIRTD_LOG)
        res = subprocess.run([_which('libvirtd'), '-d'], env=env,
                             capture_output=True, text=True)
        if res.returncode != 0:
            raise LibvirtdError('libvirtd -d failed (rc=%s): %s' % (
                res.returncode, (res.stderr or res.stdout).strip()))


def _prepare():
    reason = unavailable_reason()
    if reason:
        raise LibvirtdError('cannot run libvirtd here: %s' % reason)
    _ensure_account()
    for d in ('/var/log/libvirt', '/run/libvirt', '/var/lib/libvirt',
              '/var/lib/libvirt/qemu', '/var/cache/libvirt'):
        os.makedirs(d, exist_ok=True)
    return _configure_qemu_conf()


def ensure_libvirtd(uri=DEFAULT_URI, timeout=60):
    """Make sure a libvirtd answers on ``uri``; idempotent.

    Prepares the machine (account, directories, qemu.conf), starts virtlogd
    and libvirtd if ``virsh -c URI version`` does not answer, and waits for
    it. If qemu.conf had to change while libvirtd was already running, it is
    restarted so the settings apply (running guests survive). Raises
    LibvirtdError with the reason when this is impossible.
    """
    with _Lock():
        changed = _prepare()
        if virsh_answers(uri):
            if changed:
                _restart_locked(uri, timeout)
            return
        _start_daemons()
        _wait_answering(uri, timeout, _systemd_manages())


def _stop_locked(timeout):
    if _systemd_manages():
        subprocess.run(['systemctl', 'stop', 'libvirtd.service'],
                       capture_output=True)
        return
    pid = libvirtd_pid()
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_is(pid, 'libvirtd'):
            break
        time.sleep(0.1)
    else:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for _ in range(50):
            if not _pid_is(pid, 'libvirtd'):
                break
            time.sleep(0.1)
    try:
        os.unlink(LIBVIRTD_PIDFILE)
    except FileNotFoundError:
        pass


def _restart_locked(uri, timeout):
    _stop_locked(timeout)
    _start_daemons()
    _wait_answering(uri, timeout, _systemd_manages())


def stop_libvirtd(timeout=30):
    """Stop libvirtd (SIGTERM, then SIGKILL after ``timeout`` s).

    virtlogd and the QEMU guests keep running, as on a real compute node
    whose libvirtd is restarted. A no-op when libvirtd is not running.
    """
    with _Lock():
        _stop_locked(timeout)


def restart_libvirtd(uri=DEFAULT_URI, timeout=60):
    """Kill libvirtd (not virtlogd) and start it again; waits until it
    answers. Running guests survive and are reconnected by libvirtd."""
    with _Lock():
        _prepare()
        _restart_locked(uri, timeout)
