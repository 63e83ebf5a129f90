"""Option groups, one module each; ``register_opts`` wires them all in."""

from oslo_config import cfg

from scaph_openstack.conf import agent
from scaph_openstack.conf import attribution
from scaph_openstack.conf import energy
from scaph_openstack.conf import libvirt
from scaph_openstack.conf import prometheus
from scaph_openstack.conf import qemu
from scaph_openstack.conf import share
from scaph_openstack.conf import simulated
from scaph_openstack.conf import snapshot

CONF = cfg.CONF

GROUP_MODULES = (agent, energy, simulated, libvirt, qemu, attribution,
                 snapshot, share, prometheus)


def register_opts(conf=CONF):
    for module in GROUP_MODULES:
        module.register_opts(conf)


register_opts(CONF)
