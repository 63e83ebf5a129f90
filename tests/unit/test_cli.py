import io
import json
import os
import time
import types
import xml.etree.ElementTree as ET

import libvirt
import pytest
from oslo_config import cfg

from scaph_openstack import cli
from scaph_openstack import privsep
from scaph_openstack import snapshot
from scaph_openstack.privsep import mounts
from scaph_openstack.share import domain_xml
from tests.unit import fakes
from tests.unit import test_domain_xml
from tests.unit import test_snapshot

UUID = '11111111-2222-3333-4444-555555555555'
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def run(argv):
    out = io.StringIO()
    args = cli.build_parser().parse_args(argv)
    return args.func(args, out=out), out.getvalue()


def test_status_table_says_simulated(tmp_path):
    path = test_snapshot.written(tmp_path, now=time.time())
    code, out = run(['status', '--snapshot', path])
    assert code == 0
    assert 'SIMULATED' in out
    assert test_snapshot.test_share.UUID in out
    assert '5.0' in out  # joules


def test_status_json(tmp_path):
    path = test_snapshot.written(tmp_path, now=time.time())
    code, out = run(['status', '--json', '--snapshot', path])
    assert code == 0 and json.loads(out)['format'] == snapshot.FORMAT


def test_status_missing_and_stale(tmp_path, capsys):
    code, _ = run(['status', '--snapshot', str(tmp_path / 'x.json')])
    assert code == 2
    assert 'agent running' in capsys.readouterr().err
    path = test_snapshot.written(tmp_path, now=time.time() - 600)
    code, _ = run(['status', '--snapshot', path])
    assert code == 3
    assert 'not updating' in capsys.readouterr().err


# -- attach / detach, on a stand-in libvirt domain --------------------------

HUGEPAGES = test_domain_xml.with_memory('<hugepages/>')


class Domain:
    def __init__(self, xml, persistent=True):
        self.xml, self.persistent = xml, persistent

    def isPersistent(self):
        return self.persistent

    def XMLDesc(self, flags=0):
        assert flags == libvirt.VIR_DOMAIN_XML_INACTIVE
        return self.xml


class Connection:
    def __init__(self):
        self.defined, self.closed = [], False

    def defineXML(self, xml):
        self.defined.append(xml)

    def close(self):
        self.closed = True


@pytest.fixture
def host(monkeypatch, tmp_path):
    """attach/detach against a stand-in domain, the share directories it
    asks for recorded, a fresh ConfigOpts, HOME empty, no default config
    file or directory (``host.run`` also gives an empty --config-file)."""
    home = tmp_path / 'home'
    home.mkdir()
    monkeypatch.setenv('HOME', str(home))
    monkeypatch.setattr(cli, 'DEFAULT_CONFIG_FILE', str(tmp_path / 'no.conf'))
    monkeypatch.setattr(cli, 'DEFAULT_CONFIG_DIR', str(tmp_path / 'no.d'))
    empty = tmp_path / 'empty.conf'
    empty.write_text('')
    state = types.SimpleNamespace(
        home=home, connection=Connection(),
        domain=Domain(test_domain_xml.DOMAIN), shares=[],
        run=lambda argv: run(argv + ['--config-file', str(empty)]))
    load_conf = cli._load_conf
    monkeypatch.setattr(cli, '_load_conf',
                        lambda args: load_conf(args, cfg.ConfigOpts()))
    monkeypatch.setattr(privsep, 'start_if_root', lambda: None)
    # Looked up on each call: tests replace state.domain.
    state.connection.lookupByName = lambda name: state.domain
    monkeypatch.setattr(libvirt, 'open', lambda uri: state.connection)
    # the uuid; the privsep daemon takes work_dir from its own [share]
    monkeypatch.setattr(mounts, 'create_instance_share',
                        lambda *args, **kw: state.shares.append(args[-1]))
    return state


def test_attach_hugepages_domain_defines_shared_memory(host):
    host.domain = Domain(HUGEPAGES)
    code, out = host.run(['attach', 'seed'])
    assert code == 0, out
    (xml,) = host.connection.defined
    root = ET.fromstring(xml)
    assert root.find('memoryBacking/access').get('mode') == 'shared'
    assert root.find('memoryBacking/hugepages') is not None
    assert root.find('memoryBacking/source') is None
    assert root.find('devices/filesystem/source').get('dir') == \
        '/var/lib/libvirt/scaphandre/' + UUID
    assert host.shares == [UUID] and host.connection.closed
    assert 'takes effect at the next start' in out


def test_attach_refuses_a_transient_domain(host, capsys):
    host.domain = Domain(test_domain_xml.DOMAIN, persistent=False)
    code, out = host.run(['attach', 'seed'])
    assert code == 2 and out == ''
    err = capsys.readouterr().err
    assert 'seed is a transient domain' in err and 'virsh define' in err
    # nothing done: no share directory, no definition
    assert host.shares == [] and host.connection.defined == []
    assert host.connection.closed


def test_detach_refuses_a_transient_domain(host, capsys):
    xml, _ = domain_xml.attach(test_domain_xml.DOMAIN, '/e/u', 'scaphandre')
    host.domain = Domain(xml, persistent=False)
    code, _ = host.run(['detach', 'seed'])
    assert code == 2 and 'transient' in capsys.readouterr().err
    assert host.connection.defined == []


def test_attach_refusal_by_the_xml_leaves_no_share(host, capsys):
    host.domain = Domain('<domain><name>seed</name></domain>')
    code, _ = host.run(['attach', 'seed'])
    assert code == 2 and '<uuid>' in capsys.readouterr().err
    assert host.shares == [] and host.connection.defined == []


def test_attach_libvirt_refusal_is_reported(host, capsys):
    def refuse(xml):
        raise fakes.libvirt_error("'virtiofs' requires shared memory")
    host.connection.defineXML = refuse
    code, _ = host.run(['attach', 'seed'])
    err = capsys.readouterr().err
    assert code == 2
    assert 'libvirt refused the new definition of seed' in err
    assert 'requires shared memory' in err


SETTINGS = """[share]
export_dir = {export}
tag = energy
"""


def test_attach_reads_the_default_config_file(host, monkeypatch, tmp_path):
    # what the agent's unit reads, without --config-file
    config = tmp_path / 'etc' / 'scaph-openstack.conf'
    config.parent.mkdir()
    config.write_text(SETTINGS.format(export='/srv/export'))
    monkeypatch.setattr(cli, 'DEFAULT_CONFIG_FILE', str(config))
    code, out = run(['attach', 'seed'])
    assert code == 0 and host.shares == [UUID]
    root = ET.fromstring(host.connection.defined[0])
    assert root.find('devices/filesystem/target').get('dir') == 'energy'
    assert root.find('devices/filesystem/source').get('dir') == \
        '/srv/export/' + UUID
    assert 'configuration: %s' % config in out and "tag 'energy'" in out


def test_config_file_option_replaces_the_default(host, monkeypatch,
                                                 tmp_path):
    default = tmp_path / 'default.conf'
    default.write_text(SETTINGS.format(export='/default'))
    monkeypatch.setattr(cli, 'DEFAULT_CONFIG_FILE', str(default))
    given = tmp_path / 'given.conf'
    given.write_text(SETTINGS.format(export='/given'))
    code, _ = run(['attach', 'seed', '--config-file', str(given)])
    assert code == 0 and host.shares == [UUID]
    root = ET.fromstring(host.connection.defined[0])
    assert root.find('devices/filesystem/source').get('dir') == \
        '/given/' + UUID


def test_no_config_file_from_home(host, monkeypatch, tmp_path):
    # oslo.config's own search starts in HOME; under sudo that can be the
    # invoking user's, whose file would pick virtiofsd_path (run as root)
    monkeypatch.setattr(cli, 'DEFAULT_CONFIG_FILE',
                        str(tmp_path / 'absent.conf'))
    for path in (host.home / '.scaph-openstack' / 'scaph-openstack.conf',
                 host.home / 'scaph-openstack.conf'):
        path.parent.mkdir(exist_ok=True)
        path.write_text(SETTINGS.format(export='/home') +
                        'virtiofsd_path = /home/user/virtiofsd\n')
    code, out = run(['attach', 'seed'])
    assert code == 0 and 'built-in defaults' in out
    fs = ET.fromstring(host.connection.defined[0]).find('devices/filesystem')
    assert fs.find('binary') is None
    assert fs.find('target').get('dir') == 'scaphandre'


def test_default_config_file_is_the_agent_units():
    with open(os.path.join(ROOT, 'etc', 'systemd',
                           'scaph-openstack-agent.service')) as f:
        (start,) = [line for line in f if line.startswith('ExecStart=')]
    assert start.split()[1:] == ['--config-file', cli.DEFAULT_CONFIG_FILE]
    assert cli.DEFAULT_CONFIG_FILE == \
        '/etc/scaph-openstack/scaph-openstack.conf'
