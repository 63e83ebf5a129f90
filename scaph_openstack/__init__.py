"""scaph-openstack: per-instance energy for OpenStack compute nodes."""
