"""What the code cites must ship with it: ../shared (REFERENCE.md,
ARCHITECTURE.md's numbered contracts) is not part of the product; the
facts the code relies on are in doc/design.md ("Facts N")."""

import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
OUTSIDE = re.compile(r'REFERENCE(\.md)?\b|ARCHITECTURE\.md|Contract \d')
FACT = re.compile(r'design\.md,?\s+\(?Facts (\d+)')


def tracked(*patterns):
    out = subprocess.run(['git', 'ls-files', '--', *patterns], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    return [p for p in out.stdout.split() if not p.startswith(
        'tests/fixtures') and p != 'tests/unit/test_citations.py']


def read(path):
    with open(os.path.join(ROOT, path), encoding='utf-8') as f:
        return f.read()


def test_nothing_cites_files_outside_the_repository():
    files = tracked('*.py', '*.md', '*.sh', 'tools/*', 'devstack/*')
    offenders = [p for p in files if OUTSIDE.search(read(p))]
    assert not offenders, offenders


def test_every_cited_fact_exists_in_design_md():
    facts = set(re.findall(r'^(\d+)\. \*\*', read('doc/design.md').split(
        '## Facts the code relies on')[1].split('\n## ')[0], re.M))
    cited = set()
    for path in tracked('*.py', '*.md'):
        cited |= set(FACT.findall(read(path).replace('\n', ' ')))
    assert cited and cited <= facts, cited - facts
