"""Nova integration: ``compute_driver = scaphandre.LibvirtDriver``
(driver.py, loaded through the nova_shim package) and the validator of the
``scaphandre:`` flavor extra spec namespace (extra_specs.py). Its options
are in scaph_openstack.conf.nova. See doc/nova.md.
"""
