"""The real agent in its default pacing: the ledger is saved only when a
publisher exposes values, and nothing exposed is ahead of the disk.

Ticks every 0.5 s; the snapshot publisher's default min_interval (10 s)
decides when the ledger is saved and the snapshot written.
"""

import json
import os
import time

from tests.functional.faults import support
from tests.functional.helpers import agent as agent_helper
from tests.functional.helpers import rapl

OBSERVE_S = 32
UUID = '8d3e0a52-7c1e-4d5e-9f5c-00000000b001'


def measured(doc_zones):
    return {z['name']: z['measured_uj'] for z in doc_zones}


def test_ledger_saved_only_when_the_snapshot_is_written(tmp_path):
    """A steady host (one busy QEMU in a fixture /proc, nothing coming or
    going): publications follow the snapshot's default min_interval."""
    sections = {
        'agent': {'interval': 0.5, 'publishers': 'snapshot',
                  'inventory': 'qemu'},
        'qemu': {'proc_path': str(tmp_path / 'proc')},
        'energy': {'source': 'rapl',
                   'powercap_path': str(tmp_path / 'powercap'),
                   'use_privsep': False},
    }
    proc = support.FakeProc(tmp_path / 'proc')
    proc.add(4242, 'instance-0001', UUID, busy=True)
    with proc, rapl.MovingRapl(tmp_path / 'powercap'), \
            agent_helper.Agent(tmp_path, sections,
                               product_pacing=True) as agent:
        ledger_path = os.path.join(agent.sections['agent']['state_dir'],
                                   'ledger.json')
        agent.wait_for_snapshot(lambda s: s.zones, timeout=30)
        writes, saves = {}, set()
        deadline = time.monotonic() + OBSERVE_S
        while time.monotonic() < deadline:
            snap = agent.read_snapshot(check_stale=False)
            if snap is not None and snap.time not in writes:
                # The ledger on disk now is at least what was published.
                with open(ledger_path) as f:
                    disk = json.load(f)
                on_disk = {z['name']: z['measured_uj']
                           for z in disk['zones']}
                shown = measured(snap.zones)
                assert all(shown[z] <= on_disk[z] for z in shown), \
                    (shown, on_disk)
                writes[snap.time] = snap
            saves.add(os.stat(ledger_path).st_mtime_ns)
            time.sleep(0.05)
    times = sorted(writes)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    print('snapshot writes at gaps %s s, %d ledger saves seen in '
                 '%d s of 0.5 s ticks' % ([round(g, 2) for g in gaps],
                                          len(saves), OBSERVE_S))
    assert 3 <= len(times) <= 5
    assert all(gap >= 9.5 for gap in gaps), gaps
    # One save per publication (the last one may fall between two polls),
    # not one per tick (which would be about 64).
    assert len(saves) <= len(times) + 1
    last = writes[times[-1]].document
    assert last['stale_after_s'] == 30.0
