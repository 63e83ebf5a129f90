"""Stand-ins for the unit tests only: the functional tests use the real
libvirtd and real guests."""

import errno

from scaph_openstack.inventory import base
from scaph_openstack.inventory import topology


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
        self.cpu.pop(uuid)

    def list_instances(self):
        if not self.available:
            raise base.InventoryUnavailable('libvirtd went away')
        return tuple(base.InstanceUsage(self.identities[u], c,
                                        self.identities[u].vcpus,
                                        self.pinning.get(u),
                                        self.vcpu_times.get(u))
                     for u, c in self.cpu.items())


class RecordingPublisher:
    name = 'recording'

    def __init__(self):
        self.reports = []
        self.totals = []

    def publish(self, report):
        self.reports.append(report)
        self.totals.append({u: r.total_uj for u, r in
                            report.ledger.instances.items()})


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
