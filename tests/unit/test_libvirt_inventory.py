import libvirt

from scaph_openstack.inventory import libvirt as libvirt_inventory

XML = """<domain><name>%s</name><uuid>%s</uuid><vcpu>1</vcpu></domain>"""


class Domain:
    def __init__(self, uuid, gone=False):
        self.uuid, self.gone = uuid, gone

    def UUIDString(self):
        return self.uuid

    def name(self):
        return 'd-' + self.uuid

    def XMLDesc(self, flags):
        if self.gone:
            raise libvirt.libvirtError('Domain not found')
        return XML % (self.name(), self.uuid)


class Connection:
    def __init__(self, records):
        self.records = records

    def getAllDomainStats(self, stats, flags):
        return self.records


def test_a_domain_that_vanishes_mid_tick_is_skipped_not_an_outage():
    inventory = libvirt_inventory.LibvirtInventory()
    inventory._conn = Connection([
        (Domain('a'), {'cpu.time': 10, 'vcpu.current': 1}),
        (Domain('b', gone=True), {'cpu.time': 20, 'vcpu.current': 1})])
    (usage,) = inventory.list_instances()
    assert usage.uuid == 'a' and usage.cpu_time_ns == 10
