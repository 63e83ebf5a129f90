"""Real guests for the functional tests: a busybox initramfs under TCG.

The guest (tools/guest/build-guest-image, tools/guest/init) mounts a
virtiofs (or 9p) share and prints ``SCAPH-`` marker lines on its serial
port, which libvirt writes to a file; :class:`Guest` follows that file.
See doc/testing-guests.md.
"""

import atexit
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid as uuidlib
from xml.sax.saxutils import escape, quoteattr

from . import libvirtd

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__),
                                         '..', '..', '..'))
BUILD_SCRIPT = os.path.join(REPO_ROOT, 'tools', 'guest', 'build-guest-image')
NAME_PREFIX = 'scaph-test-'
DEFAULT_TAG = 'scaphandre'
# Kernel console messages interleave with the markers; keep them to warnings.
DEFAULT_KERNEL_ARGS = 'loglevel=4'
NOVA_NS_PREFIX = 'http://openstack.org/xmlns/libvirt/nova/'
# Written in <description> so orphans of dead test processes can be reaped.
_OWNER_RE = re.compile(r'scaph-test owner pid=(\d+) start=(\d+) ns=([^\s<]+)')

_MARKER_RE = re.compile(r'SCAPH-([A-Z]+)(?: (.*))?$')
_READ_RE = re.compile(r'SCAPH-READ (\d+(?:\.\d+)?)((?: [^ =]+=\S*)*)')
_PROBE_RE = re.compile(r'SCAPH-PROBE (\S+) rc=(\d+)')
_WALK_RE = re.compile(r'SCAPH-WALK ([^:]+): ?(.*)$')
_JSON_RE = re.compile(r'SCAPH-JSON ([^:]+): ?(.*)$')
_SERIAL_LOG_RE = re.compile(
    r"""<source path=['"]([^'"]*/scaph-test-log-[^'"]*)""")


class GuestError(RuntimeError):
    pass


def build_image(flavour='cloud', outdir=None, timeout=900):
    """Build (or reuse) the guest image; returns (kernel, initrd) paths.

    ``flavour`` 'cloud' is Debian's small cloud kernel (virtiofs, no 9p);
    'amd64' is the generic kernel, which also has 9p.
    """
    cmd = [BUILD_SCRIPT, '--flavour', flavour]
    if outdir:
        cmd.append(outdir)
    res = subprocess.run(cmd, capture_output=True, text=True,
                         timeout=timeout)
    if res.returncode != 0:
        raise GuestError('%s failed (rc=%s):\n%s' % (
            ' '.join(cmd), res.returncode, res.stderr[-4000:]))
    paths = dict(line.split('=', 1) for line in res.stdout.splitlines()
                 if '=' in line)
    return paths['vmlinuz'], paths['initrd']


def unique_name(label=''):
    """A domain name that cannot collide with a concurrent run."""
    label = re.sub(r'[^A-Za-z0-9_-]', '-', label).strip('-')
    suffix = uuidlib.uuid4().hex[:12]
    return NAME_PREFIX + (label + '-' if label else '') + suffix


def kernel_cmdline(cmdline_params=None, kernel_args=DEFAULT_KERNEL_ARGS):
    """``console=ttyS0 panic=-1`` + kernel_args + the params.

    ``cmdline_params`` maps names to values: keys without a dot get a
    ``scaph.`` prefix (``{'tag': 'x'}`` is ``scaph.tag=x``); a value of None
    or True gives a bare word; values may not contain spaces.
    """
    words = ['console=ttyS0', 'panic=-1']
    if kernel_args:
        words.append(kernel_args)
    for key, value in (cmdline_params or {}).items():
        if '.' not in key:
            key = 'scaph.' + key
        if value is None or value is True:
            words.append(key)
            continue
        value = str(value)
        if re.search(r'\s', value):
            raise ValueError('kernel parameter %s=%r contains a space'
                             % (key, value))
        words.append('%s=%s' % (key, value))
    return ' '.join(words)


def filesystem_xml(share_dir, tag=DEFAULT_TAG, driver='virtiofs',
                   binary='auto', readonly=False, queue=None):
    """A <filesystem> element sharing ``share_dir`` under ``tag``.

    driver 'virtiofs': needs the domain's shared memory backing; ``binary``
    'auto' names the virtiofsd found by libvirtd.virtiofsd_path(), None
    leaves <binary> out (libvirt 9.0 then finds virtiofsd itself, through
    QEMU's vhost-user JSON descriptors). libvirt 9.0 refuses ``readonly``
    with virtiofs: enforce read-only on the host (a read-only bind mount).
    driver '9p': QEMU's 9p server (accessmode passthrough), where
    ``readonly`` is honoured.
    """
    lines = ["<filesystem type='mount' accessmode='passthrough'>"]
    if driver == 'virtiofs':
        lines.append("  <driver type='virtiofs'%s/>" % (
            " queue='%d'" % queue if queue else ''))
        if binary == 'auto':
            binary = libvirtd.virtiofsd_path()
        if binary:
            lines.append('  <binary path=%s/>' % quoteattr(binary))
    elif driver in ('9p', 'path'):
        lines.append("  <driver type='path'/>")
    else:
        raise ValueError('unknown filesystem driver %r' % driver)
    lines.append('  <source dir=%s/>' % quoteattr(share_dir))
    lines.append('  <target dir=%s/>' % quoteattr(tag))
    if readonly:
        lines.append('  <readonly/>')
    lines.append('</filesystem>')
    return '\n'.join(lines)


def domain_xml(name, uuid, kernel, initrd, serial_log, cmdline_params=None,
               memory_mb=128, vcpus=1, share_dir=None, tag=DEFAULT_TAG,
               nova_metadata=None, extra_devices='', fs_driver='virtiofs',
               virtiofsd_binary='auto', readonly=False,
               kernel_args=DEFAULT_KERNEL_ARGS, description=None,
               on_reboot='destroy', cpuset=None, serial_append=False):
    """Libvirt XML of a TCG guest booting ``kernel``/``initrd`` directly.

    No disk, no network; serial console to the file ``serial_log``;
    memfd shared memory (virtiofs needs it, also for later hot plug).
    With ``share_dir``, a virtiofs (or, fs_driver='9p', a 9p) filesystem
    with target ``tag``. ``nova_metadata`` (an XML fragment such as
    nova_metadata_xml() returns) goes under <metadata>. ``on_reboot``
    'destroy' stops the domain when the guest panics (panic=-1 reboots).
    ``cpuset`` (e.g. '1' or '0-1') pins the guest: ``<vcpu cpuset=...>``
    plus a ``<cputune>`` with every vcpupin and the emulatorpin on it.
    ``serial_append`` opens the serial file with append='on': a migrated or
    restored guest's new QEMU (its virtlogd) would otherwise truncate it.
    """
    devices = ["<serial type='file'>",
               '  <source path=%s%s/>' % (quoteattr(serial_log),
                                         " append='on'" if serial_append
                                         else ''),
               "  <target port='0'/>",
               '</serial>',
               "<controller type='usb' model='none'/>",
               "<memballoon model='none'/>"]
    if share_dir is not None:
        devices.append(filesystem_xml(share_dir, tag=tag, driver=fs_driver,
                                      binary=virtiofsd_binary,
                                      readonly=readonly))
    if extra_devices:
        devices.append(extra_devices)
    cmdline = kernel_cmdline(cmdline_params, kernel_args)
    parts = ["<domain type='qemu'>",
             '  <name>%s</name>' % escape(name),
             '  <uuid>%s</uuid>' % escape(str(uuid))]
    if description:
        parts.append('  <description>%s</description>' % escape(description))
    if nova_metadata:
        parts += ['  <metadata>', nova_metadata, '  </metadata>']
    parts += [
        "  <memory unit='MiB'>%d</memory>" % memory_mb,
        '  <vcpu>%d</vcpu>' % vcpus if cpuset is None else
        '  <vcpu cpuset=%s>%d</vcpu>' % (quoteattr(str(cpuset)), vcpus),
    ]
    if cpuset is not None:
        parts.append('  <cputune>')
        parts += ['    <vcpupin vcpu=%s cpuset=%s/>'
                  % (quoteattr(str(v)), quoteattr(str(cpuset)))
                  for v in range(vcpus)]
        parts += ['    <emulatorpin cpuset=%s/>' % quoteattr(str(cpuset)),
                  '  </cputune>']
    parts += [
        '  <memoryBacking>',
        "    <source type='memfd'/>",
        "    <access mode='shared'/>",
        '  </memoryBacking>',
        '  <os>',
        "    <type arch='x86_64'>hvm</type>",
        '    <kernel>%s</kernel>' % escape(kernel),
        '    <initrd>%s</initrd>' % escape(initrd),
        '    <cmdline>%s</cmdline>' % escape(cmdline),
        '  </os>',
        '  <features><acpi/></features>',
        "  <clock offset='utc'/>",
        '  <on_poweroff>destroy</on_poweroff>',
        '  <on_reboot>%s</on_reboot>' % escape(on_reboot),
        '  <on_crash>destroy</on_crash>',
        '  <devices>',
    ]
    parts += ['    ' + line for dev in devices for line in dev.splitlines()]
    parts += ['  </devices>', '</domain>']
    return '\n'.join(parts) + '\n'


def nova_metadata_xml(uuid, display_name, project_id, project_name, user_id,
                      user_name, flavor='m1.tiny', vcpus=1, memory_mb=128,
                      namespace_version='1.1', disk_gb=1, swap_mb=0,
                      ephemeral_gb=0, flavor_id='1', image_id=None,
                      creation_time=None, package='34.0.0', extra_specs=None,
                      ports=None, minimal=False):
    """The <nova:instance> block Nova's libvirt driver puts in <metadata>.

    Same elements and order as LibvirtConfigGuestMetaNovaInstance (Nova
    34): package, name, creationTime, flavor (memory, disk, swap, ephemeral,
    vcpus, extraSpecs), image, owner (user, project), root, ports.
    ``uuid`` is the instance UUID; Nova's block does not repeat it (it is
    the domain's <uuid>), so it only seeds the default image UUID.
    ``minimal`` leaves out what older Nova releases did not write (flavor
    id, extraSpecs, image, ports). ``ports`` is a list of (port_uuid,
    [(type, address, version), ...]).
    """
    ns = NOVA_NS_PREFIX + namespace_version
    if image_id is None:
        image_id = str(uuidlib.uuid5(uuidlib.NAMESPACE_URL,
                                     'scaph-test-image:%s' % uuid))
    if creation_time is None:
        creation_time = time.time()
    ctime = time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(creation_time))

    def text(tag, value, **attrs):
        a = ''.join(' %s=%s' % (k, quoteattr(str(v)))
                    for k, v in attrs.items())
        return '<nova:%s%s>%s</nova:%s>' % (tag, a, escape(str(value)), tag)

    x = ['<nova:instance xmlns:nova=%s>' % quoteattr(ns),
         '  <nova:package version=%s/>' % quoteattr(package),
         '  ' + text('name', display_name),
         '  ' + text('creationTime', ctime)]
    if minimal:
        x.append('  <nova:flavor name=%s>' % quoteattr(flavor))
    else:
        x.append('  <nova:flavor name=%s id=%s>' % (quoteattr(flavor),
                                                     quoteattr(str(flavor_id))))
    x += ['    ' + text('memory', memory_mb),
          '    ' + text('disk', disk_gb),
          '    ' + text('swap', swap_mb),
          '    ' + text('ephemeral', ephemeral_gb),
          '    ' + text('vcpus', vcpus)]
    if not minimal:
        if extra_specs:
            x.append('    <nova:extraSpecs>')
            x += ['      ' + text('extraSpec', v, name=k)
                  for k, v in extra_specs.items()]
            x.append('    </nova:extraSpecs>')
        else:
            x.append('    <nova:extraSpecs/>')
    x.append('  </nova:flavor>')
    if not minimal:
        x += ['  <nova:image uuid=%s>' % quoteattr(image_id),
              '    ' + text('containerFormat', 'bare'),
              '    ' + text('diskFormat', 'qcow2'),
              '    ' + text('minDisk', disk_gb),
              '    ' + text('minRam', 0),
              '    <nova:properties/>',
              '  </nova:image>']
    x += ['  <nova:owner>',
          '    ' + text('user', user_name, uuid=user_id),
          '    ' + text('project', project_name, uuid=project_id),
          '  </nova:owner>',
          '  <nova:root type="image" uuid=%s/>' % quoteattr(image_id)]
    if not minimal:
        if ports:
            x.append('  <nova:ports>')
            for port_id, ips in ports:
                x.append('    <nova:port uuid=%s>' % quoteattr(port_id))
                for ip_type, address, version in ips:
                    x.append('      <nova:ip type=%s address=%s ipVersion=%s/>'
                             % (quoteattr(ip_type), quoteattr(address),
                                quoteattr(str(version))))
                x.append('    </nova:port>')
            x.append('  </nova:ports>')
        else:
            x.append('  <nova:ports/>')
    x.append('</nova:instance>')
    return '\n'.join(x)


class Read:
    """One SCAPH-READ line: the guest's uptime and {relative path: value}."""

    __slots__ = ('uptime', 'values', 'line_no')

    def __init__(self, uptime, values, line_no):
        self.uptime = uptime
        self.values = values
        self.line_no = line_no

    def int(self, path='intel-rapl:0/energy_uj'):
        """The value at ``path`` as an int (ValueError if not a number)."""
        return int(self.values[path])

    def __repr__(self):
        return 'Read(uptime=%r, values=%r)' % (self.uptime, self.values)


def parse_read(line, line_no=None):
    """A Read from a line holding SCAPH-READ, or None."""
    m = _READ_RE.search(line)
    if not m:
        return None
    values = {}
    for pair in m.group(2).split():
        path, _, value = pair.partition('=')
        values[path] = value
    return Read(float(m.group(1)), values, line_no)


def _proc_start_time(pid):
    try:
        with open('/proc/%d/stat' % pid) as f:
            return int(f.read().rsplit(')', 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _pid_namespace():
    try:
        return os.readlink('/proc/self/ns/pid').replace(' ', '')
    except OSError:
        return 'unknown'


def _owner_tag():
    pid = os.getpid()
    return 'scaph-test owner pid=%d start=%s ns=%s' % (
        pid, _proc_start_time(pid), _pid_namespace())


def _owner_dead(description):
    """True only when ``description`` carries our owner tag, written in
    this PID namespace, and that process is gone. Domains without the tag
    (made by other code) are never judged dead."""
    m = _OWNER_RE.search(description or '')
    if not m or m.group(3) != _pid_namespace():
        return False
    pid, start = int(m.group(1)), int(m.group(2))
    return _proc_start_time(pid) != start


def reap_orphans(uri=libvirtd.DEFAULT_URI):
    """Destroy and undefine the domains a Guest started whose test process
    is gone (killed before its clean-up ran), and remove their serial logs.
    Only domains carrying Guest's owner tag in <description> are looked at:
    those of live processes (concurrent runs) and any domain made by other
    code, even named ``scaph-test-``, are left alone. Returns the names
    removed."""
    import libvirt
    removed = []
    conn = libvirt.open(uri)
    try:
        for dom in conn.listAllDomains():
            name = dom.name()
            if not name.startswith(NAME_PREFIX):
                continue
            try:
                desc = dom.XMLDesc(0)
            except libvirt.libvirtError:
                continue
            if not _owner_dead(desc):
                continue
            logs = _SERIAL_LOG_RE.findall(desc)
            _destroy_undefine(dom)
            for log in logs:
                log_dir = os.path.dirname(log)
                if os.path.basename(log_dir).startswith('scaph-test-log-'):
                    shutil.rmtree(log_dir, ignore_errors=True)
            removed.append(name)
    finally:
        conn.close()
    return removed


def _destroy_undefine(dom):
    import libvirt
    try:
        if dom.isActive():
            dom.destroy()
    except libvirt.libvirtError:
        pass
    try:
        if dom.isPersistent():
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE |
                              libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
    except libvirt.libvirtError:
        pass


_LIVE_GUESTS = set()


@atexit.register
def _cleanup_at_exit():
    for guest in list(_LIVE_GUESTS):
        try:
            guest.cleanup()
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass


class SerialConsole:
    """The ``SCAPH-`` markers of a test guest's serial log file
    (``self.serial_log``), for Guest (libvirt) and the Proxmox-style QEMU
    of helpers/proxmox.py; subclasses give ``name`` and ``is_active()``
    (True, False, or None when unknown)."""

    name = None
    serial_log = None

    def is_active(self):
        raise NotImplementedError

    def serial(self):
        """The serial log so far, as text (CRs dropped)."""
        if not self.serial_log:
            return ''
        try:
            with open(self.serial_log, 'rb') as f:
                data = f.read()
        except FileNotFoundError:
            return ''
        return data.decode('utf-8', 'replace').replace('\r', '')

    def lines(self):
        return self.serial().split('\n')

    def markers(self, kind=None):
        """(kind, rest) of every SCAPH- marker, optionally of one kind."""
        out = []
        for line in self.lines():
            i = line.find('SCAPH-')
            if i < 0:
                continue
            m = _MARKER_RE.match(line[i:])
            if m and (kind is None or m.group(1) == kind):
                out.append((m.group(1), m.group(2) or ''))
        return out

    def tail(self, n=40):
        return '\n'.join(self.lines()[-n:])

    def wait_for(self, regex, timeout=120, start_line=0):
        """Wait until a serial log line from ``start_line`` on matches
        ``regex`` (re.search); returns the match. Raises TimeoutError with
        the end of the log, or GuestError if the domain stopped."""
        pattern = re.compile(regex) if isinstance(regex, str) else regex
        deadline = time.monotonic() + timeout
        next_check = 0
        while True:
            lines = self.lines()
            for line in lines[start_line:]:
                m = pattern.search(line)
                if m:
                    return m
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError(
                    'guest %s: no line matching %r within %ss; serial log '
                    'ends with:\n%s' % (self.name, pattern.pattern, timeout,
                                        self.tail()))
            if now >= next_check:
                next_check = now + 2
                if self.is_active() is False:
                    raise GuestError(
                        'guest %s stopped before a line matched %r; serial '
                        'log ends with:\n%s' % (self.name, pattern.pattern,
                                                self.tail()))
            time.sleep(0.2)

    def line_count(self):
        """Number of lines so far: pass as start_line to wait for new ones."""
        return len(self.lines())

    def wait_booted(self, timeout=120):
        """Wait for SCAPH-MOUNT (ok, fail or none); returns its rest."""
        return self.wait_for(r'SCAPH-MOUNT (.*)$', timeout).group(1)

    def reads(self):
        """Every SCAPH-READ so far, in order, as Read objects."""
        out = []
        for i, line in enumerate(self.lines()):
            r = parse_read(line, i)
            if r is not None:
                out.append(r)
        return out

    def wait_for_read(self, predicate, timeout=60, start_line=0):
        """Wait for a SCAPH-READ from ``start_line`` on for which
        ``predicate(read)`` is true; returns that Read."""
        deadline = time.monotonic() + timeout
        while True:
            for r in self.reads():
                if r.line_no >= start_line and predicate(r):
                    return r
            if time.monotonic() > deadline:
                raise TimeoutError(
                    'guest %s: no matching SCAPH-READ within %ss; serial log '
                    'ends with:\n%s' % (self.name, timeout, self.tail()))
            if self.is_active() is False:
                raise GuestError('guest %s stopped; serial log ends with:\n%s'
                                 % (self.name, self.tail()))
            time.sleep(0.3)

    def wait_for_value(self, path, value, timeout=60, start_line=0):
        """Wait until the guest reads ``value`` (str or int) at ``path``."""
        value = str(value)
        return self.wait_for_read(lambda r: r.values.get(path) == value,
                                  timeout, start_line)

    def probes(self):
        """{probe name: exit code} of the SCAPH-PROBE lines so far."""
        out = {}
        for line in self.lines():
            m = _PROBE_RE.search(line)
            if m:
                out[m.group(1)] = int(m.group(2))
        return out

    def wait_probes(self, timeout=120):
        """Wait for SCAPH-PROBES done; returns probes()."""
        self.wait_for(r'SCAPH-PROBES done', timeout)
        return self.probes()

    def walks(self):
        """{what: seen} of the SCAPH-WALK lines (probes walking out)."""
        out = {}
        for line in self.lines():
            m = _WALK_RE.search(line)
            if m:
                out[m.group(1)] = m.group(2)
        return out

    def listings(self):
        """The SCAPH-LS lines, each as a list of entries."""
        return [rest.split() for _, rest in self.markers('LS')]

    def json_lines(self):
        """(file name, content) of every SCAPH-JSON line so far."""
        out = []
        for line in self.lines():
            m = _JSON_RE.search(line)
            if m:
                out.append((m.group(1), m.group(2)))
        return out


class Guest(SerialConsole):
    """A running test guest; use as a context manager.

    ``with Guest(share_dir=d, cmdline_params={'tag': 'scaphandre'}) as g:``
    defines and starts the domain (persistent, name ``scaph-test-...``),
    and on exit destroys and undefines it and removes its serial log, even
    when the test failed. ``cmdline_params`` keys without a dot get the
    ``scaph.`` prefix (see kernel_cmdline()); when ``share_dir`` is given
    and no tag parameter is, ``scaph.tag`` is set to ``tag``. Other keyword
    arguments go to domain_xml(). Set SCAPH_TEST_KEEP_LOGS=1 to keep logs.
    """

    def __init__(self, share_dir=None, cmdline_params=None, name=None,
                 uuid=None, label='', uri=libvirtd.DEFAULT_URI,
                 flavour='cloud', log_dir=None, persistent=True,
                 before_create=None, xml_transform=None, images=None,
                 **xml_kwargs):
        self.uri = uri
        # (kernel, initrd) to boot instead of build_image(flavour)'s: paths
        # the libvirtd at ``uri`` can read (a chroot's libvirtd, say).
        self.images = images
        self.before_create = before_create
        # xml -> xml, applied to the generated domain before it is defined
        self.xml_transform = xml_transform
        self.name = name or unique_name(label)
        self.uuid = str(uuid or uuidlib.uuid4())
        self.share_dir = share_dir
        self.flavour = flavour
        self.persistent = persistent
        params = dict(cmdline_params or {})
        tag = xml_kwargs.get('tag', DEFAULT_TAG)
        if share_dir is not None and not any(
                k in ('tag', 'scaph.tag') for k in params):
            params['scaph.tag'] = tag
        if xml_kwargs.get('fs_driver') == '9p' and not any(
                k in ('fstype', 'scaph.fstype') for k in params):
            params['scaph.fstype'] = '9p'
        self.cmdline_params = params
        self.xml_kwargs = xml_kwargs
        self._own_log_dir = log_dir is None
        self.log_dir = log_dir      # a temporary one is made by start()
        self.serial_log = None
        self.xml = None
        self._conn = None
        self.dom = None

    # -- lifecycle ---------------------------------------------------------

    def conn(self):
        """An open libvirt connection, reopened when the old one broke
        (after a libvirtd restart, for example)."""
        import libvirt
        if self._conn is not None:
            try:
                self._conn.getLibVersion()
                return self._conn
            except libvirt.libvirtError:
                pass
            try:
                self._conn.close()
            except libvirt.libvirtError:
                pass
            self._conn = None
        self._conn = libvirt.open(self.uri)
        return self._conn

    def domain(self):
        """The libvirt domain, looked up again on the current connection."""
        self.dom = self.conn().lookupByUUIDString(self.uuid)
        return self.dom

    def move_to(self, uri):
        """Follow the domain to the libvirtd at ``uri`` (after a
        migration): later calls look it up there."""
        import libvirt
        if self._conn is not None:
            try:
                self._conn.close()
            except libvirt.libvirtError:
                pass
            self._conn = None
        self.uri = uri

    def start(self):
        kernel, initrd = self.images or build_image(self.flavour)
        if self.log_dir is None:
            self.log_dir = tempfile.mkdtemp(prefix='scaph-test-log-')
        self.serial_log = os.path.join(self.log_dir,
                                       self.name + '.serial.log')
        try:
            reap_orphans(self.uri)
        except Exception:  # noqa: BLE001 - reaping is best effort
            pass
        self.xml = domain_xml(self.name, self.uuid, kernel, initrd,
                              self.serial_log, self.cmdline_params,
                              share_dir=self.share_dir,
                              description=_owner_tag(), **self.xml_kwargs)
        if self.xml_transform is not None:
            self.xml = self.xml_transform(self.xml)
        _LIVE_GUESTS.add(self)
        conn = self.conn()
        try:
            if self.persistent:
                self.dom = conn.defineXML(self.xml)
                if self.before_create is not None:
                    # e.g. "scaph-openstack attach" redefining the domain
                    self.before_create(self)
                self.dom = self.domain()
                self.dom.create()
            else:
                self.dom = conn.createXML(self.xml, 0)
        except Exception:
            self.cleanup()
            raise
        return self

    def destroy(self):
        """Stop the domain (it stays defined)."""
        import libvirt
        try:
            dom = self.domain()
            if dom.isActive():
                dom.destroy()
        except libvirt.libvirtError:
            pass

    def cleanup(self):
        """Destroy and undefine the domain, remove the serial log.

        If libvirtd is down (a test stopped it), it is started again first:
        the domain must not outlive the test."""
        import libvirt
        try:
            try:
                dom = self.domain()
            except libvirt.libvirtError as exc:
                dom = None
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    libvirtd.ensure_libvirtd(self.uri)
                    try:
                        dom = self.domain()
                    except libvirt.libvirtError:
                        dom = None
            if dom is not None:
                _destroy_undefine(dom)
        finally:
            _LIVE_GUESTS.discard(self)
            if self._conn is not None:
                try:
                    self._conn.close()
                except libvirt.libvirtError:
                    pass
                self._conn = None
            if self.serial_log and not os.environ.get('SCAPH_TEST_KEEP_LOGS'):
                try:
                    os.unlink(self.serial_log)
                except FileNotFoundError:
                    pass
                if self._own_log_dir and self.log_dir:
                    shutil.rmtree(self.log_dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()
        return False

    def is_active(self):
        """True if running, False if stopped or gone, None when libvirtd
        cannot be asked (down or restarting)."""
        import libvirt
        try:
            return bool(self.domain().isActive())
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return False
            return None

def write_atomic(path, content):
    """Write ``content`` (str or bytes) to ``path`` through a temporary
    file in the same directory and rename(), as the agent does: a reader
    (the guest) sees the old or the new content, never a partial one."""
    data = content.encode() if isinstance(content, str) else content
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix='.tmp-')
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class ReadOnlyShare:
    """A tree the test writes (``rw``) and a read-only view of it (``ro``)
    to give a guest, the way doc/design.md (Facts 2) says works with
    virtiofs (libvirt 9.0 refuses <readonly/>): ``rw`` is a plain directory
    (or a tmpfs with ``tmpfs=True``), ``ro`` a bind mount of it remounted
    read-only. Context manager; unmounts and removes everything on exit.
    """

    def __init__(self, base=None, tmpfs=False):
        self.base = base
        self.tmpfs = tmpfs
        self.rw = self.ro = None
        self._mounted = []

    def __enter__(self):
        self.base = tempfile.mkdtemp(prefix='scaph-test-share-',
                                     dir=self.base)
        self.rw = os.path.join(self.base, 'rw')
        self.ro = os.path.join(self.base, 'ro')
        os.mkdir(self.rw, 0o755)
        os.mkdir(self.ro, 0o755)
        try:
            if self.tmpfs:
                self._mount(['-t', 'tmpfs', '-o', 'size=16m,mode=0755',
                             'tmpfs', self.rw], self.rw)
            self._mount(['--bind', self.rw, self.ro], self.ro)
            subprocess.run(['mount', '-o', 'remount,bind,ro', self.ro],
                           check=True, capture_output=True)
        except Exception:
            self.close()
            raise
        return self

    def _mount(self, args, target):
        subprocess.run(['mount'] + args, check=True, capture_output=True)
        self._mounted.append(target)

    def path(self, relpath):
        """Path of ``relpath`` in the writable tree."""
        return os.path.join(self.rw, relpath)

    def write(self, relpath, content):
        """Create or atomically replace ``relpath`` (parents created)."""
        path = self.path(relpath)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_atomic(path, content)

    def close(self):
        for target in reversed(self._mounted):
            res = subprocess.run(['umount', target], capture_output=True)
            if res.returncode != 0:
                subprocess.run(['umount', '-l', target], capture_output=True)
        self._mounted = []
        if self.base:
            shutil.rmtree(self.base, ignore_errors=True)

    def __exit__(self, *exc):
        self.close()
        return False
