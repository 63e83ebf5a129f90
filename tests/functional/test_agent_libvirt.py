"""The real agent against the real libvirtd and a real running guest.

Energy comes from a fixture RAPL tree (this machine has none) whose
counters the test moves; everything else is real: libvirtd, a
software-emulated QEMU guest carrying Nova's metadata, the agent process
(oslo.service, privsep daemon), its ledger and snapshot on disk.
"""

import time

import pytest

from tests.functional import helpers
from tests.functional.helpers import agent as agent_helper
from tests.functional.helpers import guest as guest_helper
from tests.functional.helpers import rapl

PROJECT, USER = 'f1b5c0de-0000-4000-8000-00000000a001', 'alice-uuid'


@pytest.fixture(scope='module')
def running_guest():
    helpers.require_guests()
    guest = guest_helper.Guest(label='agent')
    guest.xml_kwargs['nova_metadata'] = guest_helper.nova_metadata_xml(
        guest.uuid, 'web-1', PROJECT, 'webteam', USER, 'alice',
        flavor='m1.tiny', vcpus=1, memory_mb=128)
    with guest:                 # defines and starts it
        guest.wait_booted()
        yield guest


def agent_sections(tmp_path):
    return {
        'agent': {'interval': 0.5, 'publishers': 'snapshot'},
        'energy': {'source': 'rapl',
                   'powercap_path': str(tmp_path / 'powercap'),
                   'use_privsep': False},
        'libvirt': {'connection_uri': 'qemu:///system'},
        'attribution': {'idle_power': 'package-0:10,dram-0:1'},
    }


def instance(snap, uuid):
    for item in snap.instances:
        if item['uuid'] == uuid:
            return item
    return None


def test_agent_attributes_energy_to_the_real_guest(tmp_path, running_guest):
    uuid = running_guest.uuid
    with rapl.MovingRapl(tmp_path / 'powercap'), \
            agent_helper.Agent(tmp_path, agent_sections(tmp_path)) as agent:
        snap = agent.wait_for_snapshot(
            lambda s: (instance(s, uuid) or {}).get('total_uj', 0) > 0,
            timeout=60)
    item = instance(snap, uuid)
    assert snap.source == 'rapl'
    assert item['running'] and item['nova']
    assert item['display_name'] == 'web-1'
    assert (item['project_id'], item['project_name']) == (PROJECT,
                                                          'webteam')
    assert (item['user_id'], item['user_name']) == (USER, 'alice')
    assert item['flavor'] == 'm1.tiny'
    assert item['energy_uj']['package-0'] > 0
    zones = {z['name']: z for z in snap.zones}
    measured = sum(z['measured_uj'] for z in zones.values())
    unattributed = sum(z['residual_uj'] + z['unallocated_idle_uj']
                       for z in zones.values())
    attributed = sum(sum(i['energy_uj'].values()) for i in snap.instances)
    assert attributed + unattributed == measured   # conservation, on disk


def test_counters_survive_kill_minus_nine(tmp_path, running_guest):
    uuid = running_guest.uuid
    seen = []

    def grew_past(floor):
        def predicate(snap):
            item = instance(snap, uuid)
            if item is None:
                return False
            seen.append(item['total_uj'])
            return item['total_uj'] > floor
        return predicate

    with rapl.MovingRapl(tmp_path / 'powercap'):
        sections = agent_sections(tmp_path)
        for _restart in range(3):
            with agent_helper.Agent(tmp_path, sections) as agent:
                floor = seen[-1] if seen else 0
                # after a restart the counter continues, then grows
                agent.wait_for_snapshot(grew_past(floor), timeout=60,
                                        newer_than=time.time())
                agent.wait_for_snapshot(grew_past(seen[-1]), timeout=60)
                agent.kill()            # SIGKILL, mid-tick or not
    assert seen == sorted(seen), 'a counter went backwards: %s' % seen
    assert seen[-1] > seen[0]
    assert len(set(seen)) >= 6
