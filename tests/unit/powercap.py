"""Fixture powercap trees: the same files as /sys/class/powercap."""

import os

INTEL_RANGE = 262143328850
AMD_RANGE = 65532610987


def write_zone(root, dirname, name, energy_uj, max_range=INTEL_RANGE):
    zone = os.path.join(root, dirname)
    os.makedirs(zone, exist_ok=True)
    for fname, value in (('name', name), ('energy_uj', energy_uj),
                         ('max_energy_range_uj', max_range),
                         ('enabled', 1)):
        with open(os.path.join(zone, fname), 'w') as f:
            f.write('%s\n' % value)
    return zone


def set_energy(root, dirname, energy_uj):
    """Advance a counter the way the kernel shows it (whole file)."""
    path = os.path.join(root, dirname, 'energy_uj')
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        f.write('%d\n' % energy_uj)
    os.rename(tmp, path)


def intel_two_sockets(root):
    write_zone(root, 'intel-rapl:0', 'package-0', 1000)
    write_zone(root, 'intel-rapl:0:0', 'core', 500)
    write_zone(root, 'intel-rapl:0:1', 'dram', 200)
    write_zone(root, 'intel-rapl:1', 'package-1', 3000)
    write_zone(root, 'intel-rapl:1:0', 'dram', 400)


def intel_client_with_psys(root):
    write_zone(root, 'intel-rapl:0', 'package-0', 1000)
    write_zone(root, 'intel-rapl:0:0', 'core', 100)
    write_zone(root, 'intel-rapl:0:1', 'uncore', 50)
    write_zone(root, 'intel-rapl:1', 'psys', 9000)


def amd_epyc(root):
    # AMD Zen (Linux 5.11+): same tree, a package per socket, no dram.
    write_zone(root, 'intel-rapl:0', 'package-0', 7000, AMD_RANGE)
    write_zone(root, 'intel-rapl:0:0', 'core', 6000, AMD_RANGE)
    write_zone(root, 'intel-rapl:1', 'package-1', 8000, AMD_RANGE)
