"""Publisher ``snapshot``: the host-only JSON read by Ceilometer."""

from scaph_openstack.publishers import base
from scaph_openstack import snapshot


class SnapshotPublisher(base.Publisher):

    name = 'snapshot'

    def __init__(self, path):
        self.path = path


    def publish(self, report):
        snapshot.write(self.path, snapshot.build(report))


def from_conf(conf):
    return SnapshotPublisher(conf.snapshot.path)
