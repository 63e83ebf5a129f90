"""Entry point for oslo-config-generator (``oslo.config.opts``)."""

from scaph_openstack import conf


def list_opts():
    return [(group, opts)
            for module in conf.GROUP_MODULES
            for group, opts in module.list_opts().items()]
