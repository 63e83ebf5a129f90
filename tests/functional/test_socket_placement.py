"""Per-socket attribution with real domains: the real agent reads each
guest's pinning from its libvirt XML and its vCPU times from libvirt.

This machine has two CPUs; a fixture topology makes each one a socket
(CPU 0 is socket 0, CPU 1 socket 1) next to a fixture RAPL tree with one
package per socket. Three real TCG guests:

- ``spanning``: 2 vCPUs, vCPU 0 pinned to CPU 0, vCPU 1 to CPU 1, the
  emulator to CPU 0: a guest across two NUMA nodes, charged per vCPU;
- ``socket1``: everything pinned to CPU 1: never pays for socket 0;
- ``floating``: unpinned: spread by load, and said to be (host-wide).

The numbers against a ground truth are tests/accuracy's job.
"""

import xml.etree.ElementTree as ET

import pytest

from tests.functional import helpers
from tests.functional.helpers import agent as agent_helper
from tests.functional.helpers import guest as guest_helper
from tests.functional.helpers import rapl


def pin(vcpus, cpus, emulator):
    """xml_transform: ``vcpus`` vCPUs, vCPU n pinned to cpus[n]."""
    def transform(xml):
        root = ET.fromstring(xml)
        root.find('vcpu').text = str(vcpus)
        cputune = ET.SubElement(root, 'cputune')
        for index, cpu in enumerate(cpus):
            ET.SubElement(cputune, 'vcpupin', vcpu=str(index),
                          cpuset=str(cpu))
        if emulator is not None:
            ET.SubElement(cputune, 'emulatorpin', cpuset=str(emulator))
        return ET.tostring(root, encoding='unicode')
    return transform


@pytest.fixture(scope='module')
def guests():
    helpers.require_guests()
    made = {
        'spanning': guest_helper.Guest(
            label='spanning', xml_transform=pin(2, [0, 1], 0),
            cmdline_params={'load': 'bursty:1:1'}),
        'socket1': guest_helper.Guest(
            label='socket1', xml_transform=pin(1, [1], 1),
            cmdline_params={'load': 'bursty:1:2'}),
        'floating': guest_helper.Guest(label='floating'),
    }
    try:
        for guest in made.values():
            guest.start()
        for guest in made.values():
            guest.wait_booted()
        yield made
    finally:
        for guest in made.values():
            guest.cleanup()


def fake_topology(root):
    for cpu in (0, 1):
        d = root / ('cpu%d' % cpu) / 'topology'
        d.mkdir(parents=True)
        (d / 'physical_package_id').write_text('%d\n' % cpu)
    return str(root)


def test_pinning_decides_which_socket_pays(tmp_path, guests):
    by_uuid = {g.uuid: name for name, g in guests.items()}
    sections = {
        'agent': {'interval': 0.5, 'publishers': 'snapshot',
                  'cpu_topology_path': fake_topology(tmp_path / 'cpu')},
        'energy': {'source': 'rapl', 'use_privsep': False,
                   'powercap_path': str(tmp_path / 'powercap')},
    }

    def ready(snap):
        items = {by_uuid[i['uuid']]: i for i in snap.instances
                 if i['uuid'] in by_uuid}
        return len(items) == 3 and all(
            i['energy_uj'].get('package-%d' % s, 0) > 0
            for name, s in (('spanning', 0), ('spanning', 1),
                            ('socket1', 1))
            for i in [items[name]]) and items

    watts = {'intel-rapl:0': 40.0, 'intel-rapl:1': 30.0}
    with rapl.MovingRapl(tmp_path / 'powercap', watts), \
            agent_helper.Agent(tmp_path, sections) as agent:
        snap = agent.wait_for_snapshot(ready, timeout=120)
        snap = agent.wait_for_snapshot(ready, timeout=60,
                                       newer_than=snap.time + 3)
    items = ready(snap)
    assert items['spanning']['placement'] == 'socket'
    assert items['socket1']['placement'] == 'socket'
    assert items['floating']['placement'] == 'host-wide'
    assert items['socket1']['energy_uj'].get('package-0', 0) == 0
    zones = {z['name']: z for z in snap.zones}
    assert {z['scope'] for z in zones.values()} == {'socket'}
    for name, zone in zones.items():
        attributed = sum(i['energy_uj'].get(name, 0)
                         for i in snap.instances)
        assert attributed + zone['residual_uj'] + \
            zone['unallocated_idle_uj'] == zone['measured_uj']
