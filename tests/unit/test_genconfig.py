"""The committed sample configs are what oslo-config-generator makes."""

import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
GENERATORS = sorted(glob.glob(os.path.join(
    ROOT, 'etc', 'scaph-openstack', '*-config-generator.conf')))


def output_file(generator):
    with open(generator) as f:
        for line in f:
            if line.startswith('output_file'):
                return line.split('=', 1)[1].strip()


@pytest.mark.parametrize('generator', GENERATORS,
                         ids=[os.path.basename(g) for g in GENERATORS])
def test_sample_config_is_up_to_date(tmp_path, generator):
    committed = os.path.join(ROOT, output_file(generator))
    fresh = tmp_path / 'sample.conf'
    subprocess.run(
        [sys.executable, '-m', 'oslo_config.generator', '--config-file',
         generator, '--output-file', str(fresh)], check=True, cwd=ROOT)
    with open(committed) as f:
        assert f.read() == fresh.read_text(), (
            '%s is out of date: run tox -e genconfig' % committed)
