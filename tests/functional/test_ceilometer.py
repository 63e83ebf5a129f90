"""The real Ceilometer agents polling our meters from the real agent.

A minimal QEMU guest carrying Nova's libvirt metadata runs under the real
libvirtd; scaph-openstack-agent (simulated energy) writes its snapshot;
ceilometer-polling --polling-namespaces compute loads our discovery and
pollsters from their entry points. What is checked:

1. Ceilometer's own Prometheus exporter shows the instance's energy (and
   its dynamic and idle parts) and power with Ceilometer's labels and
   exactly the snapshot's values, with our discovery and with
   Ceilometer's local_instances; once the agent is killed, no power (no
   new period);
2. a change of energy source (simulated, then a fixture RAPL tree) starts
   a new epoch: the exporter shows counters that started again from zero;
3. samples travel as notifications over a loopback RabbitMQ to
   ceilometer-agent-notification, whose pipeline writes them to a file,
   with the idle estimate and epoch in their metadata, and power.instance
   is the energy.instance increase over the time between the two polls'
   snapshots (recorded from the agent's snapshot file);
4. an agent paused for longer than the staleness its snapshot declares,
   but not longer than [scaphandre] stale_after_min, does not stop the
   samples; a stopped agent does, with one warning in the log.

Skipped where this cannot run (not root, no libvirtd or RabbitMQ); with
CI=true that is a failure instead. Every process is started in its own
process group and killed on the way out, whatever happens.
"""

import datetime
import json
import os
import shutil
import signal
import threading
import time
import uuid
import xml.sax.saxutils

import pytest
import yaml

from tests.functional.helpers import agent as agentlib
from tests.functional.helpers import ceilometer as ceilolib
from tests.functional.helpers import guest as guestlib
from tests.functional.helpers import libvirtd
from tests.functional.helpers import rabbitmq
from tests.functional.helpers import rapl
from tests.functional.helpers import require

METERS = ceilolib.METERS
PARTS = {'energy.instance.dynamic': 'dynamic_uj',
         'energy.instance.idle': 'idle_uj'}
# Configured idle power of the simulated zones, split by vCPUs: the guest
# (1 vCPU) is charged an idle share as well as its dynamic energy.
IDLE_POWER = {'package-0': 10.0, 'dram-0': 1.5}
NOVA_NS = 'http://openstack.org/xmlns/libvirt/nova/1.1'
POLL_INTERVAL = ceilolib.POLL_INTERVAL


def wait_until(check, timeout, what, interval=0.25):
    """check()'s first truthy result within ``timeout`` seconds; ``what``
    (a string, or a callable for logs read only on failure) says what
    was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail('timed out after %ss waiting for %s' % (
                timeout, what() if callable(what) else what))
        time.sleep(interval)


# -- the guest ------------------------------------------------------------

class Instance:
    """What Nova would have put in the domain's metadata."""

    def __init__(self):
        self.uuid = str(uuid.uuid4())
        self.name = 'scaph-test-ceilo-%s' % self.uuid[:8]
        self.display_name = 'ceilo-vm-%s' % self.uuid[:8]
        self.project_id = uuid.uuid4().hex
        self.user_id = uuid.uuid4().hex
        self.flavor = 'm1.scaph-test'


def domain_xml(instance, owner_tag, domain_type='qemu', name=None):
    """A 64 MiB TCG guest without disk or kernel: SeaBIOS finds nothing to
    boot and keeps the vCPU busy enough to be a running instance."""
    esc = xml.sax.saxutils.escape
    return '''<domain type='{type}'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <description>{owner}</description>
  <metadata>
    <nova:instance xmlns:nova="{ns}">
      <nova:package version="34.0.0"/>
      <nova:name>{display}</nova:name>
      <nova:flavor name="{flavor}" id="1">
        <nova:memory>64</nova:memory>
        <nova:disk>0</nova:disk>
        <nova:swap>0</nova:swap>
        <nova:ephemeral>0</nova:ephemeral>
        <nova:vcpus>1</nova:vcpus>
      </nova:flavor>
      <nova:owner>
        <nova:user uuid="{user}">scaph-test-user</nova:user>
        <nova:project uuid="{project}">scaph-test-project</nova:project>
      </nova:owner>
    </nova:instance>
  </metadata>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <on_crash>destroy</on_crash>
  <devices><emulator>{qemu}</emulator></devices>
</domain>'''.format(type=domain_type, name=name or instance.name,
                    uuid=instance.uuid,
                    owner=esc(owner_tag), ns=NOVA_NS,
                    display=esc(instance.display_name),
                    flavor=esc(instance.flavor), user=instance.user_id,
                    project=instance.project_id,
                    qemu=shutil.which('qemu-system-x86_64'))


def _owner_tag():
    # guest.reap_orphans() of concurrent test runs destroys scaph-test-
    # domains whose description does not name a live owner process.
    return guestlib._owner_tag()


def _destroy_undefine(uri, uuid_string, attempts=3):
    """Destroy and undefine the guest, even when libvirtd is being
    restarted by a concurrent test (its reaper is the last resort)."""
    import libvirt
    for _ in range(attempts):
        try:
            conn = libvirt.open(uri)
        except libvirt.libvirtError:
            time.sleep(2)
            try:
                libvirtd.ensure_libvirtd(uri)
            except (libvirtd.LibvirtdError, OSError):
                pass
            continue
        try:
            dom = conn.lookupByUUIDString(uuid_string)
            if dom.isActive():
                dom.destroy()
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
            return
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return
        finally:
            conn.close()


@pytest.fixture(scope='module')
def libvirt_uri():
    require(os.geteuid() == 0, 'libvirtd and QEMU guests need root')
    try:
        import libvirt  # noqa: F401
    except ImportError:
        require(False, 'libvirt-python is not installed')
    require(shutil.which('qemu-system-x86_64'),
            'qemu-system-x86_64 is not installed (tools/install-deps)')
    try:
        libvirtd.ensure_libvirtd()
    except (libvirtd.LibvirtdError, OSError) as exc:
        require(False, 'libvirtd cannot be started: %s' % exc)
    return libvirtd.DEFAULT_URI


@pytest.fixture(scope='module')
def instance(libvirt_uri):
    import libvirt
    inst = Instance()
    xml = domain_xml(inst, _owner_tag())
    try:
        for attempt in range(3):
            # Other tests may restart libvirtd under us: try again.
            try:
                conn = libvirt.open(libvirt_uri)
                try:
                    conn.defineXML(xml).create()
                finally:
                    conn.close()
                break
            except libvirt.libvirtError:
                if attempt == 2:
                    raise
                time.sleep(2)
        yield inst
    finally:
        _destroy_undefine(libvirt_uri, inst.uuid)


# -- the processes --------------------------------------------------------

def start_agent(tmp_path, energy=None, **snapshot_opts):
    """The agent on simulated energy (or ``energy``, its [energy]
    options), its ledger in tmp_path: a second agent there continues the
    first one's counters."""
    agent = agentlib.Agent(tmp_path, {
        'agent': {'interval': 1},
        'energy': energy or {'source': 'simulated'},
        'simulated': {'dram_watts': 3.0},
        'attribution': {'idle_policy': 'vcpus', 'idle_power': IDLE_POWER},
        'snapshot': snapshot_opts,
    })
    agent.start()
    return agent


def running(instance, charged=False):
    """Snapshot predicate: the instance runs (and was charged both idle
    and dynamic energy)."""
    return lambda snap: any(
        i['uuid'] == instance.uuid and i['running']
        and (not charged or (i['total_uj'] > 0 and i.get('idle_uj', 0) > 0
                             and i.get('dynamic_uj', 0) > 0))
        for i in snap.instances)


@pytest.fixture
def processes():
    """Everything a test starts, stopped (by process group) at the end."""
    started = []
    yield started
    for proc in reversed(started):
        proc.stop(timeout=15)


def zone_resource(snap, zone='package-0'):
    return '%s-%s' % (snap.host, zone)


def instance_doc(snap, instance):
    return next(i for i in snap.instances if i['uuid'] == instance.uuid)


# -- 1. Prometheus exporter ------------------------------------------------

def test_exporter_shows_the_snapshot(tmp_path, instance, processes):
    # A long stale_after keeps the frozen snapshot usable after kill -9.
    agent = start_agent(tmp_path, stale_after=30)
    processes.append(agent)
    agent.wait_for_snapshot(running(instance))
    polling = ceilolib.ExporterPolling(tmp_path, agent.snapshot_path)
    processes.append(polling.start())

    labels, _ = wait_until(
        lambda: polling.series('energy.instance', instance.uuid), 60,
        lambda: 'energy.instance in the exporter:\n' + polling.tail())
    assert labels['project'] == instance.project_id
    assert labels['user'] == instance.user_id
    assert labels['unit'] == 'J'
    assert labels['type'] == 'instance'
    assert labels['flavor_name'] == instance.flavor
    assert labels['resource_name'] == '%s:%s' % (instance.display_name,
                                                 instance.name)
    energy_labels = labels
    for meter, part in (('energy.instance.dynamic', 'dynamic'),
                        ('energy.instance.idle', 'idle')):
        labels, _ = wait_until(
            lambda meter=meter: polling.series(meter, instance.uuid), 30,
            lambda meter=meter: meter + ' in the exporter:\n' +
            polling.tail())
        # Ceilometer names the series by the third part of the meter
        # name; every other label is energy.instance's.
        assert labels == dict(energy_labels, energy=part, counter=meter)
    labels, _ = wait_until(
        lambda: polling.series('power.instance', instance.uuid), 30,
        'power.instance in the exporter')
    assert labels['unit'] == 'W'
    assert labels['project'] == instance.project_id

    snap = agent.read_snapshot()
    first = wait_until(lambda: polling.series(
        'energy.host.zone', zone_resource(snap)), 30, 'energy.host.zone')[1]
    # Live values: the host counter grows while the agent runs.
    wait_until(lambda: (polling.series('energy.host.zone',
                                       zone_resource(snap)) or
                        (None, first))[1] > first, 30,
               'energy.host.zone to grow')

    assert_shows_frozen_snapshot(agent, polling, instance)


def assert_shows_frozen_snapshot(agent, polling, instance, host=True):
    """kill -9 the agent once the guest has been charged something: from
    the next polling cycle on, the exporter must show exactly the values
    of the snapshot it left (still fresh: the agent has a long
    stale_after)."""
    agent.wait_for_snapshot(running(instance, charged=True))
    agent.kill()
    frozen = agent.read_snapshot()
    assert frozen is not None, 'snapshot went stale too early'
    doc = instance_doc(frozen, instance)
    # Both parts are there, different, and add up in the agent's µJ.
    assert doc['dynamic_uj'] + doc['idle_uj'] == doc['total_uj']
    assert doc['idle_uj'] > 0 and doc['dynamic_uj'] > 0
    assert doc['idle_uj'] != doc['dynamic_uj']
    expected = {
        ('energy.instance', instance.uuid): doc['total_uj'] / 1e6,
        # The average over the polling period: the frozen snapshot, read
        # again and again, has no new period, hence no sample (and the
        # exporter drops the series), never the agent's last power_w.
        ('power.instance', instance.uuid): None,
    }
    expected.update({(meter, instance.uuid): doc[key] / 1e6
                     for meter, key in PARTS.items()})
    if host:
        zone = next(z for z in frozen.zones if z['name'] == 'package-0')
        expected.update({
            ('energy.host.zone', zone_resource(frozen)):
                zone['measured_uj'] / 1e6,
            ('energy.host.unattributed', zone_resource(frozen)):
                (zone['residual_uj'] + zone['unallocated_idle_uj']) / 1e6,
        })

    def shown():
        return {key: (polling.series(*key) or (None, None))[1]
                for key in expected}

    wait_until(lambda: shown() == expected, 20,
               'exporter values == frozen snapshot %s' % expected)


def test_with_ceilometer_local_instances(tmp_path, instance, processes):
    """Our instance pollsters under Ceilometer's own local_instances
    discovery (libvirt_metadata method) in the real ceilometer-polling.

    That discovery reads every domain of its libvirt URI, and asks the
    Nova API (through Keystone, absent here) for the flavor id of any
    domain whose metadata lacks one, which then fails the whole
    discovery. Guests of concurrent test runs may be such domains, so it
    is pointed at libvirt's test driver holding this instance's Nova
    metadata under its UUID (and another domain name, to tell whose
    resources the samples describe); the snapshot comes from the real
    agent watching the real guest.
    """
    node_xml = tmp_path / 'libvirt-test-node.xml'
    node_xml.write_text('<node>%s</node>' % domain_xml(
        instance, 'libvirt test driver copy', domain_type='test',
        name='instance-0000beef'))
    agent = start_agent(tmp_path, stale_after=30)
    processes.append(agent)
    agent.wait_for_snapshot(running(instance))
    polling = ceilolib.ExporterPolling(
        tmp_path, agent.snapshot_path,
        default={'libvirt_uri': 'test://%s' % node_xml},
        sources=[{'name': 'scaph_local', 'discovery': ['local_instances'],
                  'meters': ['energy.instance', 'power.instance',
                             *PARTS]}])
    processes.append(polling.start())

    labels, _ = wait_until(
        lambda: polling.series('energy.instance', instance.uuid), 60,
        lambda: 'energy.instance in the exporter:\n' + polling.tail())
    # Ceilometer's resource: its metadata, with the flavor id from Nova's
    # metadata that the snapshot does not carry.
    assert labels['resource_name'] == '%s:instance-0000beef' % (
        instance.display_name)
    assert labels['flavor_id'] == '1'
    assert labels['project'] == instance.project_id
    assert_shows_frozen_snapshot(agent, polling, instance, host=False)


# -- 2. a new epoch --------------------------------------------------------

def test_new_epoch_restarts_the_counters(tmp_path, instance, processes):
    """simulated -> rapl: the agent starts epoch 2 with every counter at
    zero, and ceilometer-polling shows exactly that snapshot."""
    agent = start_agent(tmp_path, stale_after=30)
    processes.append(agent)
    polling = ceilolib.ExporterPolling(tmp_path, agent.snapshot_path)
    processes.append(polling.start())

    # Enough simulated energy (>= 20 W) that a counter carried over into
    # the new epoch could not pass for the fixture's.
    def simulated_enough(snap):
        package = next(z for z in snap.zones if z['name'] == 'package-0')
        return running(instance, charged=True)(snap) and \
            package['measured_uj'] > 60e6
    old = agent.wait_for_snapshot(simulated_enough, timeout=60)
    assert (old.epoch, old.source) == (1, 'simulated')
    wait_until(lambda: polling.series('energy.instance.idle',
                                      instance.uuid), 60,
               lambda: 'energy.instance.idle in the exporter:\n' +
               polling.tail())
    assert agent.stop(), 'the agent did not stop on SIGTERM'

    # A constant 20 W package and 2 W DRAM: the new epoch's counters can
    # be bounded from its start.
    watts = {'intel-rapl:0': 20.0, 'intel-rapl:0:0': 2.0}
    with rapl.MovingRapl(tmp_path / 'powercap', watts=watts):
        agent = start_agent(tmp_path, energy={
            'source': 'rapl', 'powercap_path': str(tmp_path / 'powercap'),
            'use_privsep': False}, stale_after=30)
        processes.append(agent)
        new = agent.wait_for_snapshot(
            lambda s: s.epoch == 2 and running(instance, charged=True)(s),
            timeout=60)
        assert new.source == 'rapl'
        assert new.epoch_started >= old.time
        assert_shows_frozen_snapshot(agent, polling, instance)
    frozen = agent.read_snapshot(check_stale=False)
    assert frozen.epoch == 2
    elapsed = frozen.time - frozen.epoch_started
    zones = {z['name']: z for z in frozen.zones}
    for zone, name in (('package-0', 'intel-rapl:0'),
                       ('dram-0', 'intel-rapl:0:0')):
        # From zero at the epoch's start: at most the fixture's power over
        # the epoch (and a tick's slack), nothing of the simulated epoch.
        assert zones[zone]['measured_uj'] / 1e6 <= \
            watts[name] * (elapsed + 1.5), (zone, elapsed)
    # (Read again: a scrape during a polling cycle can miss a series.)
    shown = wait_until(lambda: polling.series(
        'energy.host.zone', zone_resource(frozen)), 10, 'energy.host.zone')[1]
    assert shown == zones['package-0']['measured_uj'] / 1e6
    package_before = next(z for z in old.zones if z['name'] == 'package-0')
    assert shown < package_before['measured_uj'] / 1e6


# -- 3. notifications through RabbitMQ -------------------------------------

@pytest.fixture(scope='module')
def broker():
    reason = rabbitmq.unavailable_reason()
    require(reason is None, 'cannot run RabbitMQ here: %s' % reason)
    try:
        found = rabbitmq.ensure_rabbitmq()
    except (rabbitmq.RabbitMQError, OSError) as exc:
        require(False, 'RabbitMQ cannot be started: %s' % exc)
    yield found
    if found.started:
        rabbitmq.stop_rabbitmq()


def pipeline_yaml(tmp_path, out_path):
    cfg = {'sources': [{'name': 'scaph_source', 'meters': list(METERS),
                        'sinks': ['scaph_file']}],
           'sinks': [{'name': 'scaph_file',
                      'publishers': ['file://%s?json' % out_path]}]}
    path = os.path.join(str(tmp_path), 'pipeline.yaml')
    with open(path, 'w') as f:
        yaml.safe_dump(cfg, f)
    return path


def read_samples(path):
    """The file publisher's JSON lines: Sample.as_dict() (name, volume...,
    not the counter_* keys of the notifications)."""
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


class SnapshotRecorder(threading.Thread):
    """Reads the agent's snapshot every 0.1 s while it runs: when each
    value of the instance's total_uj was written (the snapshot's time),
    the truth power.instance is checked against."""

    def __init__(self, agent, instance):
        super().__init__(daemon=True)
        self.agent, self.uuid = agent, instance.uuid
        self.times = {}          # total_uj -> {snapshot time}
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            snap = self.agent.read_snapshot(check_stale=False)
            doc = snap and next((i for i in snap.instances
                                 if i['uuid'] == self.uuid), None)
            if doc is not None:
                self.times.setdefault(doc['total_uj'], set()).add(snap.time)
            self.done.wait(0.1)

    def stop(self):
        self.done.set()
        self.join(5)

    def time_of(self, total_uj):
        """The time of the snapshot that said ``total_uj``, or None when
        not recorded or not one snapshot's."""
        times = self.times.get(total_uj, ())
        return next(iter(times)) if len(times) == 1 else None


def polled_at(s):
    """A sample's timestamp (Ceilometer's, when it polled), in s."""
    stamp = datetime.datetime.fromisoformat(s['timestamp'])
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.timezone.utc)
    return stamp.timestamp()


def assert_power_is_energy_over_the_period(samples, instance, recorder):
    """Each power.instance sample is the energy.instance increase from
    the previous cycle to its own (the two pollsters of a cycle read one
    snapshot, within milliseconds), over the time between the snapshots
    the agent wrote with those counters."""
    def of(name):
        return sorted((polled_at(s), s) for s in samples
                      if s['name'] == name
                      and s['resource_id'] == instance.uuid)
    energy, power = of('energy.instance'), of('power.instance')
    # The first cycle has no period: no power.
    assert power[0][0] > energy[0][0] + POLL_INTERVAL / 2, (energy, power)
    checked = 0
    for at, p in power:
        k = min(range(len(energy)), key=lambda i: abs(energy[i][0] - at))
        assert abs(energy[k][0] - at) < POLL_INTERVAL / 2, (at, energy)
        assert k > 0, 'power.instance on the first cycle: %s' % p
        before, after = (round(energy[i][1]['volume'] * 1e6)
                         for i in (k - 1, k))
        period_s = p['resource_metadata']['period_s']
        assert (p['type'], p['unit']) == ('gauge', 'W')
        assert (p['project_id'], p['user_id']) == (instance.project_id,
                                                   instance.user_id)
        assert p['volume'] * period_s == pytest.approx(
            (after - before) / 1e6, rel=1e-6, abs=1e-6), p
        start, end = recorder.time_of(before), recorder.time_of(after)
        if start is None or end is None:
            continue
        assert period_s == pytest.approx(end - start, abs=2e-6)
        assert p['volume'] == pytest.approx(
            (after - before) / 1e6 / (end - start), rel=1e-6)
        assert p['volume'] > 0      # a running guest with an idle share
        checked += 1
    assert checked >= 2, (power, recorder.times)


def test_samples_reach_the_notification_agent(tmp_path, instance, broker,
                                              processes):
    agent = start_agent(tmp_path, stale_after=30)
    processes.append(agent)
    # Charged: a tick has split energy, so every zone has its idle
    # estimate (the baseline tick's snapshot has none yet, and a fast
    # first poll would read it).
    agent.wait_for_snapshot(running(instance, charged=True))
    recorder = SnapshotRecorder(agent, instance)
    recorder.start()

    out = os.path.join(str(tmp_path), 'samples.json')
    notif_dir = tmp_path / 'notification'
    notif_dir.mkdir()
    notif_conf = agentlib.write_config(str(notif_dir / 'ceilometer.conf'), {
        'DEFAULT': {'transport_url': broker.url,
                    'pipeline_cfg_file': pipeline_yaml(notif_dir, out),
                    'log_file': str(notif_dir / 'notification.log')},
        'notification': {'pipelines': 'meter', 'workers': 1},
    })
    notification = agentlib.ManagedProcess(
        [ceilolib.ceilometer_bin('ceilometer-agent-notification'),
         '--config-file', notif_conf], str(notif_dir / 'notification.out'))
    processes.append(notification.start())

    polling = ceilolib.Polling(tmp_path, agent.snapshot_path,
                      polling={'enable_notifications': True},
                      default={'transport_url': broker.url})
    processes.append(polling.start())

    def arrived():
        notification.check_alive()
        polling.check_alive()
        got = {s['name'] for s in read_samples(out)
               if s['resource_id'] == instance.uuid}
        return got >= {'energy.instance', 'power.instance'}

    wait_until(arrived, 90, lambda: 'samples in %s; notification agent '
               'log:\n%s' % (out, notification.tail()))
    samples = read_samples(out)
    energy = [s for s in samples if s['name'] == 'energy.instance'
              and s['resource_id'] == instance.uuid]
    for s in energy:
        assert s['project_id'] == instance.project_id
        assert s['user_id'] == instance.user_id
        assert s['type'] == 'cumulative'
        assert s['unit'] == 'J'
        assert s['resource_metadata']['display_name'] == \
            instance.display_name
        assert s['resource_metadata']['source'] == 'simulated'
    # Cumulative counters never go backwards, and never run ahead of what
    # the agent has written.
    volumes = [s['volume'] for s in energy]
    assert volumes == sorted(volumes)
    snap = agent.read_snapshot(check_stale=False)
    assert snap.epoch == 1   # a new ledger, one source
    now = instance_doc(snap, instance)
    assert volumes[-1] <= now['total_uj'] / 1e6

    # The parts: same resource and owner, and the idle estimate (all
    # zones configured here) and epoch of the snapshot in the metadata
    # of every instance sample.
    wait_until(lambda: {s['name'] for s in read_samples(out)
                        if s['resource_id'] == instance.uuid} >= set(PARTS),
               30, 'energy.instance.dynamic and .idle in %s' % out)
    samples = [s for s in read_samples(out)
               if s['resource_id'] == instance.uuid]
    for meter, key in PARTS.items():
        parts = [s for s in samples if s['name'] == meter]
        for s in parts:
            assert (s['type'], s['unit']) == ('cumulative', 'J')
            assert (s['project_id'], s['user_id']) == (
                instance.project_id, instance.user_id)
        volumes = [s['volume'] for s in parts]
        assert volumes == sorted(volumes)
        assert volumes[-1] <= now[key] / 1e6
    for s in samples:
        md = s['resource_metadata']
        assert (md['idle_estimate'], md['idle_estimate_w'], md['epoch'],
                md['idle_policy']) == (
            'configured', sum(IDLE_POWER.values()), snap.epoch, 'vcpus'), s

    wait_until(lambda: any(s['name'] == 'energy.host.unattributed'
                           for s in read_samples(out)), 30,
               'host meters in %s' % out)
    host = next(s for s in read_samples(out)
                if s['name'] == 'energy.host.zone')
    assert host['project_id'] is None and host['user_id'] is None
    assert host['resource_metadata']['node'] == snap.host
    zones = {s['resource_metadata']['zone']: s['resource_metadata']
             for s in read_samples(out) if s['name'] == 'energy.host.zone'}
    assert {zone: (md['idle_estimate'], md['idle_estimate_w'])
            for zone, md in zones.items()} == {
        zone: ('configured', watts) for zone, watts in IDLE_POWER.items()}

    # power.instance: the average over each polling period.
    wait_until(lambda: sum(s['name'] == 'power.instance'
                           and s['resource_id'] == instance.uuid
                           for s in read_samples(out)) >= 5, 30,
               'five power.instance samples in %s' % out)
    recorder.stop()
    assert_power_is_energy_over_the_period(read_samples(out), instance,
                                           recorder)


# -- 4. staleness -----------------------------------------------------------

# [scaphandre] stale_after_min for the staleness test: above the 3 s the
# agent declares (3 intervals of 1 s, an agent of before issue 10), short
# enough for a test. The default (30 s) is checked by the unit tests.
READER_FLOOR_S = 10
PAUSE_S = 6


def test_stopped_agent_stops_the_samples(tmp_path, instance, processes):
    # Stale after 3 intervals: 3 s. stale_after_min (the agent's floor,
    # issue 10) 1 s: the agent declares 3 s, as agents before it did, so
    # the reader's floor is what this test checks.
    agent = start_agent(tmp_path, stale_after=3, stale_after_min=1)
    processes.append(agent)
    declared = agent.wait_for_snapshot(running(instance)).stale_after_s
    assert declared < PAUSE_S < READER_FLOOR_S, declared
    polling = ceilolib.ExporterPolling(tmp_path, agent.snapshot_path)
    # A second config file, as an operator's ceilometer.conf would say it.
    polling.argv += ['--config-file', agentlib.write_config(
        str(tmp_path / 'scaphandre.conf'),
        {'scaphandre': {'stale_after_min': READER_FLOOR_S}})]
    processes.append(polling.start())
    wait_until(lambda: polling.series('energy.instance', instance.uuid),
               60, lambda: 'energy.instance in the exporter:\n' +
               polling.tail())
    before = len(polling.log_lines())

    # The agent stalls (SIGSTOP) for longer than its snapshot says, not
    # longer than the reader's floor: every polling cycle still publishes.
    paused = time.monotonic()
    os.killpg(agent.pid, signal.SIGSTOP)
    try:
        while time.monotonic() - paused < PAUSE_S:
            # (ours(): a scrape during a cycle can miss one meter's series,
            # never all of them.)
            assert polling.ours(), 'samples stopped after %.1fs of pause' \
                % (time.monotonic() - paused)
            time.sleep(0.25)
        assert time.time() - agent.read_snapshot(
            check_stale=False).time > declared
        wait_until(lambda: polling.series('energy.instance', instance.uuid),
                   5, 'energy.instance through the pause')
    finally:
        os.killpg(agent.pid, signal.SIGCONT)
    assert polling.our_warnings(since=before) == []
    last_energy = polling.series('energy.instance', instance.uuid)[1]

    assert agent.stop(), 'the agent did not stop on SIGTERM'
    snap = agent.read_snapshot(check_stale=False)
    limit = max(snap.stale_after_s, READER_FLOOR_S)
    # All four series gone at once: not the exporter's per-meter purge at
    # the start of a cycle, which empties one series at a time.
    wait_until(lambda: not polling.ours(),
               limit + 6 * POLL_INTERVAL + 10,
               'our series to leave the exporter')
    # Never before the last snapshot was stale (wall clock, like the
    # snapshot's time), and for several cycles after.
    assert time.time() - snap.time > limit
    for _ in range(5):
        time.sleep(POLL_INTERVAL)
        assert polling.ours() == []
    warnings = polling.our_warnings(since=before)
    assert len(warnings) == 1, warnings
    assert 'stale after %.1fs' % limit in warnings[0]

    # The agent comes back: samples resume from the persisted counters,
    # with an INFO, no second warning.
    agent.start()
    agent.wait_for_snapshot(running(instance), newer_than=snap.time)
    labels, energy = wait_until(
        lambda: polling.series('energy.instance', instance.uuid), 30,
        'energy.instance back in the exporter')
    assert energy >= last_energy
    assert len(polling.our_warnings(since=before)) == 1
    assert any('fresh again' in line
               for line in polling.log_lines()[before:])
