"""``[DEFAULT] compute_driver = scaphandre.LibvirtDriver``

Nova imports ``nova.virt.<compute_driver>``; the driver itself lives in
scaph_openstack.nova.driver.
"""

from scaph_openstack.nova.driver import LibvirtDriver

__all__ = ['LibvirtDriver']
