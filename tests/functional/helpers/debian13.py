"""Two Debian 13 libvirtds (libvirt 11.3, QEMU 10.0, virtiofsd 1.13) for
migration tests: the chroot roots "a" and "b" of tools/debian13-stack.

    stack = ensure_stack()          # skips off CI when impossible, fails in CI
    a, b = stack.hosts['a'], stack.hosts['b']
    kernel, initrd = stack.images()  # copied under stack.shared_dir
    Guest(uri=a.uri, images=(kernel, initrd), log_dir=stack.shared_dir,
          serial_append=True, virtiofsd_binary=None, ...)
    stack.migrate(name, src='a', dst='b')   # seconds it took

Paths given to a root's libvirtd are paths inside that root; ``shared_dir``
is the one directory with the same path on the host and in both roots
(guest images, serial logs, save files). Each root has its own tmpfs share
at SHARE_IN_ROOT (``host.share_dir`` on the host), as compute nodes do.

The stack must not outlive the tests that use it: while a root's libvirtd
or virtlogd runs, tests/functional/helpers/libvirtd.py, which finds the
host's daemons by process name when its pid files are missing, would take
them for the host's. tests/functional/debian13/conftest.py stops it when
that package's tests are done; ensure_stack() also stops at exit what it
started.
"""

import atexit
import os
import shutil
import subprocess
import threading
import time
import uuid as uuidlib

from tests.functional.helpers import require
from tests.functional.helpers.guest import REPO_ROOT, build_image

STACK_SCRIPT = os.path.join(REPO_ROOT, 'tools', 'debian13-stack')
ROOT_DIR = os.environ.get('SCAPH_D13_DIR',
                          '/var/lib/scaph-openstack-test/debian13')
SHARED_DIR = os.environ.get('SCAPH_D13_SHARED',
                            '/var/lib/scaph-openstack-test/shared')
SHARE_IN_ROOT = '/var/lib/scaph-openstack/share'
VIRTIOFSD = '/usr/libexec/virtiofsd'
HOST_NAMES = ('a', 'b')
# Must match tools/debian13-stack.
HOST_UUIDS = {'a': '5ca9d130-0000-4000-8000-00000000000a',
              'b': '5ca9d130-0000-4000-8000-00000000000b'}
# The destination picks a free port itself when the URI has none.
MIGRATE_URI = 'tcp://127.0.0.1'


class StackError(RuntimeError):
    pass


class MigrationError(StackError):
    """A migration libvirt refused or that failed; ``text`` is libvirt's
    message, ``elapsed`` how long it ran."""

    def __init__(self, message, text='', elapsed=None):
        super().__init__(message)
        self.text = text
        self.elapsed = elapsed


def _root_of(name):
    return ROOT_DIR if name == 'a' else '%s-%s' % (ROOT_DIR, name)


class Host:
    """One root and its libvirtd."""

    def __init__(self, name):
        self.name = name
        self.root = _root_of(name)
        self.socket = os.path.join(self.root, 'run/libvirt/libvirt-sock')
        self.uri = 'qemu:///system?socket=' + self.socket
        self.host_uuid = HOST_UUIDS[name]
        # Where this host's share (a tmpfs) is, seen from the host.
        self.share_dir = self.host_path(SHARE_IN_ROOT)

    def __repr__(self):
        return 'Host(%r, root=%r)' % (self.name, self.root)

    def host_path(self, path_inside_root):
        """The host's path of ``path_inside_root`` (absolute in the root)."""
        return os.path.join(self.root, path_inside_root.lstrip('/'))

    def peer_uri(self, other):
        """The URI under which this host's libvirtd reaches ``other``'s
        (its socket is bound into this root at /run/libvirt-NAME)."""
        return ('qemu+unix:///system?socket=/run/libvirt-%s/libvirt-sock'
                % other.name)

    def connect(self):
        import libvirt
        return libvirt.open(self.uri)

    def chroot(self, *argv, **kwargs):
        """subprocess.run of ``argv`` inside the root (text, captured)."""
        kwargs.setdefault('capture_output', True)
        kwargs.setdefault('text', True)
        return subprocess.run(['chroot', self.root] + list(argv), **kwargs)

    def versions(self):
        """{'libvirt', 'qemu', 'virtiofsd'}: what runs in this root."""
        conn = self.connect()
        try:
            lib, qemu = conn.getLibVersion(), conn.getVersion()
        finally:
            conn.close()

        def dotted(v):
            return '%d.%d.%d' % (v // 1000000, v // 1000 % 1000, v % 1000)
        out = self.chroot(VIRTIOFSD, '--version').stdout.split()
        return {'libvirt': dotted(lib), 'qemu': dotted(qemu),
                'virtiofsd': out[-1] if out else None}

    def domain_log(self, name, fs_alias=None):
        """The text of libvirt's log of domain ``name`` in this root (QEMU's
        command line and messages), or with ``fs_alias`` (e.g. 'fs0') the
        log of that filesystem's virtiofsd; '' when there is none."""
        suffix = '-%s-virtiofsd' % fs_alias if fs_alias else ''
        path = self.host_path('/var/log/libvirt/qemu/%s%s.log'
                              % (name, suffix))
        try:
            with open(path, errors='replace') as f:
                return f.read()
        except FileNotFoundError:
            return ''

    def find_domain(self, name_or_uuid):
        """The domain on this host (by name or UUID), or None."""
        import libvirt
        try:
            uuidlib.UUID(name_or_uuid)
            lookup = 'lookupByUUIDString'
        except ValueError:
            lookup = 'lookupByName'
        conn = self.connect()
        try:
            return getattr(conn, lookup)(name_or_uuid)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise
        finally:
            # The domain keeps its own reference to the connection.
            conn.close()


class Stack:
    """The two hosts (``hosts['a']``, ``hosts['b']``) and ``shared_dir``."""

    def __init__(self):
        self.hosts = {name: Host(name) for name in HOST_NAMES}
        self.shared_dir = SHARED_DIR
        self.started_here = False

    def __repr__(self):
        return 'Stack(%r)' % (sorted(self.hosts),)

    def images(self, flavour='cloud'):
        """(kernel, initrd) of the test guest, copied into shared_dir so
        that both roots can read them at the same path."""
        dest = os.path.join(self.shared_dir, 'images', flavour)
        os.makedirs(dest, exist_ok=True)
        out = []
        for src in build_image(flavour):
            dst = os.path.join(dest, os.path.basename(src))
            st = os.stat(src)
            try:
                same = (os.stat(dst).st_size == st.st_size and
                        os.stat(dst).st_mtime == st.st_mtime)
            except FileNotFoundError:
                same = False
            if not same:
                shutil.copy2(src, dst + '.tmp')
                os.replace(dst + '.tmp', dst)
            out.append(dst)
        return tuple(out)

    def where(self, name_or_uuid):
        """Name of the host where the domain is active, else where it is
        defined, else None."""
        found = None
        for host in self.hosts.values():
            dom = host.find_domain(name_or_uuid)
            if dom is not None:
                if dom.isActive():
                    return host.name
                found = found or host.name
        return found

    def purge(self, name_or_uuid):
        """Destroy and undefine the domain on every host (with any managed
        save image)."""
        import libvirt
        for host in self.hosts.values():
            dom = host.find_domain(name_or_uuid)
            if dom is None:
                continue
            try:
                if dom.isActive():
                    dom.destroy()
            except libvirt.libvirtError:
                pass
            try:
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
            except libvirt.libvirtError:
                pass

    def migrate(self, name_or_uuid, src='a', dst='b', live=True, flags=0,
                params=None, timeout=180):
        """Migrate the domain from host ``src`` to ``dst``; returns the
        seconds it took. Peer to peer: ``src``'s libvirtd drives it and
        reaches ``dst``'s through the socket bound into its root; the
        domain ends up defined on ``dst`` only. Raises MigrationError with
        libvirt's text when it fails or runs past ``timeout`` (the job is
        then aborted)."""
        import libvirt
        source, dest = self.hosts[src], self.hosts[dst]
        dom = source.find_domain(name_or_uuid)
        if dom is None:
            raise MigrationError('no domain %s on host %s' % (name_or_uuid,
                                                              src))
        flags |= (libvirt.VIR_MIGRATE_PEER2PEER |
                  libvirt.VIR_MIGRATE_PERSIST_DEST |
                  libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)
        if live:
            flags |= libvirt.VIR_MIGRATE_LIVE
        all_params = {libvirt.VIR_MIGRATE_PARAM_URI: MIGRATE_URI}
        all_params.update(params or {})
        result = {}

        def run():
            try:
                dom.migrateToURI3(source.peer_uri(dest), all_params, flags)
            except libvirt.libvirtError as exc:
                result['error'] = exc

        t0 = time.monotonic()
        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            try:
                dom.abortJob()
            except libvirt.libvirtError:
                pass
            worker.join(30)
            raise MigrationError(
                'migration %s -> %s of %s did not end within %ss (aborted)'
                % (src, dst, name_or_uuid, timeout), 'timeout',
                time.monotonic() - t0)
        elapsed = time.monotonic() - t0
        if 'error' in result:
            text = str(result['error'])
            raise MigrationError('migration %s -> %s of %s failed after '
                                 '%.1fs: %s' % (src, dst, name_or_uuid,
                                                elapsed, text),
                                 text, elapsed)
        return elapsed

    def start(self):
        _run_script('start')

    def stop(self):
        """Destroy every domain, stop the daemons, unmount the roots."""
        # Guests of these hosts die with them: guest.py's clean-up at exit
        # must not look for them (it would start the host's libvirtd).
        from tests.functional.helpers import guest
        uris = {host.uri for host in self.hosts.values()}
        for g in list(guest._LIVE_GUESTS):
            if g.uri in uris:
                guest._LIVE_GUESTS.discard(g)
        _run_script('stop')
        self.started_here = False


def _run_script(cmd, timeout=600):
    res = subprocess.run(['bash', STACK_SCRIPT, cmd], capture_output=True,
                         text=True, timeout=timeout)
    if res.returncode != 0:
        raise StackError('tools/debian13-stack %s failed (rc=%s): %s' % (
            cmd, res.returncode, (res.stderr or res.stdout)[-3000:]))
    return res.stdout


_STACK = None
_LOCK = threading.Lock()


def _stop_at_exit():
    if _STACK is not None and _STACK.started_here:
        try:
            _STACK.stop()
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass


def ensure_stack():
    """The running stack: built (tools/debian13-stack setup, quick once
    done) and started when needed. Skips the test when this machine cannot
    run it, and fails instead in CI (CI=true)."""
    global _STACK
    require(os.geteuid() == 0, 'the Debian 13 stack needs root')
    require(shutil.which('chroot') and shutil.which('virsh'),
            'chroot and virsh are needed (tools/install-deps)')
    try:
        import libvirt  # noqa: F401
    except ImportError:
        require(False, 'the libvirt Python binding is not installed')
    with _LOCK:
        if _STACK is not None and all(
                _answers(h) for h in _STACK.hosts.values()):
            return _STACK
        stack = Stack()
        try:
            _run_script('setup')
            stack.start()
        except (StackError, OSError, subprocess.TimeoutExpired) as exc:
            require(False, 'the Debian 13 stack cannot start: %s' % exc)
        stack.started_here = True
        if _STACK is None:
            atexit.register(_stop_at_exit)
        _STACK = stack
        return stack


def stop_stack():
    """Stop the stack if this process started it (a no-op otherwise)."""
    with _LOCK:
        if _STACK is not None and _STACK.started_here:
            _STACK.stop()


def _answers(host):
    try:
        host.connect().close()
        return True
    except Exception:  # noqa: BLE001 - libvirtError or a missing binding
        return False


class ReadClock(threading.Thread):
    """The host's monotonic time at which each SCAPH-READ line of a guest
    appeared: the guest's uptime stops while it is paused or saved, so
    wall-clock gaps through a migration are read here."""

    def __init__(self, guest):
        super().__init__(daemon=True)
        self.guest = guest
        self.seen = {}              # line number -> monotonic time
        self._halt = threading.Event()

    def run(self):
        while not self._halt.wait(0.1):
            now = time.monotonic()
            for r in self.guest.reads():
                self.seen.setdefault(r.line_no, now)

    def stop(self):
        self._halt.set()
        self.join(5)

    def max_gap(self, start=None, end=None):
        """Longest gap between reads that appeared between the monotonic
        times ``start`` and ``end`` (default: all of them)."""
        times = sorted(t for t in self.seen.values()
                       if (start is None or t >= start) and
                       (end is None or t <= end))
        return max((b - a for a, b in zip(times, times[1:], strict=False)),
                   default=0)
