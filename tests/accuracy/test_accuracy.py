"""Issue 9's targets, short version (CI): the real agent with its default
attribution configuration, the emulated two-socket tree, real guests.

Each scenario runs about 3.3 minutes (120 s warm-up, then 60 s windows);
every VM's attributed dynamic energy must be within 10 % of the truth in
every window, conservation exact in every snapshot, and after a restart
the learned idle estimate must still be there. The full version (5-minute
windows after 5 minutes) is ``python -m tools.accuracy --full`` (``tox -e
accuracy``). Set SCAPH_ACCURACY_OUT=DIR to keep the truth, snapshots and
agent logs; SCAPH_ACCURACY_AGENT_REV=REV runs the agent as committed at
REV instead of the working tree's.
"""

import os

import pytest

from tests.accuracy import harness


@pytest.mark.parametrize('key', [s.key for s in harness.scenarios()])
def test_scenario_meets_targets(key, libvirt_host, tmp_path):
    scn = harness.scenario(key, full=False)
    result = harness.run(
        scn, outdir=os.environ.get('SCAPH_ACCURACY_OUT') or str(tmp_path),
        agent_rev=os.environ.get('SCAPH_ACCURACY_AGENT_REV') or None)
    report = harness.table(result)
    print(report)
    assert result['snapshots'] > scn.duration_s / 4, report
    assert result['conservation_ok'], report
    for vm in result['vms']:
        assert vm['windows'] > 0, report
        assert vm['pass'], report
    if scn.restart_at_s is not None:
        assert result['restart']['idle_survived'], report
    assert result['pass'], report
