import os

from scaph_openstack import privsep


@privsep.sys_admin.entrypoint
def read_energy_uj(path):
    """Contents of a powercap energy_uj file, and nothing else."""
    real = os.path.realpath(path)
    if os.path.basename(real) != 'energy_uj' or \
            not os.path.basename(os.path.dirname(real)).startswith(
                'intel-rapl:'):
        raise ValueError('refusing to read %s: not a RAPL energy_uj' % path)
    with open(real, encoding='ascii') as f:
        return f.read(64)
