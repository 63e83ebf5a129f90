"""scaph_openstack.nova: options, shim packaging, and (in a child
interpreter, see isolated.py) the driver's unit cases."""

import os
import shutil
import subprocess
import sys

from oslo_config import cfg
import pytest

from scaph_openstack.conf import nova as nova_conf
from tests.unit.nova import isolated

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = os.path.join(HERE, 'cases_driver.py')
SHIM = os.path.join(isolated.ROOT, 'nova_shim')


@pytest.fixture(scope='module')
def results(request):
    missing = isolated.missing_modules(['nova'])
    isolated.require(not missing, 'nova is not installed')
    return isolated.run_cases(CASES, isolated.selected_cases(request),
                              shards=1)


@pytest.mark.parametrize('case', isolated.case_ids(CASES))
def test_driver(results, case):
    results.check(case)


@pytest.fixture
def conf():
    conf = cfg.ConfigOpts()
    nova_conf.register_opts(conf)
    conf([], project='nova')
    return conf


def test_defaults(conf):
    group = conf.scaphandre
    assert group.attach == 'opt-in'
    assert group.honor_image_property is False
    assert group.tag == 'scaphandre'
    assert group.work_dir == '/var/lib/scaph-openstack/shares'
    assert group.export_dir == '/var/lib/libvirt/scaphandre'
    assert group.manage_mounts is True
    assert group.readonly == 'auto'
    assert group.virtiofsd_path is None


@pytest.mark.parametrize('option, value', [
    ('attach', 'some'), ('tag', 'a' * 37), ('tag', 'with space'),
    ('tag', 'a:b'), ('readonly', 'always')])
def test_invalid_values(conf, option, value):
    with pytest.raises(ValueError):
        conf.set_override(option, value, group='scaphandre')


def test_list_opts():
    [(group, opts)] = nova_conf.list_opts()
    assert group.name == 'scaphandre'
    assert {o.name for o in opts} == {
        'attach', 'honor_image_property', 'tag', 'work_dir', 'export_dir',
        'manage_mounts', 'tmpfs_size', 'virtiofsd_path', 'readonly',
        'handoff_timeout'}


def test_options_import_neither_nova_nor_agent():
    # nova-api (validators), nova-compute (driver) and oslo-config-generator
    # load these options: nothing of Nova or of the agent may come with
    # them, and nothing may land on the global CONF, where the agent's
    # [libvirt] connection_uri would collide with Nova's.
    code = ('import sys; from oslo_config import cfg; '
            'before = set(cfg.CONF); '
            'import scaph_openstack.conf.nova; '
            'bad = [m for m in sys.modules if m == "nova" or '
            'm.startswith(("nova.", "scaph_openstack.agent"))]; '
            'bad += sorted(set(cfg.CONF) - before); '
            'print(bad); sys.exit(bool(bad))')
    proc = subprocess.run([sys.executable, '-c', code], cwd=isolated.ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_shim_installs_only_its_package(tmp_path):
    # What setuptools would put into site-packages, built from a copy
    # (setuptools writes next to setup.py) without network.
    source = tmp_path / 'src'
    shutil.copytree(SHIM, source, ignore=shutil.ignore_patterns(
        'build', '*.egg-info', '__pycache__'))
    lib = tmp_path / 'lib'
    proc = subprocess.run(
        [sys.executable, 'setup.py', '-q', 'build_py', '-d', str(lib)],
        cwd=source, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    built = sorted(os.path.relpath(os.path.join(d, f), lib)
                   for d, _dirs, files in os.walk(lib) for f in files)
    assert built == ['nova/virt/scaphandre/__init__.py']
