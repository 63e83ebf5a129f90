"""Run Nova-importing test files in child interpreters, one report per case.

The Nova tests cannot share the pytest process with the rest of the suite:

- Nova registers its options on oslo.config's global ``cfg.CONF``, and so
  does importing ``scaph_openstack.conf`` for the agent's groups; both
  have a ``[libvirt] connection_uri``, so whichever comes second raises
  DuplicateOptError;
- Nova's fixtures pick the process's concurrency backend
  (``nova.monkey_patch``: eventlet, or native threads with eventlet
  imports poisoned) and reset global logging and configuration.

So the cases live in ``cases_*.py`` files, which the outer run does not
collect (they do not match ``test_*.py``); a ``test_*.py`` file runs them
with ``python -m pytest`` in fresh interpreters (in parallel shards) and
turns the JUnit report into one outer test per case.
"""

import ast
import concurrent.futures
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
OUTPUT_TAIL = 6000


def in_ci():
    """True when the environment variable CI is "true" (any case) or "1"."""
    return os.environ.get('CI', '').strip().lower() in ('true', '1', 'yes')


def require(condition, reason):
    """Skip unless condition holds; in CI (CI=true) fail instead."""
    if condition:
        return
    if in_ci():
        pytest.fail('CI=true and a requirement is not met: %s' % reason,
                    pytrace=False)
    pytest.skip(reason)


def missing_modules(names):
    """The top-level modules of names that cannot be found (not imported:
    finding a top-level package does not run it)."""
    return [name for name in names if importlib.util.find_spec(name) is None]


def case_ids(path):
    """'Class.test' (unittest) or 'test' (pytest function) names of a
    cases file, read from its source: only the child imports Nova."""
    with open(path) as f:
        module = ast.parse(f.read(), path)
    ids = []
    for node in module.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith('test'):
            ids.append(node.name)
        elif isinstance(node, ast.ClassDef):
            ids.extend('%s.%s' % (node.name, item.name) for item in node.body
                       if isinstance(item, ast.FunctionDef)
                       and item.name.startswith('test'))
    return ids


def selected_cases(request, param='case'):
    """The cases the outer run selected (-k, node ids) among the tests of
    the requesting module parametrized by param: only those run."""
    return [item.callspec.params[param] for item in request.session.items
            if item.module is request.module
            and param in getattr(getattr(item, 'callspec', None), 'params',
                                 {})]


def _node_id(path, case):
    return '::'.join([os.path.relpath(path, ROOT)] + case.split('.'))


class Results:
    """Outcomes of the cases of one file, from the children's reports."""

    def __init__(self, path):
        self.module = os.path.splitext(os.path.basename(path))[0]
        self.outcomes = {}   # case id -> (outcome, message)
        self.outputs = []

    def add_report(self, junit_xml, output):
        """junit_xml: the child's JUnit report, None if it wrote none."""
        self.outputs.append(output)
        if junit_xml:
            for case in ET.fromstring(junit_xml).iter('testcase'):
                self._add_case(case)

    def _add_case(self, case):
        owner = case.get('classname', '').rsplit('.', 1)[-1]
        name = re.sub(r'\[.*\]$', '', case.get('name', ''))
        key = name if owner == self.module else '%s.%s' % (owner, name)
        outcome, message = 'passed', ''
        for tag in ('failure', 'error', 'skipped'):
            element = case.find(tag)
            if element is not None:
                outcome = 'skipped' if tag == 'skipped' else 'failed'
                message = '%s\n%s' % (element.get('message', ''),
                                      element.text or '')
                break
        # A parametrized case fails if any of its parameters does.
        if self.outcomes.get(key, ('passed',))[0] == 'passed':
            self.outcomes[key] = (outcome, message)

    def check(self, case):
        """Pass, fail or skip (fail in CI) the calling test like the child
        run of case did."""
        if case not in self.outcomes:
            pytest.fail('%s did not run in the child interpreter; its '
                        'output ends with:\n%s'
                        % (case, '\n'.join(self.outputs)[-OUTPUT_TAIL:]),
                        pytrace=False)
        outcome, message = self.outcomes[case]
        if outcome == 'failed':
            pytest.fail(message[-OUTPUT_TAIL:], pytrace=False)
        require(outcome == 'passed', message.strip())


def _run_child(node_ids, env, timeout):
    with tempfile.TemporaryDirectory(prefix='scaph-nova-') as tmp:
        junit = os.path.join(tmp, 'junit.xml')
        argv = [sys.executable, '-m', 'pytest', '-q', '-p',
                'no:cacheprovider', '--noconftest', '--junitxml', junit]
        try:
            proc = subprocess.run(argv + node_ids, cwd=ROOT, env=env,
                                  timeout=timeout, text=True,
                                  stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT)
            output = proc.stdout
        except subprocess.TimeoutExpired as exc:
            output = '%s\n[killed after %s s]' % (exc.output or '', timeout)
        report = None
        if os.path.exists(junit):
            with open(junit) as f:
                report = f.read()
        return report, output


def run_cases(path, cases=None, shards=None, extra_env=None, timeout=600):
    """Run cases (default: all) of the file at path in child interpreters,
    in parallel shards (default: one per CPU, at most 4); Results."""
    cases = case_ids(path) if cases is None else list(cases)
    shards = shards or max(1, min(4, os.cpu_count() or 1))
    groups = [g for g in (cases[i::shards] for i in range(shards)) if g]
    env = dict(os.environ, **(extra_env or {}))
    results = Results(path)
    with concurrent.futures.ThreadPoolExecutor(len(groups) or 1) as pool:
        runs = [pool.submit(_run_child, [_node_id(path, c) for c in group],
                            env, timeout) for group in groups]
        for run in runs:
            results.add_report(*run.result())
    return results
