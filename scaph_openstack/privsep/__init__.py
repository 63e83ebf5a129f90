"""The only code that runs privileged, behind oslo.privsep.

``sys_admin`` mounts the share tmpfs and its read-only view, makes
instance share directories for nova-compute (which runs unprivileged),
and reads root-only RAPL counters (CVE-2020-8694).
"""

import os

from oslo_privsep import capabilities
from oslo_privsep import priv_context

sys_admin = priv_context.PrivContext(
    'scaph_openstack',
    cfg_section='scaph_openstack_privsep',
    pypath=__name__ + '.sys_admin',
    capabilities=[capabilities.CAP_SYS_ADMIN,
                  capabilities.CAP_DAC_OVERRIDE,
                  capabilities.CAP_DAC_READ_SEARCH,
                  capabilities.CAP_FOWNER,
                  capabilities.CAP_CHOWN],
)


def start_if_root():
    """A root process (the agent's systemd unit, an operator's command)
    forks the privileged daemon instead of going through sudo/rootwrap,
    which it does not need. Unprivileged callers (nova-compute) keep the
    default: privsep-helper through their root helper."""
    if os.geteuid() == 0 and not sys_admin.channel:
        sys_admin.start(priv_context.Method.FORK)
