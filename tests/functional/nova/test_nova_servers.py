"""Servers booted through Nova's API with scaphandre.LibvirtDriver.

One test per case of cases_servers.py and of cases_handoff.py (counters
that follow the instance), which run in child interpreters (harness.py).
Skipped where Nova's harness cannot run; in CI (CI=true) that is a failure
instead.
"""

import pytest

from tests.functional.nova import harness
from tests.unit.nova import isolated


@pytest.fixture(scope='module')
def results(request):
    reason = harness.unavailable_reason()
    isolated.require(reason is None, reason)
    return harness.run_all(cases=isolated.selected_cases(request))


@pytest.mark.parametrize('case', isolated.case_ids(harness.CASES))
def test_nova_servers(results, case):
    results.check(case)


@pytest.fixture(scope='module')
def handoff_results(request):
    reason = harness.unavailable_reason()
    isolated.require(reason is None, reason)
    return isolated.run_cases(
        harness.HANDOFF_CASES,
        isolated.selected_cases(request, param='handoff_case'))


@pytest.mark.parametrize('handoff_case',
                         isolated.case_ids(harness.HANDOFF_CASES))
def test_nova_handoff(handoff_results, handoff_case):
    handoff_results.check(handoff_case)


def test_domain_xml_retarget():
    xml = ("<domain><devices><filesystem type='mount'>"
           "<driver type='virtiofs'/><source dir='/a/b'/>"
           "<target dir='scaphandre'/></filesystem>"
           "<filesystem type='mount'><source dir='/other'/>"
           "<target dir='x'/></filesystem></devices></domain>")
    out = harness.retarget_share(xml, '/srv/share')
    assert "<source dir=\"/srv/share\" />" in out
    assert "<source dir=\"/other\" />" in out
