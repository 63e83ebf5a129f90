"""One scale of the Ceilometer comparison, run in a fresh process.

``python -m tools.bench_support.ceilometer_worker PARAMS.json RESULT.json``

Both sides poll the same N instances in the same process:

* ours: the ``scaph_instances`` discovery (reads the agent's snapshot)
  and ``local_node`` (zone meters), then the four pollsters
  ``energy.instance``, ``power.instance``, ``energy.host.zone`` and
  ``energy.host.unattributed``, sharing one cache dict as in a polling
  cycle. The snapshot is the one a real agent tick wrote just before
  (one untimed tick per cycle keeps it fresh and moving).
* Ceilometer's: the ``cpu`` pollster (CPUPollster) with its real
  LibvirtInspector, over the resources Ceilometer's own
  ``local_instances`` discovery (libvirt_metadata) builds. Both get the
  stand-in connection (or, in ``real`` mode, qemu:///system).

Times are CPU time of this process (``time.process_time_ns``); in real
mode libvirtd's CPU time is measured too, since every libvirt call of the
``cpu`` pollster is an RPC it serves.
"""

import sys
import time

from tools.bench_support import agent_worker
from tools.bench_support import fixtures
from tools.bench_support import standin as standin_mod


def build_agent(params, stand_in):
    from scaph_openstack.agent import tick
    from scaph_openstack.attribution import cputime
    from scaph_openstack.energy import rapl
    from scaph_openstack.inventory import libvirt as inventory_libvirt
    from scaph_openstack import ledger
    from scaph_openstack.publishers import snapshot as snapshot_publisher

    inventory = inventory_libvirt.LibvirtInventory()
    if stand_in is not None:
        inventory._conn = stand_in
    # The agent freezes its long-lived objects out of the garbage
    # collector after its first publication; Ceilometer's polling agent,
    # whose cost this process measures, does not.
    tick._gc_frozen = True
    clock = agent_worker.FakeClock()
    ticker = tick.Ticker(
        energy=rapl.RaplSource(params['powercap']),
        inventory=inventory,
        attribution=cputime.CpuTimeAttribution(),
        ledger=ledger.Ledger(),
        publishers=[snapshot_publisher.SnapshotPublisher(
            params['snapshot'])],
        ledger_path=params['ledger'],
        host='bench-host',
        configured_interval_s=params['interval'],
        stale_after_s=params['interval'] * 3,
        retention_s=86400, clock=clock)
    return ticker, clock


def ceilometer_conf(params):
    from ceilometer import service

    from scaph_openstack.conf import ceilometer as scaph_conf
    conf = service.prepare_service([], [])
    conf.set_override('host', 'bench-host')
    scaph_conf.register_opts(conf)
    conf.set_override('snapshot_path', params['snapshot'],
                      group='scaphandre')
    return conf


def ceilometer_side(conf, stand_in):
    """Ceilometer's local_instances discovery and cpu pollster."""
    from ceilometer.compute import discovery
    from ceilometer.compute import pollsters
    from ceilometer.compute.pollsters import instance_stats
    from ceilometer.compute.virt.libvirt import inspector

    if stand_in is not None:
        # LibvirtInspector connects in __init__ through
        # refresh_libvirt_connection(), which keeps an alive
        # ``_libvirt_connection``: give it the stand-in first.
        insp = inspector.LibvirtInspector.__new__(inspector.LibvirtInspector)
        insp._libvirt_connection = stand_in
        insp.__init__(conf)
        pollsters.GenericComputePollster._inspector = insp
    local_instances = discovery.InstanceDiscovery(conf)
    if stand_in is not None:
        local_instances._libvirt_connection = stand_in
    return local_instances, instance_stats.CPUPollster(conf)


def our_side(conf):
    from ceilometer.polling.discovery import localnode

    from scaph_openstack.ceilometer import discovery
    from scaph_openstack.ceilometer import pollsters
    instance = [pollsters.InstanceEnergyPollster(conf),
                pollsters.InstancePowerPollster(conf)]
    zone = [pollsters.HostZoneEnergyPollster(conf),
            pollsters.HostUnattributedEnergyPollster(conf)]
    return (discovery.SnapshotInstanceDiscovery(conf),
            localnode.LocalNodeDiscovery(conf), instance, zone)


def run(params):
    stand_in = None
    if params['mode'] == 'standin':
        stand_in = standin_mod.StandInConnection(
            standin_mod.load(params['recording']), params['n'])
    fixture = fixtures.PowercapFixture(params['powercap'])
    ticker, clock = build_agent(params, stand_in)
    conf = ceilometer_conf(params)
    scaph_discovery, local_node, instance_pollsters, zone_pollsters = \
        our_side(conf)
    local_instances, cpu = ceilometer_side(conf, stand_in)
    libvirtd = fixtures.libvirtd_pids() if stand_in is None else []

    def daemon_ns():
        return fixtures.cpu_ns_of(libvirtd) if libvirtd else 0

    clock_ns = time.process_time_ns
    cycles = []
    for _ in range(params['warmup'] + params['cycles']):
        if ticker.tick() is None:
            raise RuntimeError('the agent tick published nothing')
        clock.advance(params['interval'])
        fixture.advance(params['interval'])
        if stand_in is not None:
            stand_in.advance(params['interval'])

        d0, t0 = daemon_ns(), clock_ns()
        cache = {}
        resources = scaph_discovery.discover(None)
        nodes = local_node.discover(None)
        t1 = clock_ns()
        ours = 0
        for pollster in instance_pollsters:
            ours += len(list(pollster.get_samples(None, cache, resources)))
        for pollster in zone_pollsters:
            ours += len(list(pollster.get_samples(None, cache, nodes)))
        t2, d2 = clock_ns(), daemon_ns()
        cpu_resources = local_instances.discover(None)
        t3, d3 = clock_ns(), daemon_ns()
        theirs = len(list(cpu.get_samples(None, {}, cpu_resources)))
        t4, d4 = clock_ns(), daemon_ns()
        cycles.append({
            'ours_discovery': t1 - t0, 'ours_pollsters': t2 - t1,
            'ours': t2 - t0, 'ours_samples': ours,
            'ours_resources': len(resources),
            'ceilometer_discovery': t3 - t2, 'cpu': t4 - t3,
            'cpu_samples': theirs, 'cpu_resources': len(cpu_resources),
            'ours_libvirtd': d2 - d0, 'ceilometer_discovery_libvirtd':
                d3 - d2, 'cpu_libvirtd': d4 - d3})
    if stand_in is None:
        ticker.inventory.close()
    return {'n': len(ticker.ledger.instances), 'mode': params['mode'],
            'warmup': params['warmup'], 'cycles': cycles[params['warmup']:],
            'zones': len(ticker.ledger.zones)}


if __name__ == '__main__':
    sys.exit(fixtures.worker_main(run))
