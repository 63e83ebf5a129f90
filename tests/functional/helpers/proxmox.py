"""A Proxmox VE node, as far as this machine can be one: the VM
configurations and directory mappings of /etc/pve in a directory, ``qm``
and ``pvesh`` stand-ins that edit them, Proxmox's hookscript calling
convention, and QEMU started with the command line qemu-server generates.

There is no Proxmox here. What stands in, and how close it is:

- ``qm set VMID --OPTION VALUE`` and ``pvesh create|set
  /cluster/mapping/dir...``: scripts (FAKE_QM, FAKE_PVESH) that write the
  option into ``<pve_dir>/qemu-server/VMID.conf`` and the mapping into
  ``<pve_dir>/mapping/directory.cfg`` in Proxmox's formats, and, like
  PVE::Mapping::Dir::assert_valid_map_list, refuse a mapping whose path on
  this node is not an existing directory.
- run_hookscript(): PVE::GuestHelpers::exec_hookscript: the script must be
  a file and executable, is run as ``<script> VMID PHASE``, and a failure
  in pre-start stops the start.
- ProxmoxVM: PVE::QemuServer::config_to_command's pieces for a VM without
  disks (``-id``, ``-name NAME,debug-threads=on``, ``-no-shutdown``, QMP
  socket, ``-pidfile``, ``-smbios type=1,uuid=``, ``-smp``, ``-m``), the
  VM's ``args:`` split like a shell (PVE::Tools::split_args), and for each
  ``virtiofsN``: a virtiofsd started the way
  PVE::QemuServer::Virtiofs::start_virtiofsd starts it (a listening unix
  socket passed as ``--fd``, ``--shared-dir`` the mapping's path on this
  node, ``--announce-submounts``; a new session), ``-chardev socket`` and
  ``vhost-user-fs-pci,queue-size=1024,tag=<mapping id>``, with
  ``memory-backend-memfd,share=on`` as Memory.pm adds. Kernel, initrd and
  serial file replace the disks, as in the other guest tests. Not passed:
  ``-daemonize`` (the test keeps QEMU as its child) and virtiofsd's
  ``--syslog`` (this machine has no /dev/log; it only chooses where
  virtiofsd logs).
- ``-id VMID`` is an option of Proxmox's patched QEMU; upstream QEMU
  refuses it. QEMU is started with ``-L /xxx`` (a data directory that does
  not exist, same length) where Proxmox has ``-id VMID``, and those bytes
  of its argument area are then rewritten through /proc/PID/mem, once
  QEMU has parsed them (its QMP socket exists), so that
  /proc/PID/cmdline, what the qemu inventory reads, is Proxmox's.

QEMU is this host's (Debian 12, 7.2), or with ``root`` Debian 13's 10.0
in that root (chroot), the generation of Proxmox VE 9.

virtiofsd is Debian 13's 1.13 (the version Proxmox VE 8.4 and 9 ship),
run from the Debian 13 root of tools/debian13-stack through that root's
dynamic loader.
"""

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile

from scaph_openstack import proxmox
from tests.functional.faults import support
from tests.functional.helpers import debian13
from tests.functional.helpers import guest as guest_helper

NODE = 'pve1'
QEMU = '/usr/bin/qemu-system-x86_64'
VIRTIOFSD = os.path.join(debian13.ROOT_DIR, 'usr/libexec/virtiofsd')
LOADER = os.path.join(debian13.ROOT_DIR, 'lib64/ld-linux-x86-64.so.2')
LIBRARY_PATH = ':'.join(os.path.join(debian13.ROOT_DIR, d) for d in (
    'lib/x86_64-linux-gnu', 'usr/lib/x86_64-linux-gnu'))
MEMORY_MB = 256

FAKE_QM = r'''#!/bin/sh
# qm set VMID --OPTION VALUE [--OPTION VALUE...]: the options into
# $PVE_DIR/qemu-server/VMID.conf (replaced where present), as qm does.
[ "$1" = set ] || { echo "fake qm: only 'set'" >&2; exit 2; }
echo "qm $*" >> "$PVE_DIR/commands.log"
vmid=$2; shift 2
conf=$PVE_DIR/qemu-server/$vmid.conf
if [ ! -f "$conf" ]; then
    echo "Configuration file '$conf' does not exist" >&2; exit 2
fi
while [ $# -ge 2 ]; do
    key=${1#--}; value=$2; shift 2
    grep -v "^$key:" "$conf" > "$conf.new"
    printf '%s: %s\n' "$key" "$value" | cat - "$conf.new" > "$conf"
    rm -f "$conf.new"
done
'''

FAKE_PVESH = r'''#!/bin/sh
# pvesh create /cluster/mapping/dir --id ID [--description D] --map M...
# pvesh set /cluster/mapping/dir/ID --map M...
# into $PVE_DIR/mapping/directory.cfg, in PVE::Mapping::Dir's format.
echo "pvesh $*" >> "$PVE_DIR/commands.log"
cfg=$PVE_DIR/mapping/directory.cfg
mkdir -p "$PVE_DIR/mapping"; touch "$cfg"
verb=$1; path=$2; shift 2
case "$verb $path" in
    "create /cluster/mapping/dir") id= ;;
    "set /cluster/mapping/dir/"*) id=${path##*/} ;;
    *) echo "fake pvesh: unsupported $verb $path" >&2; exit 2 ;;
esac
maps=
while [ $# -ge 2 ]; do
    case "$1" in
        --id) id=$2 ;;
        --map)
            node=$(echo "$2" | sed -n 's/.*node=\([^,]*\).*/\1/p')
            dir=$(echo "$2" | sed -n 's/.*path=\([^,]*\).*/\1/p')
            if [ "$node" = "$PVE_NODE" ] && [ ! -d "$dir" ]; then
                echo "Path $dir does not exist" >&2; exit 255
            fi
            maps="$maps	map $2
" ;;
    esac
    shift 2
done
if [ "$verb" = create ] && grep -qx "$id" "$cfg"; then
    echo "mapping '$id' already exists" >&2; exit 255
fi
awk -v id="$id" '$0 == id {skip=1; next} /^[^ \t]/ {skip=0} !skip' \
    "$cfg" > "$cfg.new"
{ cat "$cfg.new"; printf '%s\n%s\n' "$id" "$maps"; } > "$cfg"
rm -f "$cfg.new"
'''


class PveNode:
    """``<root>/pve`` (qemu-server/, mapping/) and a ``bin`` with qm and
    pvesh; ``env()`` is what commands run with."""

    def __init__(self, root, node=NODE):
        self.root = str(root)
        self.node = node
        self.pve_dir = os.path.join(self.root, 'pve')
        self.bin_dir = os.path.join(self.root, 'bin')
        for sub in ('qemu-server', 'mapping'):
            os.makedirs(os.path.join(self.pve_dir, sub), exist_ok=True)
        os.makedirs(self.bin_dir, exist_ok=True)
        for name, text in (('qm', FAKE_QM), ('pvesh', FAKE_PVESH)):
            path = os.path.join(self.bin_dir, name)
            with open(path, 'w') as f:
                f.write(text)
            os.chmod(path, 0o755)

    def env(self, **extra):
        env = dict(os.environ, PVE_DIR=self.pve_dir, PVE_NODE=self.node,
                   PATH=self.bin_dir + os.pathsep + os.environ['PATH'])
        env.update(extra)
        return env

    def write_vm(self, vmid, smbios_uuid, name=None, extra=''):
        text = 'memory: %d\nsmbios1: uuid=%s\n' % (MEMORY_MB, smbios_uuid)
        if name:
            text = 'name: %s\n' % name + text
        with open(self.config_path(vmid), 'w') as f:
            f.write(text + extra)

    def config_path(self, vmid):
        return os.path.join(self.pve_dir, 'qemu-server', '%s.conf' % vmid)

    def options(self, vmid):
        with open(self.config_path(vmid)) as f:
            return proxmox.config_options(f.read())

    def mapping_path(self, dirid):
        """The path of mapping ``dirid`` on this node (directory.cfg)."""
        path = os.path.join(self.pve_dir, 'mapping', 'directory.cfg')
        with open(path) as f:
            text = f.read()
        section = re.search(r'^%s\n((?:\t.*\n)*)' % re.escape(dirid), text,
                            re.M)
        for line in (section.group(1) if section else '').splitlines():
            found = re.fullmatch(r'\tmap node=%s,path=(\S+)'
                                 % re.escape(self.node), line)
            if found:
                return found.group(1)
        raise KeyError('no mapping %s on %s' % (dirid, self.node))


class HookscriptError(RuntimeError):
    pass


def run_hookscript(script, vmid, phase, env, stop_on_error=False):
    """PVE::GuestHelpers::exec_hookscript; returns the CompletedProcess."""
    if not os.path.isfile(script):
        raise HookscriptError("script '%s' does not exist" % script)
    if not os.access(script, os.X_OK):
        raise HookscriptError("script '%s' is not executable" % script)
    result = subprocess.run([script, str(vmid), phase], env=env,
                            capture_output=True, text=True, timeout=120)
    if result.returncode != 0 and stop_on_error:
        raise HookscriptError('hookscript error for %s on %s: exit %s\n%s'
                              % (vmid, phase, result.returncode,
                                 result.stderr + result.stdout))
    return result


def extra_initrd(path, files):
    """A gzip newc cpio holding {name: text} (mode 0755), to append to the
    guest's initrd: Linux unpacks concatenated archives in order."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in files.items():
            with open(os.path.join(tmp, name), 'w') as f:
                f.write(text)
            os.chmod(os.path.join(tmp, name), 0o755)
        listing = '\n'.join(['.'] + ['./' + n for n in sorted(files)]) + '\n'
        cpio = subprocess.run(['cpio', '-o', '-H', 'newc', '-R', '0:0',
                               '--quiet'], input=listing.encode(), cwd=tmp,
                              capture_output=True, check=True)
    with open(path, 'wb') as f:
        subprocess.run(['gzip', '-c'], input=cpio.stdout, stdout=f,
                       check=True)


def bootcmd_script(bootcmd):
    """The cloud-init snippet's bootcmd entry (an argv list) as a script
    the test guest's init runs for scaph.tag=auto."""
    return '#!/bin/sh\nexec %s\n' % shlex.join(bootcmd)


def _rewrite_id_argument(pid, placeholder, replacement):
    """Overwrite ``placeholder`` (bytes of whole arguments) with
    ``replacement`` (same length) in process ``pid``'s argument area."""
    with open('/proc/%d/stat' % pid) as f:
        fields = f.read().rsplit(')', 1)[1].split()
    arg_start = int(fields[45])        # field 48: arg_start
    with open('/proc/%d/cmdline' % pid, 'rb') as f:
        cmdline = f.read()
    if placeholder not in cmdline:
        raise RuntimeError('%r is not in the command line of %d: %r'
                           % (placeholder, pid, cmdline))
    offset = cmdline.index(placeholder)
    with open('/proc/%d/mem' % pid, 'r+b', buffering=0) as mem:
        mem.seek(arg_start + offset)
        mem.write(replacement)


class ProxmoxVM(guest_helper.SerialConsole):
    """QEMU for VM ``vmid`` of ``node``, started from its configuration
    the way qemu-server starts it (module doc); the test guest's kernel
    replaces its disks. Use as a context manager after the hookscript's
    pre-start phase."""

    def __init__(self, node, vmid, cmdline_params, bootcmd=None,
                 flavour='amd64', root=None, images=None, tmp_base=None):
        """``root``: a Debian 13 root of tools/debian13-stack to run QEMU
        in (chroot; Proxmox VE 9 is built on Debian 13), with ``images``
        (kernel, initrd) and ``tmp_base`` (its sockets, serial log and
        initrd) at paths that root sees (debian13.SHARED_DIR)."""
        self.node = node
        self.vmid = str(vmid)
        self.cmdline_params = dict(cmdline_params)
        self.bootcmd = bootcmd
        self.flavour = flavour
        self.root = root
        self.images = images
        self.tmp = tempfile.mkdtemp(prefix='scaph-test-pve-', dir=tmp_base)
        self.serial_log = os.path.join(self.tmp, 'serial.log')
        self.qmp_path = os.path.join(self.tmp, '%s.qmp' % self.vmid)
        self.name = None
        self.qemu = None
        self.virtiofsd = []
        self._sockets = []

    # -- what qemu-server generates ----------------------------------------

    def _virtiofs_pieces(self, options):
        devices = []
        for option, dirid in sorted(
                proxmox.virtiofs_options(options).items()):
            index = option[len('virtiofs'):]
            sock_path = os.path.join(self.tmp, 'vm%s-fs%s' % (self.vmid,
                                                               index))
            self._start_virtiofsd(sock_path, self.node.mapping_path(dirid),
                                  index)
            devices += ['-chardev', 'socket,id=virtiofs%s,path=%s'
                        % (index, sock_path),
                        '-device', 'vhost-user-fs-pci,queue-size=1024,'
                        'chardev=virtiofs%s,tag=%s' % (index, dirid)]
        return devices

    def _start_virtiofsd(self, sock_path, shared_dir, index):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(sock_path)
        sock.listen(1)
        os.set_inheritable(sock.fileno(), True)
        self._sockets.append(sock)
        log = open(os.path.join(self.tmp, 'virtiofsd%s.log' % index), 'w')
        self.virtiofsd.append(subprocess.Popen(
            [LOADER, '--library-path', LIBRARY_PATH, VIRTIOFSD,
             '--fd=%d' % sock.fileno(), '--shared-dir=%s' % shared_dir,
             '--announce-submounts'],
            pass_fds=(sock.fileno(),), start_new_session=True,
            stdout=log, stderr=subprocess.STDOUT))
        log.close()

    def argv(self, kernel, initrd):
        options = self.node.options(self.vmid)
        self.name = options.get('name') or 'vm%s' % self.vmid
        smbios = options['smbios1']
        memory = int(options.get('memory', MEMORY_MB))
        argv = ['/usr/bin/kvm', '-L', '/' + 'x' * len(self.vmid),
                '-name', '%s,debug-threads=on' % self.name, '-no-shutdown',
                '-chardev', 'socket,id=qmp,path=%s,server=on,wait=off'
                % self.qmp_path,
                '-mon', 'chardev=qmp,mode=control',
                '-pidfile', os.path.join(self.tmp, '%s.pid' % self.vmid),
                '-smbios', 'type=1,' + smbios,
                '-smp', '1,sockets=1,cores=1,maxcpus=1',
                '-nodefaults', '-display', 'none', '-m', str(memory)]
        machine = 'type=pc,accel=tcg'
        virtiofs = self._virtiofs_pieces(options)
        if virtiofs:
            argv += ['-object', 'memory-backend-memfd,id=virtiofs-mem,'
                     'size=%dM,share=on' % memory]
            machine += ',memory-backend=virtiofs-mem'
        argv += ['-machine', machine, '-kernel', kernel, '-initrd', initrd,
                 '-append', guest_helper.kernel_cmdline(self.cmdline_params),
                 '-serial', 'file:%s' % self.serial_log]
        argv += virtiofs
        # args: last, as qemu-server appends it (PVE::Tools::split_args).
        argv += shlex.split(options.get('args', ''))
        return argv

    # -- lifecycle -----------------------------------------------------------

    def start(self):
        kernel, initrd = self.images or guest_helper.build_image(self.flavour)
        if self.bootcmd is not None:
            extra = os.path.join(self.tmp, 'extra.cpio.gz')
            extra_initrd(extra, {'scaph-bootcmd.sh':
                                 bootcmd_script(self.bootcmd)})
            combined = os.path.join(self.tmp, 'initrd.img')
            with open(combined, 'wb') as out:
                for part in (initrd, extra):
                    with open(part, 'rb') as f:
                        shutil.copyfileobj(f, out)
            initrd = combined
        try:
            argv = self.argv(kernel, initrd)
            self.qemu = subprocess.Popen(
                argv, executable=QEMU, start_new_session=True,
                preexec_fn=self._chroot if self.root else None,
                stdout=subprocess.DEVNULL,
                stderr=open(os.path.join(self.tmp, 'qemu.log'), 'w'))
            # QEMU parses its arguments from that same memory: rewrite
            # them once it has, which its QMP socket shows.
            support.wait_until(lambda: os.path.exists(self.qmp_path) or
                               self.qemu.poll() is not None, 60,
                               what='the QMP socket')
            placeholder = b'\0-L\0/' + b'x' * len(self.vmid) + b'\0'
            _rewrite_id_argument(self.qemu.pid, placeholder,
                                 b'\0-id\0' + self.vmid.encode() + b'\0')
        except BaseException:
            self.cleanup()
            raise
        finally:
            # qemu-server closes its end once QEMU runs (close_sockets).
            for sock in self._sockets:
                sock.close()
            self._sockets = []
        return self

    def _chroot(self):
        os.chroot(self.root)
        os.chdir('/')

    def cmdline(self):
        with open('/proc/%d/cmdline' % self.qemu.pid, 'rb') as f:
            return [a.decode() for a in f.read().split(b'\0') if a]

    def qemu_log(self):
        try:
            with open(os.path.join(self.tmp, 'qemu.log')) as f:
                return f.read()
        except OSError:
            return ''

    def is_active(self):
        return self.qemu is not None and self.qemu.poll() is None

    def tail(self, n=40):
        return '%s\n[qemu stderr] %s' % (super().tail(n),
                                          self.qemu_log()[-2000:])

    def stop(self):
        for process in [self.qemu] + self.virtiofsd:
            if process is None or process.poll() is not None:
                continue
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(10)

    def cleanup(self):
        self.stop()
        if not os.environ.get('SCAPH_TEST_KEEP_LOGS'):
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()
        return False

