"""The learned idle power survives SIGHUP and a restart of the real agent.

The fit's running sums are persisted in the ledger every tick
(``attribution_state``); what a SIGHUP or a restart must not do is start
them again from zero. The simulated source on this machine's own load
feeds the fit (no guest is needed: the qemu inventory over an empty /proc
fixture lists none).
"""

import json
import os
import signal
import time

from tests.functional import helpers
from tests.functional.helpers import agent as agent_helper


def fit_weight(state_dir, zone='package-0'):
    """The fit's sum of weights (s of observed intervals), from disk."""
    with open(os.path.join(state_dir, 'ledger.json')) as f:
        ledger = json.load(f)
    return ledger['attribution_state']['idle_models'][zone]['sw']


def wait_weight_above(agent, state_dir, floor, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        agent.check_alive()
        try:
            weight = fit_weight(state_dir)
        except (OSError, KeyError, ValueError):
            weight = 0.0
        if weight > floor:
            return weight
        time.sleep(0.1)
    raise AssertionError('the idle fit weight stayed at or below %.2f s; '
                         'log:\n%s' % (floor, agent.tail()))


def test_idle_fit_survives_sighup_and_restart(tmp_path):
    helpers.require(os.geteuid() == 0,
                    'the agent forks its privsep daemon as root')
    (tmp_path / 'proc').mkdir()
    state_dir = str(tmp_path / 'state')
    sections = {
        'agent': {'interval': 0.2, 'publishers': 'snapshot',
                  'inventory': 'qemu', 'state_dir': state_dir},
        'qemu': {'proc_path': str(tmp_path / 'proc')},
        'energy': {'source': 'simulated'},
    }
    with agent_helper.Agent(tmp_path, sections) as agent:
        before = wait_weight_above(agent, state_dir, 3.0)
        os.kill(agent.pid, signal.SIGHUP)
        after_hup = wait_weight_above(agent, state_dir, before + 1.0)
        agent.check_alive()
    # A fit started again would need 1 s more of ticks from zero.
    with agent_helper.Agent(tmp_path, sections) as agent:
        agent.wait_for_snapshot(newer_than=time.time())
        restarted = fit_weight(state_dir)
        assert restarted >= after_hup * 0.99, (after_hup, restarted)
        wait_weight_above(agent, state_dir, restarted + 0.5)
    assert 'Traceback' not in agent.log_text()
