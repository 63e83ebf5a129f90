"""Stand-ins for the unit tests only: the functional tests use the real
libvirtd and real guests."""

import errno

import libvirt

from scaph_openstack.inventory import base
from scaph_openstack.inventory import topology
from scaph_openstack import report as report_mod


def libvirt_error(message, err=None):
    """A libvirtError that says ``message``. libvirt-python takes the text
    of the calling thread's last libvirt error when there is one, so an
    earlier test that failed to connect would otherwise change what this
    one says (it did, in CI)."""
    libvirt.virResetLastError()
    error = libvirt.libvirtError(message)
    if err is not None:
        error.err = err
    return error


class Clock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


class StaticInventory(base.Inventory):
    """Instances whose CPU time the test sets."""

    name = 'static'

    def __init__(self):
        self.cpu = {}
        self.identities = {}
        self.pinning = {}
        self.vcpu_times = {}
        self.states = {}     # uuid -> state, running unless set
        self.available = True

    def set(self, uuid, cpu_ns, project='p1', vcpus=1, cpus=None,
            pins=None, vcpu_times=None):
        self.identities.setdefault(uuid, base.InstanceIdentity(
            uuid=uuid, name='instance-' + uuid, display_name='vm-' + uuid,
            project_id=project, user_id='u1', vcpus=vcpus, nova=True))
        self.cpu[uuid] = cpu_ns
        if cpus is not None:
            self.pinning[uuid] = topology.CpuPins((frozenset(cpus),),
                                                  frozenset(cpus))
        if pins is not None:
            self.pinning[uuid] = pins
        if vcpu_times is not None:
            self.vcpu_times[uuid] = dict(vcpu_times)

    def remove(self, uuid):
        """The hypervisor no longer defines it."""
        self.cpu.pop(uuid)
        self.states.pop(uuid, None)

    def set_state(self, uuid, state):
        """Paused or shut off: still defined. Shut off has no CPU time."""
        self.states[uuid] = state
        if state == base.STATE_SHUTOFF:
            self.cpu[uuid] = 0

    def list_instances(self):
        if not self.available:
            raise base.InventoryUnavailable('libvirtd went away')
        return tuple(base.InstanceUsage(self.identities[u], c,
                                        self.identities[u].vcpus,
                                        self.pinning.get(u),
                                        self.vcpu_times.get(u),
                                        self.states.get(
                                            u, base.STATE_RUNNING))
                     for u, c in self.cpu.items())


class RecordingPublisher:
    name = 'recording'

    def __init__(self):
        self.reports = []
        self.totals = []

    def publish(self, report):
        self.reports.append(report)
        self.totals.append({u: r.total_uj for u, r in
                            report.instances.items()})


class FullDisk:
    """Makes Ledger.save fail like a full filesystem while enabled."""

    def __init__(self, monkeypatch, ledger_cls):
        self.full = False
        original = ledger_cls.save

        def save(ledger, path):
            if self.full:
                raise OSError(errno.ENOSPC, 'No space left on device', path)
            return original(ledger, path)

        monkeypatch.setattr(ledger_cls, 'save', save)


def report_of(ledger, now=100.0, **fields):
    """The frozen Report of ``ledger`` as the ticker builds it."""
    values = dict(host='h', time=now, interval_s=2.0,
                  configured_interval_s=2.0, stale_after_s=6.0,
                  source='simulated', model='cputime', idle_policy='none')
    values.update(fields)
    return report_mod.ReportBuilder().build(ledger, **values)
