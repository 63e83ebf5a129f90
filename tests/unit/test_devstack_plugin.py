"""devstack/plugin.sh, phase by phase, over a fake devstack.

tests/devstack/run-phase sources tests/devstack/functions (fakes of the
devstack helpers that really edit files and record every call), then
devstack/settings and devstack/plugin.sh with the phase's arguments, as
stack.sh, unstack.sh and clean.sh do. Every path points into a temporary
root: a fake Nova source tree (devstack installs Nova in develop mode),
/etc/nova, /etc/ceilometer, /etc/scaph-openstack, the systemd unit
directory. The fake sudo refuses any absolute path outside that root.

Also here: shellcheck, the rootwrap filter (matched by oslo.rootwrap
against the command line oslo.privsep builds), the example configuration
(every option it shows exists and parses) and the systemd units.
"""

import configparser
import copy
import filecmp
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
RUN_PHASE = os.path.join(REPO, 'tests', 'devstack', 'run-phase')
SHIM = os.path.join(REPO, 'nova_shim', 'nova', 'virt', 'scaphandre')
POLLING = os.path.join(REPO, 'etc', 'ceilometer', 'polling.yaml')
GNOCCHI_RESOURCES = os.path.join(REPO, 'etc', 'ceilometer',
                                 'gnocchi_resources.yaml')
FILTERS_DIR = os.path.join(REPO, 'etc', 'scaph-openstack', 'rootwrap.d')
EXAMPLE = os.path.join(REPO, 'etc', 'scaph-openstack',
                       'scaph-openstack.conf.example')
SYSTEMD_DIR = os.path.join(REPO, 'etc', 'systemd')
CONTEXT = 'scaph_openstack.privsep.sys_admin'

NOVA_CPU_CONF = """[DEFAULT]
debug = True
compute_driver = libvirt.LibvirtDriver

[libvirt]
virt_type = qemu
"""

CEILOMETER_CONF = """[DEFAULT]
debug = True
"""

CEILOMETER_POLLING = {'sources': [
    {'name': 'all_pollsters', 'interval': 300, 'meters': ['*']}]}

# pipeline.yaml as devstack's Ceilometer writes it (CEILOMETER_BACKENDS=
# gnocchi, GNOCCHI_ARCHIVE_POLICY=ceilometer-low): the publisher's
# archive_policy overrides gnocchi_resources.yaml's for every metric.
DEVSTACK_PUBLISHER = 'gnocchi://?archive_policy=ceilometer-low&filter_project=service'
CEILOMETER_PIPELINE = {
    'sources': [{'name': 'meter_source', 'meters': ['*'],
                 'sinks': ['meter_sink']}],
    'sinks': [{'name': 'meter_sink', 'publishers': [DEVSTACK_PUBLISHER]}]}

ALL_SERVICES = 'key,n-api,n-cpu,ceilometer-acompute,ceilometer-anotification'

# devstack's openrc, faked: sourced by the plugin in a subshell, it exports
# the admin's credentials as keystoneauth's OS_* variables. Like the real
# one (stackrc, devstack's functions) it is not nounset-clean.
OPENRC = '''# fake devstack openrc: source openrc [username] [projectname]
_fake_record openrc "$@"
if [[ -n "$FAKE_OPENRC_NOT_SET" ]]; then :; fi
export OS_AUTH_TYPE=password
export OS_USERNAME=${1:-demo}
export OS_PROJECT_NAME=${2:-demo}
export OS_PASSWORD=secret
export OS_AUTH_URL=http://127.0.0.1/identity
export OS_REGION_NAME=RegionOne
export OS_USER_DOMAIN_ID=default
export OS_PROJECT_DOMAIN_ID=default
'''

# The scaph-openstack console script, faked: records its arguments and
# environment (JSON, one call a line) and exits with $FAKE_SCAPH_RC.
FAKE_SCAPH_OPENSTACK = '''#!%(python)s
import json, os, sys
with open(%(record)r, 'a') as f:
    f.write(json.dumps({'argv': sys.argv[1:], 'env': dict(os.environ)}))
    f.write('\\n')
print('archive policy  scaph-energy                 created')
sys.exit(int(os.environ.get('FAKE_SCAPH_RC', '0')))
'''


def ceilometer_gnocchi_resources():
    """Ceilometer's own gnocchi_resources.yaml (its package's copy, the
    publisher's fallback), from the installed ceilometer."""
    import ceilometer.publisher
    return os.path.join(os.path.dirname(ceilometer.publisher.__file__),
                        'data', 'gnocchi_resources.yaml')


def setup_cfg_pollsters():
    """Our ceilometer.poll.compute entry point names, from setup.cfg."""
    parser = configparser.ConfigParser()
    parser.read(os.path.join(REPO, 'setup.cfg'))
    value = parser['entry_points']['ceilometer.poll.compute']
    return [line.split('=')[0].strip()
            for line in value.strip().splitlines()]


def ini(path):
    # DEFAULT as a plain section: no inheritance into the others.
    parser = configparser.ConfigParser(interpolation=None,
                                       default_section='\x00none')
    parser.optionxform = str
    with open(path) as f:
        parser.read_file(f)
    return parser


def yaml_load(path):
    with open(path) as f:
        return yaml.safe_load(f)


def write_yaml(path, doc):
    with open(path, 'w') as f:
        f.write('---\n')
        yaml.safe_dump(doc, f, sort_keys=False)


def tree(root):
    """{relative path: bytes or link target} of everything under root."""
    found = {}
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(base, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                found[rel] = 'link:' + os.readlink(path)
            elif os.path.isfile(path):
                with open(path, 'rb') as f:
                    found[rel] = f.read()
            else:
                found[rel] = 'dir'
    return found


class Devstack:
    """A fake devstack host in tmp_path; run(phase...) runs plugin.sh."""

    def __init__(self, tmp_path, **overrides):
        self.root = str(tmp_path / 'root')
        r = self.root
        self.nova_dir = os.path.join(r, 'opt/stack/nova')
        self.nova_conf_dir = os.path.join(r, 'etc/nova')
        self.nova_cpu_conf = os.path.join(self.nova_conf_dir, 'nova-cpu.conf')
        self.ceilometer_dir = os.path.join(r, 'opt/stack/ceilometer')
        self.ceilometer_conf_dir = os.path.join(r, 'etc/ceilometer')
        self.ceilometer_conf = os.path.join(self.ceilometer_conf_dir,
                                            'ceilometer.conf')
        self.polling = os.path.join(self.ceilometer_conf_dir, 'polling.yaml')
        self.pipeline = os.path.join(self.ceilometer_conf_dir,
                                     'pipeline.yaml')
        self.gnocchi_resources = os.path.join(self.ceilometer_conf_dir,
                                              'gnocchi_resources.yaml')
        self.ceilometer_default_resources = os.path.join(
            self.ceilometer_dir, 'ceilometer/publisher/data',
            'gnocchi_resources.yaml')
        self.top_dir = os.path.join(r, 'opt/stack/devstack')
        self.openrc = os.path.join(self.top_dir, 'openrc')
        self.scaph_openstack = os.path.join(r, 'usr/local/bin',
                                            'scaph-openstack')
        self.scaph_openstack_record = str(tmp_path / 'scaph-openstack.calls')
        self.conf_dir = os.path.join(r, 'etc/scaph-openstack')
        self.conf = os.path.join(self.conf_dir, 'scaph-openstack.conf')
        self.data_dir = os.path.join(r, 'opt/stack/data')
        self.state_dir = os.path.join(self.data_dir, 'scaph-openstack')
        self.work_dir = os.path.join(self.state_dir, 'shares')
        self.run_dir = os.path.join(r, 'run/scaph-openstack')
        self.export_dir = os.path.join(r, 'var/lib/libvirt/scaphandre')
        self.systemd_dir = os.path.join(r, 'etc/systemd/system')
        self.unit = os.path.join(self.systemd_dir,
                                 'devstack@scaph-agent.service')
        self.bin_dir = os.path.join(r, 'usr/local/bin')
        self.log_path = str(tmp_path / 'calls.log')
        self.mounts = str(tmp_path / 'mounts')
        self.link = os.path.join(self.nova_dir, 'nova/virt/scaphandre')
        self.filter = os.path.join(self.nova_conf_dir, 'rootwrap.d',
                                   'scaph-openstack.filters')

        # Nova from source, as devstack clones and installs it.
        for package in ('nova', 'nova/virt'):
            path = os.path.join(self.nova_dir, package)
            os.makedirs(path)
            open(os.path.join(path, '__init__.py'), 'w').close()
        os.makedirs(os.path.join(self.nova_conf_dir, 'rootwrap.d'))
        with open(self.nova_cpu_conf, 'w') as f:
            f.write(NOVA_CPU_CONF)
        # Ceilometer's plugin has written its configuration.
        os.makedirs(self.ceilometer_conf_dir)
        with open(self.ceilometer_conf, 'w') as f:
            f.write(CEILOMETER_CONF)
        self.write_polling(CEILOMETER_POLLING)
        write_yaml(self.pipeline, CEILOMETER_PIPELINE)
        os.makedirs(os.path.join(self.ceilometer_dir, 'etc/ceilometer'))
        with open(os.path.join(self.ceilometer_dir,
                               'etc/ceilometer/polling.yaml'), 'w') as f:
            yaml.safe_dump(CEILOMETER_POLLING, f)
        # Ceilometer's gnocchi_resources.yaml is in its package only: its
        # devstack plugin installs none into /etc/ceilometer.
        os.makedirs(os.path.dirname(self.ceilometer_default_resources))
        shutil.copy(ceilometer_gnocchi_resources(),
                    self.ceilometer_default_resources)
        os.makedirs(self.top_dir)
        with open(self.openrc, 'w') as f:
            f.write(OPENRC)
        open(self.mounts, 'w').close()

        self.env = {
            'PATH': os.environ['PATH'],
            'HOME': str(tmp_path),
            'LC_ALL': 'C.UTF-8',
            'DEVSTACK_FAKE_ROOT': self.root,
            'DEVSTACK_FAKE_LOG': self.log_path,
            'DEVSTACK_FAKE_MOUNTS': self.mounts,
            'DEVSTACK_FAKE_PYTHON': sys.executable,
            'PYTHON': sys.executable,
            'DEST': os.path.join(r, 'opt/stack'),
            'DATA_DIR': self.data_dir,
            'STACK_USER': 'stack',
            'ENABLE_DEBUG_LOG_LEVEL': 'True',
            'ENABLED_SERVICES': ALL_SERVICES,
            'VIRT_DRIVER': 'libvirt',
            'NOVA_DIR': self.nova_dir,
            'NOVA_CONF_DIR': self.nova_conf_dir,
            'NOVA_CPU_CONF': self.nova_cpu_conf,
            'CEILOMETER_DIR': self.ceilometer_dir,
            'CEILOMETER_CONF_DIR': self.ceilometer_conf_dir,
            'CEILOMETER_CONF': self.ceilometer_conf,
            'SYSTEMD_DIR': self.systemd_dir,
            'TOP_DIR': self.top_dir,
            'SCAPH_OPENSTACK_DIR': REPO,
            'SCAPH_OPENSTACK_CONF_DIR': self.conf_dir,
            'SCAPH_OPENSTACK_RUN_DIR': self.run_dir,
            'SCAPH_OPENSTACK_EXPORT_DIR': self.export_dir,
            'SCAPH_OPENSTACK_VIRTIOFSD_PATHS': os.path.join(
                r, 'usr/libexec/virtiofsd'),
        }
        self.env.update(overrides)

    def write_polling(self, doc):
        with open(self.polling, 'w') as f:
            f.write('---\n')
            yaml.safe_dump(doc, f)

    def fake_scaph_openstack(self):
        """A scaph-openstack console script in the bin directory that
        records its calls (scaph_openstack_calls())."""
        os.makedirs(os.path.dirname(self.scaph_openstack), exist_ok=True)
        with open(self.scaph_openstack, 'w') as f:
            f.write(FAKE_SCAPH_OPENSTACK % {
                'python': sys.executable,
                'record': self.scaph_openstack_record})
        os.chmod(self.scaph_openstack, 0o755)

    def scaph_openstack_calls(self):
        if not os.path.exists(self.scaph_openstack_record):
            return []
        with open(self.scaph_openstack_record) as f:
            return [json.loads(line) for line in f]

    def run(self, *phase, check=True):
        result = subprocess.run([RUN_PHASE] + list(phase), env=self.env,
                                capture_output=True, text=True, timeout=120)
        if check:
            assert result.returncode == 0, (
                'plugin.sh %s failed (%d):\n%s\n%s' % (
                    ' '.join(phase), result.returncode, result.stdout,
                    result.stderr))
        return result

    def calls(self, name=None):
        if not os.path.exists(self.log_path):
            return []
        with open(self.log_path) as f:
            calls = [tuple(line.rstrip('\n').split('\t')) for line in f]
        return [c for c in calls if name is None or c[0] == name]

    def clear_calls(self):
        if os.path.exists(self.log_path):
            os.unlink(self.log_path)

    def unit_state(self):
        path = os.path.join(self.root, 'run/fake-systemd',
                            'devstack@scaph-agent.state')
        with open(path) as f:
            return f.read().strip()

    def stack(self):
        for phase in ('pre-install', 'install', 'post-config', 'extra',
                      'test-config'):
            self.run('stack', phase)


@pytest.fixture
def our_polling(tmp_path):
    """The repository's polling sources; a stand-in with every pollster
    of setup.cfg while etc/ceilometer/polling.yaml is not written yet."""
    if os.path.exists(POLLING):
        return {}
    path = tmp_path / 'scaph-polling.yaml'
    with open(path, 'w') as f:
        yaml.safe_dump({'sources': [{'name': 'scaphandre', 'interval': 60,
                                     'meters': setup_cfg_pollsters()}]}, f)
    return {'SCAPH_OPENSTACK_POLLING_YAML': str(path)}


@pytest.fixture
def devstack(tmp_path, our_polling):
    return Devstack(tmp_path, **our_polling)


def our_sources(ds):
    return yaml_load(ds.env.get('SCAPH_OPENSTACK_POLLING_YAML',
                                POLLING))['sources']


def our_gnocchi_resources():
    return yaml_load(GNOCCHI_RESOURCES)


def with_ours(doc):
    """doc (a gnocchi_resources.yaml) with our archive policies and
    resource entries appended, everything else as it was."""
    ours = our_gnocchi_resources()
    merged = dict(doc)
    merged['archive_policies'] = (doc.get('archive_policies', []) +
                                  ours['archive_policies'])
    merged['resources'] = doc['resources'] + ours['resources']
    return merged


def routes(pipeline_path, meter):
    """[(source, publishers of its sinks)] that Ceilometer's notification
    agent would publish ``meter`` through, with its own source classes
    (which also check each source's meters are valid)."""
    from ceilometer.pipeline import sample as pipeline_sample
    doc = yaml_load(pipeline_path)
    sinks = {sink['name']: sink['publishers'] for sink in doc['sinks']}
    found = []
    for cfg in doc['sources']:
        source = pipeline_sample.SampleSource(cfg)
        if source.support_meter(meter):
            found.append((source.name, [p for name in cfg['sinks']
                                        for p in sinks[name]]))
    return found


def stack_group():
    """The group ceilometer-polling runs as under devstack ($STACK_USER's),
    None where this machine has no such user."""
    import grp
    import pwd
    try:
        return grp.getgrgid(pwd.getpwnam('stack').pw_gid).gr_name
    except KeyError:
        return None


def load_agent_conf(path):
    from oslo_config import cfg
    from oslo_log import log as logging

    from scaph_openstack import conf as scaph_conf
    conf = cfg.ConfigOpts()
    logging.register_options(conf)
    scaph_conf.register_opts(conf)
    conf(['--config-file', path], project='scaph-openstack',
         default_config_files=[])
    return conf


def load_nova_conf(path):
    from oslo_config import cfg

    from scaph_openstack.conf import nova as scaph_nova
    conf = cfg.ConfigOpts()
    scaph_nova.register_opts(conf)
    conf.register_opt(cfg.StrOpt('compute_driver'))
    conf(['--config-file', path], project='nova', default_config_files=[])
    return conf


# The whole life cycle ----------------------------------------------------


def test_stack_unstack_clean(devstack):
    ds = devstack
    assert os.path.isdir(SHIM), 'the Nova shim package is missing'

    ds.run('stack', 'pre-install')
    assert ds.calls('install_package') == [('install_package', 'virtiofsd')]

    ds.run('stack', 'install')
    assert ds.calls('setup_develop') == [('setup_develop', REPO)]
    assert not os.path.exists(ds.conf)

    ds.run('stack', 'post-config')
    # The agent's configuration: a valid oslo.config file with what
    # devstack chose, started from the commented example.
    conf = load_agent_conf(ds.conf)
    assert conf.debug is True
    assert conf.agent.interval == 2.0
    assert conf.agent.state_dir == ds.state_dir
    assert conf.agent.inventory == 'libvirt'
    assert conf.agent.publishers == ['snapshot', 'share']
    assert conf.energy.source == 'auto'
    assert conf.libvirt.connection_uri == 'qemu:///system'
    assert conf.snapshot.path == os.path.join(ds.run_dir, 'snapshot.json')
    assert conf.snapshot.group == stack_group()
    assert conf.share.work_dir == ds.work_dir
    assert conf.share.export_dir == ds.export_dir
    assert conf.share.tag == 'scaphandre'
    assert conf.share.manage_mounts is True
    with open(ds.conf) as f:
        assert '#min_interval = 10.0' in f.read()     # the example's text
    assert os.path.isdir(ds.state_dir)

    # The agent, started as root with that file.
    command = ('%s/scaph-openstack-agent --config-file %s'
               % (ds.bin_dir, ds.conf))
    assert ds.calls('run_process') == [
        ('run_process', 'scaph-agent', command, '', 'root')]
    unit = ini(ds.unit)
    assert unit['Service']['ExecStart'] == command
    assert unit['Service']['User'] == 'root'
    assert ds.unit_state() == 'active'

    # nova-cpu.conf: our driver and a [scaphandre] group matching the agent.
    nova = load_nova_conf(ds.nova_cpu_conf)
    assert nova.compute_driver == 'scaphandre.LibvirtDriver'
    # opt-in: instances are live-migratable and suspendable unless a
    # flavor asks for the share, so tempest's multinode tests pass.
    assert nova.scaphandre.attach == 'opt-in'
    assert nova.scaphandre.honor_image_property is False
    assert ini(ds.nova_cpu_conf)['scaphandre']['honor_image_property'] == (
        'False')
    assert nova.scaphandre.tag == conf.share.tag
    assert nova.scaphandre.work_dir == conf.share.work_dir
    assert nova.scaphandre.export_dir == conf.share.export_dir
    assert ini(ds.nova_cpu_conf)['libvirt']['virt_type'] == 'qemu'

    # The shim, linked into Nova's source tree, is what nova.virt finds.
    assert os.path.islink(ds.link)
    assert os.path.realpath(ds.link) == os.path.realpath(SHIM)
    origin = subprocess.run(
        [sys.executable, '-c',
         'import importlib.util, nova; '
         'print(nova.__file__); '
         'print(importlib.util.find_spec("nova.virt.scaphandre").origin)'],
        env=dict(os.environ, PYTHONPATH=ds.nova_dir), capture_output=True,
        text=True, check=True).stdout.split()
    assert origin[0] == os.path.join(ds.nova_dir, 'nova', '__init__.py')
    assert os.path.realpath(origin[1]) == os.path.realpath(
        os.path.join(SHIM, '__init__.py'))

    # The rootwrap filter, installed root-owned.
    assert filecmp.cmp(ds.filter, os.path.join(
        FILTERS_DIR, 'scaph-openstack.filters'), shallow=False)
    installs = [c for c in ds.calls('sudo') if c[-1] == ds.filter]
    assert installs and installs[0][1:7] == (
        'install', '-o', 'root', '-g', 'root', '-m')

    # Ceilometer: its sources kept, ours added, the snapshot path shared.
    polling = yaml_load(ds.polling)['sources']
    assert polling == CEILOMETER_POLLING['sources'] + our_sources(ds)
    assert ini(ds.ceilometer_conf)['scaphandre']['snapshot_path'] == \
        conf.snapshot.path
    # gnocchi_resources.yaml: Ceilometer's default (devstack installs no
    # copy) with our archive policies and resources appended.
    ceilometer_default = yaml_load(ds.ceilometer_default_resources)
    assert yaml_load(ds.gnocchi_resources) == with_ours(ceilometer_default)
    # pipeline.yaml: our meters by our own sink, without the override.
    assert routes(ds.pipeline, 'energy.instance') == [
        ('scaph_meters', ['gnocchi://?filter_project=service'])]
    assert routes(ds.pipeline, 'cpu') == [
        ('meter_source', [DEVSTACK_PUBLISHER])]
    after_config = tree(ds.root)

    ds.run('stack', 'extra')
    ds.run('stack', 'test-config')
    assert tree(ds.root) == after_config
    assert not ds.calls('die') and not ds.calls('violation')

    # unstack: the agent stopped, its mounts gone (view first), Nova and
    # Ceilometer as they were before the plugin.
    with open(ds.mounts, 'w') as f:
        f.write('%s\n%s\n' % (ds.work_dir, ds.export_dir))
    ds.clear_calls()
    ds.run('unstack')
    assert ds.calls('stop_process') == [('stop_process', 'scaph-agent')]
    assert ds.unit_state() == 'inactive'
    assert [c[1:] for c in ds.calls('sudo') if c[1] == 'umount'] == [
        ('umount', ds.export_dir), ('umount', ds.work_dir)]
    with open(ds.mounts) as f:
        assert f.read() == ''
    nova_conf = ini(ds.nova_cpu_conf)
    assert nova_conf['DEFAULT']['compute_driver'] == 'libvirt.LibvirtDriver'
    assert not nova_conf.has_section('scaphandre') or \
        not nova_conf.options('scaphandre')
    assert not os.path.lexists(ds.link)
    assert os.path.isdir(SHIM)            # the link, not the shim, is gone
    assert not os.path.exists(ds.filter)
    assert yaml_load(ds.polling) == CEILOMETER_POLLING
    assert yaml_load(ds.gnocchi_resources) == ceilometer_default
    assert yaml_load(ds.pipeline) == CEILOMETER_PIPELINE
    assert not ini(ds.ceilometer_conf).has_option('scaphandre',
                                                  'snapshot_path')

    ds.run('clean')
    for path in (ds.conf_dir, ds.state_dir, ds.run_dir, ds.work_dir,
                 ds.export_dir):
        assert not os.path.exists(path), path
    assert not ds.calls('die') and not ds.calls('violation')


# Variants ----------------------------------------------------------------


def test_restack_is_idempotent(devstack):
    devstack.stack()
    first = tree(devstack.root)
    devstack.stack()
    second = tree(devstack.root)
    assert first == second


def test_ceilometer_untouched_when_not_enabled(devstack):
    devstack.env['ENABLED_SERVICES'] = 'n-cpu'
    before = tree(devstack.ceilometer_conf_dir)
    devstack.stack()
    devstack.run('unstack')
    assert tree(devstack.ceilometer_conf_dir) == before
    assert os.path.exists(devstack.conf)      # the rest still happened


def test_ceilometer_enabled_after_us(devstack):
    """ceilometer's post-config ran after ours and rewrote polling.yaml:
    our extra phase, which runs before ceilometer's, puts ours back."""
    devstack.run('stack', 'post-config')
    devstack.write_polling(CEILOMETER_POLLING)
    devstack.run('stack', 'extra')
    assert yaml_load(devstack.polling)['sources'] == \
        CEILOMETER_POLLING['sources'] + our_sources(devstack)


def test_polling_yaml_from_ceilometer_default_when_missing(devstack):
    os.unlink(devstack.polling)
    devstack.run('stack', 'post-config')
    assert yaml_load(devstack.polling)['sources'] == \
        CEILOMETER_POLLING['sources'] + our_sources(devstack)


def test_our_meters_are_our_pollsters(devstack):
    """Every meter the polling sources select is one of our pollsters
    (polling.yaml selects by entry point name, globs allowed)."""
    pollsters = setup_cfg_pollsters()
    meters = [m for source in our_sources(devstack)
              for m in source['meters']]
    assert meters
    for meter in meters:
        assert fnmatch.filter(pollsters, meter.lstrip('!')), meter
    assert all(fnmatch.filter(meters, p) for p in pollsters)


# Gnocchi -----------------------------------------------------------------

# What an operator (or an older Ceilometer plugin) may have in the file:
# an entry of theirs mixing one of our meters with theirs is theirs.
OPERATOR_POLICY = {'name': 'site-policy', 'aggregation_methods': ['mean'],
                   'back_window': 0,
                   'definition': [{'granularity': '1 hour',
                                   'timespan': '7 days'}]}
OPERATOR_RESOURCE = {'resource_type': 'instance',
                     'metrics': {'cpu': None, 'energy.instance': None}}


def our_policy_names():
    """The archive policies telemetry-setup creates, by name."""
    from scaph_openstack.telemetry import gnocchi as telemetry
    return [p['name'] for p in telemetry.ARCHIVE_POLICIES]


def our_meters():
    return {m for r in our_gnocchi_resources()['resources']
            for m in r['metrics']}


def test_our_gnocchi_resources_are_our_meters():
    """The file the plugin merges declares every meter we poll (else
    Gnocchi drops it) and no other: the plugin finds its own entries by
    their meters."""
    assert our_meters() == set(setup_cfg_pollsters())
    names = [p['name'] for p in our_gnocchi_resources()['archive_policies']]
    assert names == our_policy_names()


def test_gnocchi_resources_idempotent(devstack):
    ds = devstack
    ds.run('stack', 'post-config')
    with open(ds.gnocchi_resources, 'rb') as f:
        first = f.read()
    inode = os.stat(ds.gnocchi_resources).st_ino
    ds.run('stack', 'extra')
    ds.run('stack', 'post-config')
    with open(ds.gnocchi_resources, 'rb') as f:
        assert f.read() == first
    # Nothing to change: the file is not even rewritten.
    assert os.stat(ds.gnocchi_resources).st_ino == inode
    doc = yaml_load(ds.gnocchi_resources)
    names = [p['name'] for p in doc['archive_policies']]
    assert [names.count(n) for n in our_policy_names()] == [1, 1]


def test_gnocchi_resources_other_entries_kept(devstack):
    """An existing file: its entries, ours appended; an older copy of ours
    (other meters of ours, another policy definition) replaced, not
    duplicated; unstack gives the file back as it was."""
    ds = devstack
    default = yaml_load(ds.ceilometer_default_resources)
    theirs = dict(default)
    theirs['archive_policies'] = default['archive_policies'] + [
        OPERATOR_POLICY]
    theirs['resources'] = default['resources'] + [OPERATOR_RESOURCE]
    old_definition = [{'granularity': '1 hour', 'timespan': '7 days'}]
    old_ours = {
        # scaph-energy, another definition; a policy of ours since renamed.
        'archive_policies': [{'name': 'scaph-energy',
                              'aggregation_methods': ['last'],
                              'back_window': 0,
                              'definition': old_definition},
                             {'name': 'scaph-older-name',
                              'aggregation_methods': ['mean'],
                              'back_window': 0,
                              'definition': old_definition}],
        'resources': [{'resource_type': 'instance',
                       'metrics': ['energy.instance']}]}
    stale = dict(theirs)
    stale['archive_policies'] = (theirs['archive_policies'] +
                                 old_ours['archive_policies'])
    stale['resources'] = theirs['resources'] + old_ours['resources']
    write_yaml(ds.gnocchi_resources, stale)

    ds.run('stack', 'post-config')
    assert yaml_load(ds.gnocchi_resources) == with_ours(theirs)
    ds.run('unstack')
    assert yaml_load(ds.gnocchi_resources) == theirs


def test_gnocchi_resources_rewritten_by_ceilometer(devstack):
    """Ceilometer's post-config ran after ours and put its own file in
    place (older Ceilometer plugins copy it): our extra phase, before
    ceilometer's (which starts the notification agent), merges again."""
    ds = devstack
    ds.run('stack', 'post-config')
    shutil.copy(ds.ceilometer_default_resources, ds.gnocchi_resources)
    ds.run('stack', 'extra')
    assert yaml_load(ds.gnocchi_resources) == with_ours(
        yaml_load(ds.ceilometer_default_resources))


def test_gnocchi_resources_without_any_ceilometer_file(devstack):
    """Neither /etc/ceilometer's file nor Ceilometer's default: a file with
    our entries alone would drop every Ceilometer meter, so the plugin
    stops instead."""
    os.unlink(devstack.ceilometer_default_resources)
    result = devstack.run('stack', 'post-config', check=False)
    assert result.returncode != 0
    assert "Ceilometer's default" in result.stderr
    assert not os.path.exists(devstack.gnocchi_resources)
    # unstack without the file: nothing to do.
    devstack.run('unstack')
    assert not os.path.exists(devstack.gnocchi_resources)


def test_gnocchi_resources_only_with_the_notification_agent(devstack):
    devstack.env['ENABLED_SERVICES'] = 'n-cpu,ceilometer-acompute'
    devstack.stack()
    assert not os.path.exists(devstack.gnocchi_resources)
    assert yaml_load(devstack.polling)['sources'] == \
        CEILOMETER_POLLING['sources'] + our_sources(devstack)


def test_notification_agent_alone(devstack):
    """A controller: the notification agent, no compute agent. Our
    resources, not our polling source nor the snapshot path."""
    devstack.env['ENABLED_SERVICES'] = 'n-api,ceilometer-anotification'
    devstack.stack()
    assert yaml_load(devstack.gnocchi_resources) == with_ours(
        yaml_load(devstack.ceilometer_default_resources))
    assert yaml_load(devstack.polling) == CEILOMETER_POLLING
    assert not ini(devstack.ceilometer_conf).has_section('scaphandre')


def test_ceilometer_publisher_loads_the_merged_file(devstack):
    """Ceilometer's gnocchi:// publisher, given the merged file, sends our
    meters to our resource entries and policies, and its own meters to
    its own entries."""
    from ceilometer.publisher import gnocchi as gnocchi_publisher
    from oslo_config import cfg
    devstack.run('stack', 'post-config')
    definitions, policies = gnocchi_publisher.GnocchiPublisher.\
        _load_definitions(cfg.ConfigOpts(), None, devstack.gnocchi_resources)
    metric_map = {metric: rd for rd in definitions for metric in rd.metrics}
    ours = {r['resource_type']: r for r in
            our_gnocchi_resources()['resources']}
    for meter in our_meters():
        rd = metric_map[meter]
        expected = ours[rd.cfg['resource_type']]
        assert meter in expected['metrics']
        assert rd.metrics[meter]['archive_policy_name'] == \
            expected['metrics'][meter]['archive_policy_name']
        assert set(rd.cfg['attributes']) == set(expected['attributes'])
    assert metric_map['energy.instance'].cfg['resource_type'] == 'instance'
    assert metric_map['energy.host.zone'].cfg['resource_type'] == \
        'energy_zone'
    # Ceilometer's own instance meters still go to Ceilometer's entry.
    assert metric_map['cpu'].cfg['resource_type'] == 'instance'
    assert 'energy.instance' not in metric_map['cpu'].metrics
    # Every resource entry loaded (a bad one is logged and skipped).
    default = yaml_load(devstack.ceilometer_default_resources)
    assert len(definitions) == len(default['resources']) + len(ours)
    assert [p['name'] for p in policies][-2:] == our_policy_names()
    from scaph_openstack.telemetry import gnocchi as telemetry
    by_name = {p['name']: p for p in policies}
    for policy in telemetry.ARCHIVE_POLICIES:
        assert by_name[policy['name']]['aggregation_methods'] == \
            policy['aggregation_methods']


def test_pipeline_our_meters_without_the_archive_policy_override(devstack):
    """Every meter of ours goes through our sink only, with devstack's
    publisher less its archive_policy; Ceilometer's meters as before.
    Idempotent; unstack gives the file back."""
    ds = devstack
    ds.run('stack', 'post-config')
    for meter in sorted(our_meters()):
        assert routes(ds.pipeline, meter) == [
            ('scaph_meters', ['gnocchi://?filter_project=service'])], meter
    for meter in ('cpu', 'disk.device.read.bytes', 'image.size'):
        assert routes(ds.pipeline, meter) == [
            ('meter_source', [DEVSTACK_PUBLISHER])]
    with open(ds.pipeline, 'rb') as f:
        first = f.read()
    inode = os.stat(ds.pipeline).st_ino
    ds.run('stack', 'extra')
    with open(ds.pipeline, 'rb') as f:
        assert f.read() == first
    assert os.stat(ds.pipeline).st_ino == inode
    # Ceilometer's post-config after ours wrote its pipeline again.
    write_yaml(ds.pipeline, CEILOMETER_PIPELINE)
    ds.run('stack', 'extra')
    with open(ds.pipeline, 'rb') as f:
        assert f.read() == first
    ds.run('unstack')
    assert yaml_load(ds.pipeline) == CEILOMETER_PIPELINE


def test_pipeline_other_publishers_follow_our_meters(devstack):
    """gnocchi and sg-core backends: our sink has both publishers."""
    ds = devstack
    pipeline = {
        'sources': [{'name': 'meter_source', 'meters': ['*', '!cpu'],
                     'sinks': ['meter_sink']}],
        'sinks': [{'name': 'meter_sink', 'publishers': [
            DEVSTACK_PUBLISHER, 'tcp://127.0.0.1:4242']}]}
    write_yaml(ds.pipeline, pipeline)
    ds.run('stack', 'post-config')
    assert routes(ds.pipeline, 'power.instance') == [
        ('scaph_meters', ['gnocchi://?filter_project=service',
                          'tcp://127.0.0.1:4242'])]
    assert routes(ds.pipeline, 'cpu') == []
    ds.run('unstack')
    assert yaml_load(ds.pipeline) == pipeline


def test_pipeline_publisher_with_the_override_only(devstack):
    pipeline = copy.deepcopy(CEILOMETER_PIPELINE)
    pipeline['sinks'][0]['publishers'] = [
        'gnocchi://?archive_policy=ceilometer-high-rate']
    write_yaml(devstack.pipeline, pipeline)
    devstack.run('stack', 'post-config')
    assert routes(devstack.pipeline, 'energy.host.zone') == [
        ('scaph_meters', ['gnocchi://'])]


@pytest.mark.parametrize('publisher', [
    'gnocchi://', 'gnocchi://?filter_project=service',
    'tcp://127.0.0.1:4242'])
def test_pipeline_without_override_is_untouched(devstack, publisher):
    """Without an archive_policy in the URL, gnocchi_resources.yaml's
    policies apply: nothing to do."""
    ds = devstack
    pipeline = copy.deepcopy(CEILOMETER_PIPELINE)
    pipeline['sinks'][0]['publishers'] = [publisher]
    write_yaml(ds.pipeline, pipeline)
    with open(ds.pipeline, 'rb') as f:
        before = f.read()
    ds.stack()
    with open(ds.pipeline, 'rb') as f:
        assert f.read() == before


def test_pipeline_source_naming_our_meters_is_left_alone(devstack):
    """A source that lists our meters (by name or pattern) cannot take an
    exclusion (Ceilometer refuses included and excluded meters in one
    source): the plugin leaves the file and says so."""
    ds = devstack
    pipeline = {
        'sources': [{'name': 'energy', 'meters': ['energy.*', 'cpu'],
                     'sinks': ['meter_sink']}],
        'sinks': [{'name': 'meter_sink',
                   'publishers': [DEVSTACK_PUBLISHER]}]}
    write_yaml(ds.pipeline, pipeline)
    result = ds.run('stack', 'post-config')
    assert 'a source lists our meters' in result.stderr
    assert yaml_load(ds.pipeline) == pipeline


def test_pipeline_missing_is_not_created(devstack):
    os.unlink(devstack.pipeline)
    devstack.stack()
    devstack.run('unstack')
    assert not os.path.exists(devstack.pipeline)


@pytest.fixture
def with_gnocchi(devstack):
    devstack.env['ENABLED_SERVICES'] = ALL_SERVICES + \
        ',gnocchi-api,gnocchi-metricd'
    devstack.fake_scaph_openstack()
    return devstack


def test_test_config_runs_telemetry_setup_as_admin(with_gnocchi):
    ds = with_gnocchi
    ds.run('stack', 'pre-install')
    ds.run('stack', 'install')
    ds.run('stack', 'post-config')
    ds.run('stack', 'extra')
    assert ds.scaph_openstack_calls() == []
    result = ds.run('stack', 'test-config')
    calls = ds.scaph_openstack_calls()
    assert [c['argv'] for c in calls] == [['telemetry-setup']]
    env = calls[0]['env']
    assert env['OS_AUTH_TYPE'] == 'password'
    assert env['OS_USERNAME'] == 'admin'
    assert env['OS_PROJECT_NAME'] == 'admin'
    assert env['OS_AUTH_URL'] == 'http://127.0.0.1/identity'
    assert ('openrc', 'admin', 'admin') in ds.calls()
    assert 'scaph-energy' in result.stdout      # its output is shown
    assert not ds.calls('die') and not ds.calls('violation')
    # Once more (a second stack.sh): run again, telemetry-setup being
    # idempotent itself.
    ds.run('stack', 'test-config')
    assert len(ds.scaph_openstack_calls()) == 2


def test_telemetry_setup_not_run_without_gnocchi(devstack):
    devstack.fake_scaph_openstack()
    devstack.stack()
    assert devstack.scaph_openstack_calls() == []
    assert not [c for c in devstack.calls() if c[0] == 'openrc']


def test_telemetry_setup_failing_fails_the_stack(with_gnocchi):
    with_gnocchi.env['FAKE_SCAPH_RC'] = '1'
    result = with_gnocchi.run('stack', 'test-config', check=False)
    assert result.returncode != 0
    assert 'scaph-openstack telemetry-setup failed' in result.stderr
    assert len(with_gnocchi.scaph_openstack_calls()) == 1
    assert with_gnocchi.calls('die')


def test_telemetry_setup_without_the_command(with_gnocchi):
    os.unlink(with_gnocchi.scaph_openstack)
    result = with_gnocchi.run('stack', 'test-config', check=False)
    assert result.returncode != 0
    assert 'scaph-openstack not found' in result.stderr


def test_telemetry_setup_without_openrc(with_gnocchi):
    os.unlink(with_gnocchi.openrc)
    result = with_gnocchi.run('stack', 'test-config', check=False)
    assert result.returncode != 0
    assert 'openrc not found' in result.stderr
    assert with_gnocchi.scaph_openstack_calls() == []


def test_nova_disabled(devstack):
    devstack.env['DISABLED_SERVICES'] = 'scaph-nova'
    devstack.stack()
    with open(devstack.nova_cpu_conf) as f:
        assert f.read() == NOVA_CPU_CONF
    assert not os.path.lexists(devstack.link)
    assert not os.path.exists(devstack.filter)
    assert not devstack.calls('install_package')
    assert devstack.unit_state() == 'active'


def test_agent_disabled(devstack):
    devstack.env['DISABLED_SERVICES'] = 'scaph-agent'
    devstack.stack()
    assert not devstack.calls('run_process')
    assert not os.path.exists(devstack.conf)
    assert os.path.islink(devstack.link)
    devstack.run('unstack')
    assert not devstack.calls('stop_process')
    assert not os.path.lexists(devstack.link)


def test_plugin_disabled_does_nothing(devstack):
    devstack.env['DISABLED_SERVICES'] = 'scaph-agent,scaph-nova'
    before = tree(devstack.root)
    devstack.stack()
    devstack.run('unstack')
    devstack.run('clean')
    assert tree(devstack.root) == before
    assert {c[0] for c in devstack.calls()} <= {'warn'}


def test_virtiofsd_already_there(devstack):
    virtiofsd = os.path.join(devstack.root, 'usr/libexec/virtiofsd')
    os.makedirs(os.path.dirname(virtiofsd))
    with open(virtiofsd, 'w') as f:
        f.write('#!/bin/sh\n')
    os.chmod(virtiofsd, 0o755)
    devstack.run('stack', 'pre-install')
    assert not devstack.calls('install_package')


@pytest.mark.parametrize('phase', ['pre-install', 'post-config'])
def test_other_virt_driver_is_refused(devstack, phase):
    devstack.env['VIRT_DRIVER'] = 'fake'
    result = devstack.run('stack', phase, check=False)
    assert result.returncode != 0
    assert 'VIRT_DRIVER=fake' in result.stderr
    assert not devstack.calls('install_package')
    with open(devstack.nova_cpu_conf) as f:
        assert f.read() == NOVA_CPU_CONF


def test_a_directory_in_place_of_the_link_is_kept(devstack):
    os.makedirs(devstack.link)
    result = devstack.run('stack', 'post-config', check=False)
    assert result.returncode != 0
    assert 'is not a link' in result.stderr
    assert os.path.isdir(devstack.link) and not os.path.islink(devstack.link)


def test_missing_shim_is_an_error(devstack):
    devstack.env['SCAPH_OPENSTACK_NOVA_SHIM_DIR'] = os.path.join(
        devstack.root, 'nowhere')
    result = devstack.run('stack', 'post-config', check=False)
    assert result.returncode != 0
    assert 'the Nova shim package is not in' in result.stderr
    assert not os.path.lexists(devstack.link)


def test_unstack_keeps_a_compute_driver_that_is_not_ours(devstack):
    devstack.run('stack', 'post-config')
    with open(devstack.nova_cpu_conf) as f:
        text = f.read()
    with open(devstack.nova_cpu_conf, 'w') as f:
        f.write(text.replace('compute_driver = scaphandre.LibvirtDriver',
                             'compute_driver = ironic.IronicDriver'))
    devstack.run('unstack')
    assert ini(devstack.nova_cpu_conf)['DEFAULT']['compute_driver'] == \
        'ironic.IronicDriver'


def test_fake_sudo_refuses_paths_outside_the_root(devstack):
    """The harness itself: a plugin writing to the real /etc fails."""
    devstack.env['SCAPH_OPENSTACK_CONF_DIR'] = '/etc/scaph-openstack-test'
    result = devstack.run('stack', 'post-config', check=False)
    assert result.returncode == 97
    assert ('violation', '/etc/scaph-openstack-test') in devstack.calls()
    assert not os.path.exists('/etc/scaph-openstack-test')


# Static checks -----------------------------------------------------------


def test_shellcheck():
    shellcheck = shutil.which('shellcheck')
    if shellcheck is None:
        pytest.skip('shellcheck is not installed')
    result = subprocess.run(
        [shellcheck, '-x', 'devstack/plugin.sh', 'devstack/settings',
         'tests/devstack/functions', 'tests/devstack/run-phase'],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def _our_filters():
    from oslo_rootwrap import wrapper
    return [f for f in wrapper.load_filters([FILTERS_DIR])
            if f.name != 'privsep-helper']      # oslo.rootwrap's catch-all


def _matches(argv):
    return [f.name for f in _our_filters() if f.match(argv)]


def privsep_helper_argv(config_files):
    """The command line nova-compute gives its root helper for our
    context, as oslo.privsep builds it (in a fresh interpreter: it reads
    the global cfg.CONF)."""
    script = (
        'import sys\n'
        'from oslo_config import cfg\n'
        'from scaph_openstack import privsep\n'
        'cfg.CONF(sys.argv[1:], project="nova", default_config_files=[])\n'
        'print("\\n".join(privsep.sys_admin.helper_command('
        '"/tmp/tmpabc123/privsep.sock")))\n')
    argv = []
    for path in config_files:
        argv += ['--config-file', path]
    out = subprocess.run([sys.executable, '-c', script] + argv,
                         capture_output=True, text=True, check=True,
                         timeout=60).stdout.splitlines()
    # The files are temporary; nova-compute's live under /etc/nova.
    mapping = {path: '/etc/nova/%s' % os.path.basename(path)
               for path in config_files}
    return [mapping.get(arg, arg) for arg in out]


@pytest.mark.parametrize('names', [['nova-cpu.conf'],
                                   ['nova.conf', 'nova-compute.conf']])
def test_rootwrap_filter_allows_our_privsep_helper(tmp_path, names):
    files = []
    for name in names:
        path = tmp_path / name
        path.write_text('[DEFAULT]\n')
        files.append(str(path))
    argv = privsep_helper_argv(files)
    assert argv[0] == 'sudo'            # oslo.privsep's default prefix ...
    argv = argv[argv.index('privsep-helper'):]   # ... nova puts rootwrap
    assert CONTEXT in argv
    assert len(_matches(argv)) == 1


@pytest.mark.parametrize('argv', [
    ['privsep-helper', '--config-file', '/etc/nova/nova.conf',
     '--privsep_context', 'nova.privsep.sys_admin_pctxt',
     '--privsep_sock_path', '/tmp/x/privsep.sock'],
    ['privsep-helper', '--config-file', '/etc/../root/evil.conf',
     '--privsep_context', CONTEXT, '--privsep_sock_path', '/tmp/x/s'],
    ['privsep-helper', '--config-file', '/home/x/nova.conf',
     '--privsep_context', CONTEXT, '--privsep_sock_path', '/tmp/x/s'],
    ['privsep-helper', '--config-file', '/etc/nova/nova.conf',
     '--privsep_context', CONTEXT, '--privsep_sock_path', '/tmp/x/s',
     '--debug'],
    ['sh', '-c', 'id'],
], ids=['other-context', 'dotdot', 'not-etc', 'extra-arg', 'shell'])
def test_rootwrap_filter_refuses_anything_else(argv):
    assert _matches(argv) == []


def _example_options():
    """(section, option, value) of every option line of the example,
    commented (#name = value) or not."""
    section = None
    with open(EXAMPLE) as f:
        for line in f:
            header = re.match(r'^\[(.+)\]$', line.strip())
            option = re.match(r'^#?([a-z_]+) = (.*)$', line.strip())
            if header:
                section = header.group(1)
            elif option:
                yield section, option.group(1), option.group(2)


def test_example_config_shows_real_options_with_valid_values(tmp_path):
    """Uncommenting every line of the example gives a file oslo.config
    parses with the agent's options: no invented option, no bad value."""
    options = list(_example_options())
    assert len(options) >= 20
    parser = configparser.ConfigParser(interpolation=None)
    for section, name, value in options:
        if section != 'DEFAULT' and not parser.has_section(section):
            parser.add_section(section)
        parser.set(section, name, value)
    path = tmp_path / 'all.conf'
    with open(path, 'w') as f:
        parser.write(f)
    conf = load_agent_conf(str(path))
    for section, name, _value in options:
        group = conf if section == 'DEFAULT' else conf[section]
        assert name in group, '[%s] %s' % (section, name)
        getattr(group, name)                    # type and choices checks
    # As shipped (all commented) it is valid too.
    assert load_agent_conf(EXAMPLE).agent.interval == 2.0


def test_systemd_units_verify(tmp_path):
    analyze = shutil.which('systemd-analyze')
    if analyze is None:
        pytest.skip('systemd-analyze is not installed')
    agent = shutil.which('scaph-openstack-agent') or os.path.join(
        os.path.dirname(sys.executable), 'scaph-openstack-agent')
    units = []
    for name in sorted(os.listdir(SYSTEMD_DIR)):
        if not name.endswith(('.service', '.mount')):
            continue
        with open(os.path.join(SYSTEMD_DIR, name)) as f:
            text = f.read()
        # The unit names the packaged path; verify checks it exists.
        text = text.replace('ExecStart=/usr/bin/scaph-openstack-agent',
                            'ExecStart=%s' % agent)
        path = tmp_path / name
        path.write_text(text)
        units.append(str(path))
    assert len(units) == 3
    result = subprocess.run([analyze, 'verify', '--man=no'] + units,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    service = ini(os.path.join(SYSTEMD_DIR, 'scaph-openstack-agent.service'))
    assert service['Service']['ExecStart'] == (
        '/usr/bin/scaph-openstack-agent --config-file '
        '/etc/scaph-openstack/scaph-openstack.conf')
    assert service['Service']['RuntimeDirectory'] == 'scaph-openstack'
    assert service['Service']['StateDirectory'] == 'scaph-openstack'
    # Options that would give the agent a private mount namespace, where
    # its share mounts would never reach libvirt's virtiofsd.
    for option in ('PrivateTmp', 'ProtectSystem', 'ProtectHome',
                   'PrivateDevices', 'ProtectKernelTunables',
                   'ProtectKernelModules', 'ProtectKernelLogs',
                   'ProtectControlGroups', 'ProtectProc', 'ReadOnlyPaths',
                   'ReadWritePaths', 'InaccessiblePaths',
                   'TemporaryFileSystem', 'BindPaths', 'MountFlags'):
        assert option not in service['Service'], option
