"""The demo behind tools/demo: every part real, on this one machine.

libvirtd, a software-emulated guest carrying Nova-style metadata, the
agent (``scaph-openstack-agent``), the share attached with
``scaph-openstack attach`` (what the Nova hook does for Nova instances),
the guest mounting it with the cloud-init snippet's options and reading
its own energy_uj, and ``ceilometer-polling`` publishing our meters
through its Prometheus exporter and, over RabbitMQ, to
``ceilometer-agent-notification`` and its gnocchi:// publisher, into a real
Gnocchi (tools/gnocchi-stack), which the tenant's ``openstack server energy
show`` and ``openstack energy usage`` read at the end. It reuses the
functional tests' launchers (tests/functional/helpers) so the demo and the
tests cannot drift apart.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib

import yaml

from scaph_openstack import snapshot as snapshot_mod
from tests.functional.helpers import agent as agent_helper
from tests.functional.helpers import ceilometer as ceilometer_helper
from tests.functional.helpers import gnocchi as gnocchi_helper
from tests.functional.helpers import guest as guest_helper
from tests.functional.helpers import libvirtd
from tests.functional.helpers import rabbitmq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLOUD_INIT = os.path.join(ROOT, 'etc', 'cloud-init', 'scaphandre-share.yaml')
# A new project each run: Gnocchi (tools/gnocchi-stack) keeps what earlier
# runs sent, and the tenant's view at the end is this run's.
PROJECT = (uuidlib.uuid4().hex, 'demo-project')
USER = (uuidlib.uuid4().hex, 'demo-user')
# A static example value for [accounting] carbon_intensity (g CO2e/kWh),
# said as such: an operator sets their grid's (doc/carbon.md).
CARBON_INTENSITY = 250.0


def say(message):
    print('[demo] %s' % message, flush=True)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog='tools/demo')
    parser.add_argument('--duration', type=float, default=0,
                        help='stop after this many seconds (default: run '
                             'until Ctrl-C)')
    parser.add_argument('--interval', type=float, default=1.0,
                        help='agent tick interval (s)')
    parser.add_argument('--refresh', type=float, default=3.0,
                        help='seconds between two table rows')
    parser.add_argument('--keep', action='store_true',
                        help='leave the work directory for inspection')
    return parser.parse_args(argv)


def cloud_init_mount():
    with open(CLOUD_INIT) as f:
        tag, mountpoint, fstype, options = yaml.safe_load(f)['mounts'][0][:4]
    return {'tag': tag, 'mnt': mountpoint, 'fstype': fstype,
            'opts': options}


def agent_sections(workdir, interval):
    return {
        'agent': {'interval': interval, 'publishers': 'snapshot,share'},
        # auto: real RAPL when readable, else simulated with a WARNING
        'energy': {'source': 'auto'},
        'attribution': {'idle_policy': 'vcpus'},
        'accounting': {'carbon_intensity': CARBON_INTENSITY},
        'share': {'work_dir': os.path.join(workdir, 'shares'),
                  'export_dir': os.path.join(workdir, 'export'),
                  'manage_mounts': True, 'tmpfs_size': '4m',
                  # a demo shows every update; production keeps 10 s / 1 J
                  'min_interval': interval, 'resolution_uj': 1000},
    }


def attach(config_path):
    def run(guest):
        result = subprocess.run(
            [sys.executable, '-m', 'scaph_openstack.cli', 'attach',
             guest.name, '--uri', 'qemu:///system', '--config-file',
             config_path], capture_output=True, text=True, timeout=60)
        if result.returncode:
            raise RuntimeError('attach failed: %s' % result.stderr)
        say('scaph-openstack attach %s: %s' % (
            guest.name, result.stdout.splitlines()[0]))
    return run


class GuestMeter:
    """Power the guest itself computes from its own energy_uj reads."""

    def __init__(self, guest):
        self.guest = guest

    def latest(self):
        reads = self.guest.reads()
        if not reads:
            return None, None
        last = reads[-1]
        joules = last.int() / 1e6
        for earlier in reversed(reads[:-1]):
            if last.uptime - earlier.uptime >= 3 and \
                    last.int() != earlier.int():
                return joules, (last.int() - earlier.int()) / 1e6 / (
                    last.uptime - earlier.uptime)
        return joules, None


def fmt(value, pattern='%.2f'):
    return '-' if value is None else pattern % value


class Table:
    HEADER = ('time', 'source', 'host W', 'VM W', 'VM J (host)',
              'VM J (guest)', 'VM W (guest)', 'ceilo J', 'ceilo W')

    def __init__(self):
        self.widths = [max(len(h), 11) for h in self.HEADER]
        self.rows = 0

    def print_row(self, cells):
        if self.rows % 15 == 0:
            print(' | '.join(h.rjust(w) for h, w in zip(
                self.HEADER, self.widths, strict=True)))
        print(' | '.join(str(c).rjust(w) for c, w in zip(
            cells, self.widths, strict=True)), flush=True)
        self.rows += 1


def row(started, agent, guest, meter, polling):
    snap = agent.read_snapshot(check_stale=False)
    vm = next((i for i in (snap.instances if snap else ())
               if i['uuid'] == guest.uuid), None)
    guest_j, guest_w = meter.latest()
    ceilo_j = polling.series('energy.instance', guest.uuid)
    ceilo_w = polling.series('power.instance', guest.uuid)
    return (
        '%6.0fs' % (time.monotonic() - started),
        snap.source.upper() if snap else '-',
        fmt(snap.host_totals['power_w'] if snap else None),
        fmt(vm['power_w'] if vm else None),
        fmt(vm['total_uj'] / 1e6 if vm else None),
        fmt(guest_j), fmt(guest_w),
        fmt(ceilo_j[1] if ceilo_j else None),
        fmt(ceilo_w[1] if ceilo_w else None))


def run(args, workdir, stack):
    say('starting libvirtd')
    libvirtd.ensure_libvirtd()
    say('building (or reusing) the tiny guest image')
    guest_helper.build_image()
    say('starting scaph-openstack-agent (energy source: auto)')
    agent = agent_helper.Agent(workdir, agent_sections(workdir,
                                                       args.interval))
    stack.append(agent)
    agent.start()
    snap = agent.wait_for_snapshot(timeout=60)
    if snap.source == 'simulated':
        say('!!! NO READABLE RAPL ON THIS HOST: ENERGY IS SIMULATED '
            '(linear CPU model, doc/design.md). Every output says '
            'source=simulated. !!!')
    else:
        say('energy source: real RAPL')
    uuid = str(uuidlib.uuid4())
    guest = guest_helper.Guest(
        uuid=uuid, label='demo', before_create=attach(agent.config_path),
        cmdline_params=dict(cloud_init_mount(), period=1),
        nova_metadata=guest_helper.nova_metadata_xml(
            uuid, 'demo-vm', PROJECT[0], PROJECT[1], USER[0], USER[1]))
    stack.append(guest)
    say('booting guest %s (software emulation, ~5-10 s)' % guest.uuid)
    guest.start()
    guest.wait_for(r'SCAPH-MOUNT ok', timeout=180)
    say('guest mounted its share read-only at %s' % cloud_init_mount()['mnt'])
    gnocchi = start_gnocchi(workdir, stack)
    say('starting ceilometer-polling (its Prometheus exporter, and '
        'notifications to ceilometer-agent-notification -> Gnocchi)')
    polling = ceilometer_helper.ExporterPolling(
        workdir, agent.snapshot_path, transport_url=gnocchi.broker_url)
    stack.append(polling)
    polling.start()
    say('columns: host/VM power from the agent snapshot; what the guest '
        'reads in /var/scaphandre; what Ceilometer publishes')
    table = Table()
    started = time.monotonic()
    meter = GuestMeter(guest)
    while not args.duration or time.monotonic() - started < args.duration:
        agent.check_alive()
        table.print_row(row(started, agent, guest, meter, polling))
        time.sleep(args.refresh)
    print_summary(agent, guest, polling)
    # No new samples while the tenant reads (the demo polls every second;
    # a cloud every 5 or 10 minutes): one answer, one set of samples.
    polling.stop(timeout=20)
    time.sleep(3)     # the notification agent's last batch to Gnocchi
    print_tenant_view(gnocchi, guest)


class Stopper:
    """What the demo started that is not a process of its own (RabbitMQ,
    the Gnocchi stack), stopped at the end like the rest."""

    def __init__(self, name, stop):
        self.name, self._stop = name, stop

    def stop(self, timeout=20):
        self._stop()

    def __repr__(self):
        return self.name


class DemoGnocchi:
    def __init__(self, stack, broker_url):
        self.stack, self.broker_url = stack, broker_url


def start_gnocchi(workdir, stack):
    """RabbitMQ, Gnocchi (PostgreSQL, gnocchi-api, metricd), Ceilometer's
    and our resource types, and the notification agent."""
    say('starting RabbitMQ and Gnocchi (PostgreSQL, gnocchi-api, '
        'gnocchi-metricd: tools/gnocchi-stack)')
    broker = rabbitmq.ensure_rabbitmq()
    if broker.started:
        stack.append(Stopper('RabbitMQ', rabbitmq.stop_rabbitmq))
    if not gnocchi_helper.stack_running():
        stack.append(Stopper('Gnocchi', gnocchi_helper.stop_stack))
    gnocchi = gnocchi_helper.start_stack()
    gnocchi.ceilometer_upgrade(workdir)
    for line in gnocchi.telemetry_setup().splitlines():
        say('scaph-openstack telemetry-setup: %s' % ' '.join(line.split()))
    notification = gnocchi_helper.notification_agent(
        os.path.join(workdir, 'notification'), broker.url, gnocchi)
    stack.append(notification)
    notification.start()
    return DemoGnocchi(gnocchi, broker.url)


def print_tenant_view(gnocchi, guest):
    """What the demo project's member sees with the openstack command
    (their own Keystone session in a cloud; Gnocchi's identity headers
    here, doc/cli.md)."""
    openstack = agent_helper.venv_bin('openstack')
    auth = ['--os-auth-type', 'gnocchi-noauth', '--os-user-id', USER[0],
            '--os-project-id', PROJECT[0], '--os-roles', 'member',
            '--os-endpoint', gnocchi.stack.endpoint]
    # The usage table with its main columns (all of them: doc/cli.md).
    columns = ['Name', 'Source', 'Energy (kWh)', 'Average (W)',
               'Average over', 'Dynamic (kWh)', 'Idle (kWh)',
               'Carbon (g CO2e)']
    for command in (['server', 'energy', 'show', guest.uuid],
                    ['energy', 'usage'] + [arg for column in columns
                                           for arg in ('-c', column)]):
        say('as the tenant: openstack %s' % ' '.join(
            "'%s'" % arg if ' ' in arg else arg for arg in command))
        result = subprocess.run([openstack, *auth, *command],
                                capture_output=True, text=True, timeout=120)
        print(result.stdout, end='', flush=True)
        if result.returncode:
            say('openstack %s failed: %s' % (' '.join(command),
                                             result.stderr.strip()[-500:]))


def print_summary(agent, guest, polling):
    snap = agent.read_snapshot(check_stale=False)
    say('scaph-openstack status:')
    subprocess.run([sys.executable, '-m', 'scaph_openstack.cli', 'status',
                    '--snapshot', agent.snapshot_path])
    reads = guest.reads()
    if reads:
        say('guest last read: intel-rapl:0/energy_uj=%d' % reads[-1].int())
    for name, labels, value in polling.ours():
        if labels.get('resource') == guest.uuid:
            say('ceilometer %s{project=%s, user=%s} = %s' % (
                name, labels.get('project'), labels.get('user'), value))
    if snap is not None and snap.source == 'simulated':
        say('reminder: these numbers are SIMULATED (no RAPL here)')


def cleanup(stack, workdir, keep):
    for item in reversed(stack):
        try:
            if isinstance(item, guest_helper.Guest):
                item.cleanup()
            else:
                item.stop(timeout=20)
        except Exception as exc:  # clean up the rest whatever happens
            say('cleanup of %r: %s' % (item, exc))
    for sub in ('export', 'shares'):
        path = os.path.join(workdir, sub)
        subprocess.run(['umount', path], capture_output=True)
    if keep:
        say('work directory kept: %s' % workdir)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    say('stopped and cleaned up')


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    workdir = tempfile.mkdtemp(prefix='scaph-demo-')
    stack = []
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(130))
    try:
        run(args, workdir, stack)
        return 0
    except KeyboardInterrupt:
        say('interrupted')
        return 0
    except snapshot_mod.SnapshotError as exc:
        say('error: %s' % exc)
        return 1
    finally:
        cleanup(stack, workdir, args.keep)


if __name__ == '__main__':
    sys.exit(main())
