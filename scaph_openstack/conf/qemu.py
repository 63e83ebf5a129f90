from oslo_config import cfg

GROUP = cfg.OptGroup('qemu', title='QEMU process inventory (Proxmox, plain '
                                   'QEMU)')

OPTS = [
    cfg.StrOpt('proc_path', default='/proc',
               help='procfs root scanned for QEMU processes.'),
    cfg.ListOpt('allowed_users', default=['root'],
                help='Users (names or numeric uids) whose QEMU processes '
                     'are instances: all four uids of a process (real, '
                     'effective, saved, filesystem; the Uid: line of '
                     '/proc/PID/status) must be among them. Any other '
                     'process with a QEMU-like command line is ignored: '
                     'any local user can start one that claims another '
                     'VM\'s uuid. Proxmox VE runs QEMU as root; add the '
                     'user of a QEMU started with -runas or by libvirt '
                     '(libvirt-qemu on Debian, qemu on RHEL) if this '
                     'inventory should count it. Names unknown on the host '
                     'are ignored (logged).'),
    cfg.ListOpt('binaries',
                default=['/usr/bin/qemu-system-*', '/usr/bin/kvm',
                         '/usr/libexec/qemu-kvm'],
                help='Executables a QEMU process may run, as absolute paths '
                     'or shell patterns where * does not match "/", checked '
                     'against /proc/PID/exe (the binary the kernel runs, not '
                     'the argv[0] the caller chooses; "<path> (deleted)" '
                     'after a package upgrade counts as <path>). /usr/bin/kvm '
                     'is QEMU itself on Proxmox VE. Reading the exe of a '
                     'process of another user (or of one that changed its '
                     'uids) needs CAP_SYS_PTRACE, which the shipped systemd '
                     'unit does not grant: under it, the agent (root) can '
                     'check QEMU processes that run as root, as on Proxmox '
                     'VE; the others are not counted (logged).'),
]


def register_opts(conf):
    conf.register_group(GROUP)
    conf.register_opts(OPTS, group=GROUP)


def list_opts():
    return {GROUP: OPTS}
