"""The agent's option groups, one module each.

Nothing is registered at import: nova-compute and ceilometer-polling import
``scaph_openstack.conf.nova`` / ``.ceilometer`` into their own global CONF,
where the agent's ``[libvirt] connection_uri`` would collide with Nova's.
The agent and the CLI call ``register_opts`` on their entry.
"""

from oslo_config import cfg

from scaph_openstack.conf import accounting
from scaph_openstack.conf import agent
from scaph_openstack.conf import attribution
from scaph_openstack.conf import energy
from scaph_openstack.conf import libvirt
from scaph_openstack.conf import prometheus
from scaph_openstack.conf import proxmox
from scaph_openstack.conf import qemu
from scaph_openstack.conf import share
from scaph_openstack.conf import simulated
from scaph_openstack.conf import snapshot

CONF = cfg.CONF

GROUP_MODULES = (agent, energy, simulated, libvirt, qemu, proxmox,
                 attribution, snapshot, share, prometheus, accounting)


def register_opts(conf=CONF):
    for module in GROUP_MODULES:
        module.register_opts(conf)
