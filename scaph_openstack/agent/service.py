"""scaph-openstack-agent: the oslo.service tick loop and its command line.

Runs on oslo.service's threading backend (eventlet is deprecated).

Startup fails loudly (doc/faults.md, "Startup"): whatever the agent cannot
run with is a FatalStartupError, told in one line on stderr that names the
fix, and the whole service (the master too) exits EXIT_FATAL instead of
cotyledon respawning a worker that fails the same way. The master checks
what needs no side effects before it forks; the worker does the rest for
real (privsep, mounts, the Prometheus port) and reports back through
StartupReports. systemd hears READY=1 only after the first tick published.
"""

import os
import re
import socket
import sys
import threading
import time
import warnings

from oslo_config import cfg
from oslo_log import log as logging

# futurist (under oslo.service's threading backend) imports eventlet when
# it is installed, and eventlet warns on stderr that it is deprecated: the
# agent does not use it, and its stderr is for the one line of a fatal
# error.
warnings.filterwarnings('ignore', message=r'\s*Eventlet is deprecated')

from oslo_service import backend  # noqa: E402

backend.init_backend(backend.BackendType.THREADING)

from oslo_privsep import capabilities as privsep_caps  # noqa: E402
from oslo_service import loopingcall  # noqa: E402
from oslo_service import service  # noqa: E402

from scaph_openstack.accounting import carbon  # noqa: E402
from scaph_openstack.agent import handoffs  # noqa: E402
from scaph_openstack.agent import plugins  # noqa: E402
from scaph_openstack.agent import tick  # noqa: E402
from scaph_openstack import conf as scaph_conf  # noqa: E402
from scaph_openstack.energy import base as energy_base  # noqa: E402
from scaph_openstack import fileutil  # noqa: E402
from scaph_openstack import ledger  # noqa: E402
from scaph_openstack.inventory import topology  # noqa: E402
from scaph_openstack import privsep  # noqa: E402

LOG = logging.getLogger(__name__)
LEDGER_FILE = 'ledger.json'


def ledger_path(conf):
    return os.path.join(conf.agent.state_dir, LEDGER_FILE)


# -- fatal startup errors ---------------------------------------------------

# The exit status of a fatal startup error. The systemd unit does not
# restart on it (RestartPreventExitStatus): an operator has to fix
# something first.
EXIT_FATAL = 2
PREFIX = 'scaph-openstack-agent: '


class FatalStartupError(Exception):
    """What the agent cannot start with. The message is one line that
    names the fix; the whole service exits with ``code``. A tick failing
    later, at run time, is not fatal: it is logged and the agent goes on."""

    def __init__(self, message, code=EXIT_FATAL):
        super().__init__(message)
        self.code = code


def report_fatal(exc, log=True):
    """The one line on stderr (and, once logging is set up, in the log)."""
    line = PREFIX + ' '.join(str(exc).split())
    if log:
        LOG.error('%s', line)
    sys.stderr.write(line + '\n')
    sys.stderr.flush()
    return exc.code


def no_energy_source(exc):
    return FatalStartupError(
        'no usable energy source: %s. On a host without RAPL, set [energy] '
        'source = auto (or simulated) to run on the documented model.' % exc)


def as_fatal(exc):
    """The FatalStartupError for a known startup failure, else None."""
    if isinstance(exc, FatalStartupError):
        return exc
    if isinstance(exc, plugins.PluginError):
        return FatalStartupError('unusable configuration: %s' % exc)
    if isinstance(exc, ledger.LedgerError):
        return FatalStartupError('cannot start: %s' % exc)
    if isinstance(exc, energy_base.EnergySourceError):
        return no_energy_source(exc)
    if isinstance(exc, cfg.Error):
        return FatalStartupError('unusable configuration: %s' % exc)
    return None


_INVALID_VALUE = re.compile(
    r"detail='(?P<file>[^']*)'\) is not valid: (?P<reason>.*)$", re.S)


def option_error(group, name, exc):
    where = '[%s] %s' % (group or 'DEFAULT', name)
    match = _INVALID_VALUE.search(str(exc))
    if match:
        return FatalStartupError(
            'unusable configuration: %s in %s: %s; fix the value, or '
            'remove it to get the default' % (where, match['file'],
                                              match['reason']))
    return FatalStartupError('unusable configuration: %s: %s'
                             % (where, exc))


def check_options(conf):
    """Read every registered option: oslo.config converts a value (type,
    range, choices) only when it is read, and a bad one must stop the
    agent now, not its first tick."""
    for name in list(conf):
        try:
            value = conf[name]
        except (cfg.Error, ValueError) as exc:
            raise option_error(None, name, exc)
        if isinstance(value, cfg.ConfigOpts.GroupAttr):
            for opt in list(value):
                try:
                    value[opt]
                except (cfg.Error, ValueError) as exc:
                    raise option_error(name, opt, exc)


def load_ledger(conf):
    path = ledger_path(conf)
    try:
        return ledger.Ledger.load(path)
    except ledger.LedgerError as exc:
        raise as_fatal(exc)
    except Exception as exc:  # Ledger.load should say LedgerError
        raise FatalStartupError(
            'cannot start: ledger %s is unusable (%s: %s). Counters are not '
            'reset silently: restore it, or move it aside to start every '
            'counter from zero.' % (path, type(exc).__name__, exc))


def check_startup(conf):
    """In the master, before any worker is forked: everything fatal that
    can be checked without side effects. Option values; the energy source
    (``auto`` cannot fail: it falls back, loudly); every plugin found and
    built from its options, then dropped (each worker builds its own:
    a respawned one must read the ledger the last one saved); the ledger
    loadable. Privsep, the share mounts and the Prometheus port are done
    for real by the worker, whose failure stops the master
    (StartupReports). Raises FatalStartupError."""
    check_options(conf)
    try:
        if conf.energy.source != 'auto':
            plugins.energy_source(conf)
        built = [plugins.load(plugins.INVENTORY, conf.agent.inventory, conf),
                 plugins.load(plugins.ATTRIBUTION, conf.agent.attribution,
                              conf)]
        built.extend(plugins.publishers(conf))
    except (plugins.PluginError, energy_base.EnergySourceError) as exc:
        raise as_fatal(exc)
    built[0].close()
    load_ledger(conf)
    check_privsep()


# What to check when a publisher cannot start, by publisher name.
START_HINTS = {
    'prometheus': lambda p: (
        'set [prometheus] listen_address and port to an address this host '
        'can bind and nothing else listens on (now %s:%s)'
        % (getattr(p, 'address', '?'), getattr(p, 'port', '?'))),
    'share': lambda p: (
        'check [share] work_dir and export_dir (now %s and %s); with '
        '[share] manage_mounts the agent mounts them through privsep, as '
        'root' % (getattr(p, 'work_dir', '?'), getattr(p, 'export_dir', '?'))),
    'snapshot': lambda p: 'check that [snapshot] path can be written',
}


def start_publishers(publishers):
    """Start each publisher (mounts, sockets); FatalStartupError if one
    cannot."""
    for publisher in publishers:
        try:
            publisher.start()
        except Exception as exc:
            hint = START_HINTS.get(publisher.name,
                                   lambda p: 'check [%s]' % p.name)
            raise FatalStartupError(
                'cannot start: publisher %s failed to start (%s: %s); %s'
                % (publisher.name, type(exc).__name__, exc,
                   hint(publisher))) from exc


PRIVSEP_HINT = ('it needs CAP_SYS_ADMIN, CAP_DAC_OVERRIDE, '
                'CAP_DAC_READ_SEARCH, CAP_FOWNER and CAP_CHOWN in the '
                'capability bounding set, as in '
                'etc/systemd/scaph-openstack-agent.service')


def check_privsep(get_caps=None):
    """As root the worker forks the privsep daemon, which keeps only its
    capabilities and fails if this process lacks one (a unit's
    CapabilityBoundingSet, a container): told here, before the fork."""
    if os.geteuid() != 0:
        return
    wanted = set(privsep.sys_admin.conf.capabilities)
    _effective, permitted, _inheritable = (
        get_caps or privsep_caps.get_caps)()
    missing = sorted(privsep_caps.CAPS_BYVALUE.get(c, str(c))
                     for c in wanted - set(permitted))
    if missing:
        raise FatalStartupError(
            'cannot start: the privsep daemon cannot get %s: %s'
            % (', '.join(missing), PRIVSEP_HINT))


def start_privsep(reports=None):
    worker = os.getpid()
    try:
        privsep.start_if_root()
    except Exception as exc:
        fatal = FatalStartupError(
            'cannot start: the privsep daemon did not start (%s: %s); %s'
            % (type(exc).__name__, exc, PRIVSEP_HINT))
        if os.getpid() != worker:
            _privsep_child_failed(fatal, worker, reports)
        raise fatal from exc


def _privsep_child_failed(fatal, worker, reports):
    """oslo.privsep's forked daemon failed to set itself up, and the
    exception escaped its fork branch: this process is that daemon, not
    the worker, which waits for its answer. Say it once, have the master
    stop the service, and stay until the worker is gone (closing the
    socket now would kill the worker's reader thread with a traceback)."""
    report_fatal(fatal, log=False)
    if reports is not None:
        reports.fatal(fatal.code)
    deadline = time.monotonic() + 60
    while os.getppid() == worker and time.monotonic() < deadline:
        time.sleep(0.1)
    os._exit(fatal.code)


def sd_notify(address, message):
    """sd_notify(3): one datagram to systemd's NOTIFY_SOCKET."""
    if not address:
        return False
    if address.startswith('@'):
        address = '\0' + address[1:]   # abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            sock.sendall(message)
        except OSError as exc:
            LOG.warning('Cannot notify systemd at %s: %s', address, exc)
            return False
    return True


class StartupReports:
    """How the worker tells the master how its start went.

    oslo.service's threading backend (cotyledon) runs the service in a
    worker process that it respawns whenever it exits, and its master
    tells systemd READY=1 as soon as it runs, before the worker exists.
    Through this pipe, made before the fork (messages of a few bytes, so
    each write is atomic), the worker says ``ready`` after its first
    published tick, and only then does the master send READY=1; or
    ``fatal CODE``, and the master stops the whole service and exits CODE
    instead of respawning a worker that would fail the same way. After a
    fatal report the worker waits for the master's SIGTERM: exiting by
    itself would race the respawn.
    """

    def __init__(self, notify_socket=None):
        self._read_fd, self._write_fd = os.pipe()
        self.notify_socket = notify_socket
        self.exit_code = None
        self.notified = False

    # -- in the worker
    def ready(self):
        self._send(b'ready')

    def fatal(self, code):
        self._send(b'fatal %d' % code)

    def _send(self, message):
        os.write(self._write_fd, message + b'\n')

    # -- in the master
    def watch(self, launcher):
        thread = threading.Thread(target=self._watch, args=(launcher,),
                                  name='startup-reports', daemon=True)
        thread.start()
        return thread

    def _watch(self, launcher):
        pending = b''
        while True:
            chunk = os.read(self._read_fd, 512)
            if not chunk:
                return
            *lines, pending = (pending + chunk).split(b'\n')
            for line in lines:
                self.handle(line, launcher)

    def handle(self, line, launcher):
        word, _, argument = line.decode(errors='replace').partition(' ')
        if word == 'ready' and not self.notified and self.exit_code is None:
            self.notified = True
            LOG.info('The first tick is published: telling systemd the '
                     'agent is ready')
            sd_notify(self.notify_socket, b'READY=1')
        elif word == 'fatal' and self.exit_code is None:
            try:
                self.exit_code = int(argument) or EXIT_FATAL
            except ValueError:
                self.exit_code = EXIT_FATAL
            LOG.error('The agent worker cannot start: stopping the service '
                      '(exit status %d) instead of respawning it',
                      self.exit_code)
            launcher.stop()


def remove_stale_temporaries(conf):
    """A kill -9 between write and rename leaves a temporary file, in a
    guest's share too: clear those of dead writers before the first tick."""
    places = ((conf.agent.state_dir, False),
              (os.path.dirname(conf.snapshot.path), False),
              (conf.share.work_dir, True))
    for directory, recursive in places:
        if os.path.isdir(directory):
            removed = fileutil.remove_stale_temporaries(directory, recursive)
            if removed:
                LOG.info('Removed %d temporary files a previous agent left '
                         'in %s', removed, directory)


def stale_after_s(conf):
    """When readers must call the snapshot stale: a few write periods,
    never less than the absolute floor (one slow tick must not cost a
    whole Ceilometer cycle)."""
    period = max(conf.agent.interval, conf.snapshot.min_interval)
    return max(period * conf.snapshot.stale_after,
               conf.snapshot.stale_after_min)


def build_ticker(conf):
    """The Ticker with every plugin loaded; raises on unusable config."""
    publishers = plugins.publishers(conf)
    start_publishers(publishers)
    return tick.Ticker(
        energy=plugins.energy_source(conf),
        inventory=plugins.load(plugins.INVENTORY, conf.agent.inventory,
                               conf),
        attribution=plugins.load(plugins.ATTRIBUTION,
                                 conf.agent.attribution, conf),
        ledger=ledger.Ledger.load(ledger_path(conf)),
        publishers=publishers,
        ledger_path=ledger_path(conf),
        host=conf.agent.host or socket.gethostname(),
        configured_interval_s=conf.agent.interval,
        stale_after_s=stale_after_s(conf),
        retention_s=conf.agent.retention,
        proc_stat_path=conf.agent.proc_stat_path,
        topology=topology.read_topology(conf.agent.cpu_topology_path),
        max_zone_power_w=conf.energy.max_zone_power,
        handoff_desk=handoffs.HandoffDesk(conf.share.work_dir,
                                          conf.share.resolution_uj,
                                          retention_s=conf.agent.retention),
        accounting=carbon.from_conf(conf))


class AgentService(service.Service):

    def __init__(self, conf, reports=None):
        super().__init__()
        self.conf = conf
        self.reports = reports      # StartupReports, to the master
        self.ticker = None
        self.timer = None
        self.sampler = None
        self.ready = False
        self._sampler_stop = threading.Event()

    def start(self):
        super().start()
        LOG.info('Agent worker %d starting', os.getpid())
        try:
            self._start()
        except Exception as exc:
            self._start_failed(exc)

    def _start_failed(self, exc):
        """Said once, in one line; the master stops the whole service.
        Without a master (no StartupReports) the error is raised."""
        fatal = as_fatal(exc)
        if fatal is None:
            LOG.exception('Unexpected error while starting')
            fatal = FatalStartupError(
                'cannot start: unexpected %s: %s (its traceback is in the '
                'log)' % (type(exc).__name__, exc))
        report_fatal(fatal)
        if self.reports is None:
            raise fatal
        self.reports.fatal(fatal.code)

    def _start(self):
        start_privsep(self.reports)
        self.ticker = build_ticker(self.conf)
        # After the publishers started: the share tmpfs is mounted now.
        remove_stale_temporaries(self.conf)
        LOG.info('Agent ticking every %.1fs: energy=%s inventory=%s '
                 'publishers=%s', self.conf.agent.interval,
                 self.ticker.energy.name, self.ticker.inventory.name,
                 ','.join(p.name for p in self.ticker.publishers))
        self.timer = loopingcall.FixedIntervalLoopingCall(self._tick)
        self.timer.start(interval=self.conf.agent.interval,
                         initial_delay=0, stop_on_exception=False)
        self.sampler = threading.Thread(target=self._sample,
                                        name='energy-sampler', daemon=True)
        self.sampler.start()

    def _sample(self):
        period = self.conf.energy.sample_interval or self.conf.agent.interval
        while not self._sampler_stop.wait(period):
            self.ticker.sample_if_due(period)

    def _tick(self):
        try:
            report = self.ticker.tick()
        except Exception:  # a tick may fail; the agent must not
            LOG.exception('Tick failed')
            return
        if report is not None and not self.ready:
            self._report_ready()

    def _report_ready(self):
        """After the first tick that every publisher took (the snapshot
        written, the shares mounted and written): READY=1, through the
        master."""
        states = self.ticker.states
        if any(states.is_failing('publish-' + p.name)
               for p in self.ticker.publishers):
            return
        self.ready = True
        if self.reports is not None:
            self.reports.ready()

    def stop(self, graceful=False):
        self._sampler_stop.set()
        if self.timer is not None:
            self.timer.stop()
            self.timer.wait()   # the tick in flight finishes its writes
        if self.ticker is not None:
            # What was counted since the last publication is kept: the
            # next start continues from it (never below what was shown).
            self.ticker.persist()
            for publisher in self.ticker.publishers:
                publisher.stop()
            self.ticker.inventory.close()
        super().stop(graceful)


def prepare(argv, conf=scaph_conf.CONF):
    scaph_conf.register_opts(conf)
    logging.register_options(conf)
    conf(argv, project='scaph-openstack')
    logging.setup(conf, 'scaph-openstack')
    return conf


def main(argv=None):
    try:
        conf = prepare(sys.argv[1:] if argv is None else argv)
    except (cfg.Error, OSError) as exc:
        return report_fatal(FatalStartupError(
            'unusable configuration: %s' % exc), log=False)
    # It registers oslo.service's options, checked with the others. fork,
    # not spawn: the worker inherits the parsed configuration and the
    # StartupReports pipe (oslo.service 4.8 defaults to fork too, 4.5 to
    # 4.7 preferred spawn).
    launcher = service.ServiceLauncher(conf, restart_method='mutate',
                                       start_method='fork')
    try:
        check_startup(conf)
    except FatalStartupError as exc:
        return report_fatal(exc)
    except Exception as exc:
        LOG.exception('Unexpected error while checking the configuration')
        return report_fatal(FatalStartupError(
            'cannot start: unexpected %s: %s (its traceback is in the log)'
            % (type(exc).__name__, exc)))
    # cotyledon's master would send READY=1 as soon as it runs, before the
    # worker exists: the master sends it when the worker says it is ready.
    reports = StartupReports(os.environ.pop('NOTIFY_SOCKET', None))
    launcher.launch_service(AgentService(conf, reports))
    reports.watch(launcher)
    status = launcher.wait()
    if reports.exit_code is not None:
        return reports.exit_code
    # Only a fatal startup error may say EXIT_FATAL (systemd does not
    # restart on it): not the launcher's own unexpected errors.
    return 1 if status == EXIT_FATAL else status


if __name__ == '__main__':
    sys.exit(main())
