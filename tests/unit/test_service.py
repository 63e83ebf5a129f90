"""The agent's startup: fatal errors in one line, READY=1 at the right time.

The real launcher (master, worker, exit status, NOTIFY_SOCKET) is driven
in tests/functional/faults/test_startup.py; here are the parts.
"""

import errno
import logging
import os
import socket
import threading

import pytest
from oslo_config import cfg
from oslo_service import backend as oslo_backend


def _import_service():
    """The agent selects oslo.service's threading backend when imported;
    the Ceilometer tests, collected first in the same process, already
    got the default (eventlet) one. Import the agent on a fresh selection,
    then give the others theirs back."""
    names = ('_cached_backend', '_cached_components', '_cached_backend_type',
             '_backend_hook')
    saved = {name: getattr(oslo_backend, name) for name in names}
    if saved['_cached_backend_type'] in (None,
                                         oslo_backend.BackendType.THREADING):
        from scaph_openstack.agent import service
        return service
    oslo_backend._reset_backend()
    try:
        from scaph_openstack.agent import service
    finally:
        for name, value in saved.items():
            setattr(oslo_backend, name, value)
    return service


service = _import_service()

from scaph_openstack.agent import plugins  # noqa: E402
from scaph_openstack import conf as scaph_conf  # noqa: E402
from scaph_openstack import statelog  # noqa: E402


CHECK_PRIVSEP = service.check_privsep


@pytest.fixture(autouse=True)
def privsep_capabilities_elsewhere(monkeypatch):
    """check_startup's privsep check depends on this machine's
    capabilities: tested on its own, with fake ones."""
    monkeypatch.setattr(service, 'check_privsep', lambda: None)


def make_conf(tmp_path, sections=None, ledger_text=None):
    """A fresh ConfigOpts read from a file made of ``sections``."""
    state = tmp_path / 'state'
    state.mkdir(exist_ok=True)
    base = {'agent': {'state_dir': str(state), 'publishers': 'snapshot',
                      'inventory': 'qemu'},
            'energy': {'source': 'simulated'},
            'snapshot': {'path': str(tmp_path / 'snapshot.json')}}
    for section, options in (sections or {}).items():
        base.setdefault(section, {}).update(options)
    path = tmp_path / 'agent.conf'
    path.write_text(''.join(
        '[%s]\n%s\n' % (s, ''.join('%s = %s\n' % kv for kv in o.items()))
        for s, o in base.items()))
    if ledger_text is not None:
        (state / 'ledger.json').write_text(ledger_text)
    conf = cfg.ConfigOpts()
    scaph_conf.register_opts(conf)
    conf(['--config-file', str(path)], project='scaph-openstack')
    return conf, str(path)


def fatal_line(exc):
    line = service.PREFIX + str(exc)
    assert '\n' not in line
    return line


# -- the master's checks ----------------------------------------------------

def test_a_good_configuration_passes_every_check(tmp_path):
    conf, _path = make_conf(tmp_path)
    service.check_startup(conf)


@pytest.mark.parametrize('group,option,value,needles', [
    ('agent', 'interval', 'abc', ["could not convert string to float: "
                                  "'abc'"]),
    ('agent', 'retention', '-5', ['greater than or equal to 0']),
    ('attribution', 'idle_policy', 'everyone', ["found 'everyone'",
                                                'none, vcpus, cputime']),
    ('share', 'manage_mounts', 'maybe', ['maybe']),
])
def test_every_option_is_read_so_a_bad_value_is_fatal_at_once(
        tmp_path, group, option, value, needles):
    conf, path = make_conf(tmp_path, {group: {option: value}})
    with pytest.raises(service.FatalStartupError) as info:
        service.check_options(conf)
    line = fatal_line(info.value)
    assert line.startswith('scaph-openstack-agent: unusable configuration: '
                           '[%s] %s in %s: ' % (group, option, path)), line
    assert 'fix the value, or remove it' in line
    for needle in needles:
        assert needle in line
    assert info.value.code == service.EXIT_FATAL == 2
    # check_startup starts with the same reading.
    with pytest.raises(service.FatalStartupError):
        service.check_startup(conf)


def test_an_unknown_plugin_names_the_option_and_the_choices(tmp_path):
    conf, _path = make_conf(tmp_path, {'agent': {'inventory': 'nope'}})
    with pytest.raises(service.FatalStartupError) as info:
        service.check_startup(conf)
    assert str(info.value) == (
        'unusable configuration: [agent] inventory = nope: no such plugin; '
        'set it to one of: libvirt, qemu')


def test_an_unknown_publisher_names_the_option(tmp_path):
    conf, _path = make_conf(tmp_path,
                            {'agent': {'publishers': 'snapshot,nope'}})
    with pytest.raises(service.FatalStartupError) as info:
        service.check_startup(conf)
    assert '[agent] publishers = nope' in str(info.value)
    assert 'prometheus, share, snapshot' in str(info.value)


def test_a_plugin_rejecting_its_options_names_the_group(tmp_path):
    conf, path = make_conf(tmp_path,
                           {'attribution': {'idle_power': 'package-0:abc'}})
    with pytest.raises(service.FatalStartupError) as info:
        service.check_startup(conf)
    line = fatal_line(info.value)
    assert '[agent] attribution = cputime' in line
    assert "[attribution] idle_power of package-0" in line
    assert "not 'abc'" in line
    assert 'fix [attribution] in %s' % path in line


def test_a_plugin_that_cannot_be_imported_says_so(monkeypatch, tmp_path):
    conf, _path = make_conf(tmp_path)

    def broken(*args, **kwargs):
        raise ImportError("No module named 'libvirt'")
    monkeypatch.setattr(plugins.driver, 'DriverManager', broken)
    with pytest.raises(plugins.PluginError) as info:
        plugins.load(plugins.INVENTORY, 'libvirt', conf)
    assert str(info.value) == (
        "[agent] inventory = libvirt: the plugin cannot be loaded "
        "(ImportError: No module named 'libvirt'); install what it needs "
        "or choose another")


@pytest.mark.parametrize('text', ['garbage{', '[]', '{}', '"ledger"'])
def test_an_unusable_ledger_is_fatal_and_says_how_to_go_on(tmp_path, text):
    conf, _path = make_conf(tmp_path, ledger_text=text)
    with pytest.raises(service.FatalStartupError) as info:
        service.check_startup(conf)
    line = fatal_line(info.value)
    assert line.startswith('scaph-openstack-agent: cannot start: ledger ')
    assert service.ledger_path(conf) in line
    assert 'move it aside' in line


def test_any_failure_to_load_the_ledger_is_one_fatal_line(monkeypatch,
                                                          tmp_path):
    conf, _path = make_conf(tmp_path)

    def load(path):
        raise AttributeError("'list' object has no attribute 'get'")
    monkeypatch.setattr(service.ledger.Ledger, 'load', load)
    with pytest.raises(service.FatalStartupError) as info:
        service.load_ledger(conf)
    assert 'AttributeError' in str(info.value)
    assert 'move it aside' in str(info.value)


def test_rapl_without_a_powercap_tree_says_to_use_auto(tmp_path):
    conf, _path = make_conf(tmp_path, {'energy': {
        'source': 'rapl', 'powercap_path': str(tmp_path / 'none')}})
    with pytest.raises(service.FatalStartupError) as info:
        service.check_startup(conf)
    assert str(info.value).startswith('no usable energy source: ')
    assert 'set [energy] source = auto' in str(info.value)


def test_report_fatal_writes_one_line_and_returns_the_code(capsys):
    code = service.report_fatal(service.FatalStartupError(
        'cannot start: two\nlines', code=7), log=False)
    assert code == 7
    assert capsys.readouterr().err == (
        'scaph-openstack-agent: cannot start: two lines\n')


# -- the worker's start -------------------------------------------------------

class FakePublisher:

    def __init__(self, name, error=None):
        self.name = name
        self.error = error
        self.started = False
        self.address, self.port = '127.0.0.1', 9109
        self.work_dir, self.export_dir = '/w', '/e'

    def start(self):
        if self.error:
            raise self.error
        self.started = True

    def stop(self):
        pass


def test_a_publisher_that_cannot_start_is_fatal_with_a_hint():
    busy = OSError(errno.EADDRINUSE, 'Address already in use')
    with pytest.raises(service.FatalStartupError) as info:
        service.start_publishers([FakePublisher('snapshot'),
                                  FakePublisher('prometheus', busy)])
    assert str(info.value) == (
        'cannot start: publisher prometheus failed to start (OSError: '
        '[Errno 98] Address already in use); set [prometheus] '
        'listen_address and port to an address this host can bind and '
        'nothing else listens on (now 127.0.0.1:9109)')
    with pytest.raises(service.FatalStartupError) as info:
        service.start_publishers([FakePublisher('share', OSError('no'))])
    assert '[share] work_dir and export_dir (now /w and /e)' in str(
        info.value)


def test_privsep_without_its_capabilities_is_fatal_before_the_fork(
        monkeypatch):
    from oslo_privsep import capabilities as caps
    monkeypatch.setattr(service.os, 'geteuid', lambda: 0)
    everything = [caps.CAP_SYS_ADMIN, caps.CAP_DAC_OVERRIDE,
                  caps.CAP_DAC_READ_SEARCH, caps.CAP_FOWNER, caps.CAP_CHOWN]
    check = CHECK_PRIVSEP
    check(lambda: (everything, everything, []))
    bounded = [caps.CAP_DAC_OVERRIDE, caps.CAP_FOWNER]
    with pytest.raises(service.FatalStartupError) as info:
        check(lambda: (bounded, bounded, []))
    assert str(info.value).startswith(
        'cannot start: the privsep daemon cannot get CAP_CHOWN, '
        'CAP_DAC_READ_SEARCH, CAP_SYS_ADMIN: it needs CAP_SYS_ADMIN')
    monkeypatch.setattr(service.os, 'geteuid', lambda: 1000)
    check(lambda: ([], [], []))   # not root: no fork


def test_privsep_that_cannot_start_is_fatal(monkeypatch):
    def fail():
        raise RuntimeError('privsep helper command exited non-zero (1)')
    monkeypatch.setattr(service.privsep, 'start_if_root', fail)
    with pytest.raises(service.FatalStartupError) as info:
        service.start_privsep()
    assert 'privsep daemon did not start' in str(info.value)
    assert 'CAP_SYS_ADMIN' in str(info.value)


class RecordingReports:

    def __init__(self):
        self.sent = []

    def ready(self):
        self.sent.append('ready')

    def fatal(self, code):
        self.sent.append(('fatal', code))


@pytest.fixture
def no_privsep(monkeypatch):
    monkeypatch.setattr(service.privsep, 'start_if_root', lambda: None)


def test_a_worker_failing_to_start_reports_fatal_to_the_master(
        monkeypatch, tmp_path, capsys, no_privsep):
    conf, _path = make_conf(tmp_path, {'agent': {'inventory': 'nope'}})
    reports = RecordingReports()
    agent = service.AgentService(conf, reports)
    agent.start()               # no exception: the worker waits for SIGTERM
    assert reports.sent == [('fatal', 2)]
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'Traceback' not in err
    assert err.startswith('scaph-openstack-agent: unusable configuration: '
                          '[agent] inventory = nope')
    assert agent.timer is None
    agent.stop()                # what the master's SIGTERM does


def test_an_unexpected_start_error_is_fatal_too(monkeypatch, tmp_path,
                                                 capsys, no_privsep):
    conf, _path = make_conf(tmp_path)

    def build(conf):
        raise KeyError('surprise')
    monkeypatch.setattr(service, 'build_ticker', build)
    reports = RecordingReports()
    service.AgentService(conf, reports).start()
    assert reports.sent == [('fatal', 2)]
    err = capsys.readouterr().err
    assert err == ("scaph-openstack-agent: cannot start: unexpected "
                   "KeyError: 'surprise' (its traceback is in the log)\n")


def test_without_a_master_a_start_error_is_raised(tmp_path, capsys,
                                                   no_privsep):
    conf, _path = make_conf(tmp_path, ledger_text='[]')
    with pytest.raises(service.FatalStartupError):
        service.AgentService(conf).start()


class FakeTicker:

    def __init__(self, results, publishers=('snapshot', 'share')):
        self.results = list(results)
        self.publishers = [FakePublisher(name) for name in publishers]
        self.states = statelog.StateLog(logging.getLogger(__name__))

    def tick(self):
        result = self.results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result


def test_ready_after_the_first_tick_every_publisher_took(tmp_path):
    conf, _path = make_conf(tmp_path)
    reports = RecordingReports()
    agent = service.AgentService(conf, reports)
    agent.ticker = FakeTicker([RuntimeError('tick failed'), None,
                               'report', 'report', 'report'])
    agent._tick()               # a failing tick: not fatal, not ready
    agent._tick()               # nothing published: not ready
    assert reports.sent == [] and not agent.ready
    agent.ticker.states.failed('publish-share', 'Publisher %s failed',
                               'share')
    agent._tick()               # published, but the share publisher failed
    assert reports.sent == []
    agent.ticker.states.recovered('publish-share')
    agent._tick()
    assert reports.sent == ['ready'] and agent.ready
    agent._tick()               # once
    assert reports.sent == ['ready']


# -- the master's side of the pipe -------------------------------------------

class FakeLauncher:

    def __init__(self):
        self.stops = 0

    def stop(self):
        self.stops += 1


@pytest.fixture
def notify_socket(tmp_path):
    path = str(tmp_path / 'notify')
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield path, sock
    sock.close()


def close(reports):
    for fd in (reports._read_fd, reports._write_fd):
        try:
            os.close(fd)
        except OSError:
            pass


def test_the_master_notifies_systemd_once_when_the_worker_is_ready(
        notify_socket):
    path, sock = notify_socket
    reports = service.StartupReports(path)
    launcher = FakeLauncher()
    watcher = reports.watch(launcher)
    reports.ready()
    assert sock.recv(64) == b'READY=1'
    reports.ready()             # a respawned worker: not again
    reports.fatal(2)            # a later fatal start still stops it all
    os.close(reports._write_fd)
    watcher.join(5)
    assert not watcher.is_alive()
    sock.settimeout(0.2)
    with pytest.raises(TimeoutError):
        sock.recv(64)
    assert launcher.stops == 1 and reports.exit_code == 2
    os.close(reports._read_fd)


def test_a_fatal_report_stops_the_launcher_and_sets_the_exit_code(
        notify_socket):
    path, sock = notify_socket
    reports = service.StartupReports(path)
    launcher = FakeLauncher()
    reports.handle(b'fatal 2', launcher)
    reports.handle(b'fatal 3', launcher)
    reports.handle(b'ready', launcher)
    assert reports.exit_code == 2 and launcher.stops == 1
    assert not reports.notified
    reports.handle(b'fatal x', FakeLauncher())
    close(reports)


def test_messages_split_across_reads_are_reassembled(monkeypatch):
    reports = service.StartupReports(None)
    chunks = [b'rea', b'dy\nfat', b'al 2\n', b'']
    monkeypatch.setattr(service.os, 'read',
                        lambda fd, n: chunks.pop(0))
    launcher = FakeLauncher()
    reports._watch(launcher)
    assert reports.notified and reports.exit_code == 2
    monkeypatch.undo()
    close(reports)


def test_sd_notify_abstract_and_missing_sockets():
    name = 'scaph-test-%d-%d' % (os.getpid(), threading.get_ident())
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind('\0' + name)
    sock.settimeout(5)
    try:
        assert service.sd_notify('@' + name, b'READY=1')
        assert sock.recv(64) == b'READY=1'
    finally:
        sock.close()
    assert not service.sd_notify(None, b'READY=1')
    assert not service.sd_notify('/nonexistent/notify', b'READY=1')


@pytest.mark.parametrize('sections,expected', [
    ({}, 30.0),                                   # 3 x 10 s, the defaults
    ({'agent': {'interval': 2}, 'snapshot': {'min_interval': 0}}, 30.0),
    ({'agent': {'interval': 15}}, 45.0),          # 3 x the tick
    ({'snapshot': {'min_interval': 20}}, 60.0),   # 3 x the write period
    ({'snapshot': {'min_interval': 0, 'stale_after_min': 0}}, 6.0),
])
def test_stale_after_is_a_few_write_periods_never_under_the_floor(
        tmp_path, sections, expected):
    """One slow tick must not make readers call the snapshot stale: with
    2 s ticks written every tick, 3 periods alone would be 6 s."""
    conf, _ = make_conf(tmp_path, sections)
    assert service.stale_after_s(conf) == expected
