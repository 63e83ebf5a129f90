"""Ceilometer side of scaph-openstack: a discovery and four pollsters.

They run inside ``ceilometer-polling --polling-namespaces compute`` and read
nothing but the agent's snapshot (scaph_openstack.snapshot): no libvirt,
no Keystone, no agent internals. Meters are documented in
doc/ceilometer.md.
"""
