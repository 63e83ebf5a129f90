"""Publisher ``snapshot``: the host-only JSON read by Ceilometer."""

from scaph_openstack.publishers import base
from scaph_openstack import snapshot


class SnapshotPublisher(base.Publisher):

    name = 'snapshot'

    def __init__(self, path):
        self.path = path

    @classmethod
    def from_conf(cls, conf):
        return cls(conf.snapshot.path)

    def publish(self, report):
        snapshot.write(self.path, snapshot.build(report))
