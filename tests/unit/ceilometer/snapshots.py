"""Snapshots written by the real snapshot module, from a hand-made ledger.

Building through the snapshot publisher's build() keeps these tests on the
schema the agent really writes. ``old_document`` is what an agent before
the idle/dynamic split (issue 9) wrote: the same document with only the
keys of that time.
"""

import time

from scaph_openstack.accounting import carbon as carbon_mod
from scaph_openstack.inventory import base as inventory_base
from scaph_openstack import ledger as ledger_mod
from scaph_openstack.publishers import snapshot
from scaph_openstack import report as report_mod

HOST = 'compute-1'
UUID_A = '6f1c3a52-8c1e-4d5e-9f5c-000000000001'
UUID_B = '6f1c3a52-8c1e-4d5e-9f5c-000000000002'
UUID_STOPPED = '6f1c3a52-8c1e-4d5e-9f5c-000000000003'
UUID_PLAIN = '6f1c3a52-8c1e-4d5e-9f5c-000000000004'
PROJECT = 'b1c7e0a1d2e34f5a8b9c0d1e2f3a4b5c'
USER = 'a1c7e0a1d2e34f5a8b9c0d1e2f3a4b5c'

EPOCH = 2
EPOCH_STARTED = 1795290000.0
# The idle part of each instance's energy (contained in its energy_uj).
IDLE_UJ = {UUID_A: {'package-0': 6_000_000, 'dram-0': 1_000_000},
           UUID_B: {'package-0': 3_000_000, 'dram-0': 500_000}}
# Each zone's idle power estimate: (state, watts).
IDLE_ESTIMATES = {'package-0': ('learned', 12.5),
                  'dram-0': ('configured', 2.25)}
# Carbon (µg CO2e, scale 1) of the two running instances, and what the
# snapshot says of the intensity and the PUE ([accounting], doc/carbon.md).
CARBON_UG = {UUID_A: 5_000_000, UUID_B: 2_500_000}
PUE = 1.2
INTENSITY = carbon_mod.Intensity(250.5, 'file', 1795290000.0)
# The keys of a snapshot written before the idle/dynamic split.
OLD_TOP_KEYS = ('format', 'version', 'host', 'time', 'interval_s',
                'configured_interval_s', 'stale_after_s', 'source', 'model',
                'idle_policy', 'zones', 'host_totals', 'instances')
OLD_ZONE_KEYS = ('name', 'kind', 'socket', 'measured_uj', 'residual_uj',
                 'unallocated_idle_uj', 'power_w')
OLD_INSTANCE_KEYS = ('uuid', 'name', 'display_name', 'project_id',
                     'project_name', 'user_id', 'user_name', 'flavor',
                     'vcpus', 'memory_mb', 'nova', 'running', 'energy_uj',
                     'package_uj', 'dram_uj', 'total_uj', 'power_w',
                     'first_seen', 'last_seen')


def nova_identity(uuid, display_name, flavor='m1.small', vcpus=2,
                  memory_mb=2048):
    return inventory_base.InstanceIdentity(
        uuid=uuid, name='instance-%08x' % int(uuid[-4:], 16),
        display_name=display_name, project_id=PROJECT,
        project_name='demo', user_id=USER, user_name='alice',
        flavor=flavor, vcpus=vcpus, memory_mb=memory_mb, nova=True)


def make_ledger(scale=1, idle=None, idle_estimates=None):
    """Two running Nova instances, a stopped one and a plain domain, on
    package-0 and dram-0. ``idle``: {uuid: {zone: µJ}}, the idle part of
    each instance's energy (IDLE_UJ by default); ``idle_estimates``:
    {zone: (state, watts)} (IDLE_ESTIMATES by default)."""
    idle = IDLE_UJ if idle is None else idle
    estimates = IDLE_ESTIMATES if idle_estimates is None else idle_estimates
    led = ledger_mod.Ledger()
    led.zones['package-0'] = ledger_mod.ZoneRecord(
        'package-0', 'package', 0, measured_uj=90_000_000 * scale,
        residual_uj=7_000_000 * scale, unallocated_idle_uj=40_000_000 * scale,
        power_w=45.5)
    led.zones['dram-0'] = ledger_mod.ZoneRecord(
        'dram-0', 'dram', 0, measured_uj=9_000_000 * scale,
        residual_uj=1_000_000 * scale, unallocated_idle_uj=2_000_000 * scale,
        power_w=4.5)
    records = [
        ledger_mod.InstanceRecord(
            nova_identity(UUID_A, 'web'),
            energy_uj={'package-0': 30_000_000 * scale,
                       'dram-0': 4_000_000 * scale},
            power_w=12.25),
        ledger_mod.InstanceRecord(
            nova_identity(UUID_B, 'db', flavor='m1.large', vcpus=4),
            energy_uj={'package-0': 13_000_000 * scale,
                       'dram-0': 2_000_000 * scale},
            power_w=3.5),
        ledger_mod.InstanceRecord(
            nova_identity(UUID_STOPPED, 'gone'),
            energy_uj={'package-0': 5}),
        ledger_mod.InstanceRecord(
            inventory_base.InstanceIdentity(uuid=UUID_PLAIN, name='plain'),
            energy_uj={'package-0': 1}, power_w=0.5),
    ]
    stop(records[2])
    for record in records:
        led.instances[record.identity.uuid] = record
        record.idle_uj = {zone: uj * scale for zone, uj
                          in idle.get(record.identity.uuid, {}).items()}
        record.placement = 'socket' if record.running else ''
        record.carbon_units = CARBON_UG.get(
            record.identity.uuid, 0) * scale * carbon_mod.UNITS_PER_UG
    set_idle_estimates(led, estimates)
    led.epoch, led.epoch_started = EPOCH, EPOCH_STARTED
    return led


def stop(record):
    """The record of an instance the hypervisor no longer runs. Records
    are running by default; the ledger says it with ``state`` (lifecycle
    states) or, before those, with ``running``."""
    if hasattr(ledger_mod, 'STATE_UNDEFINED'):
        record.state = ledger_mod.STATE_UNDEFINED
    else:
        record.running = False


def set_idle_estimates(led, estimates):
    """{zone: (state, watts)} into the ledger's zones."""
    for name, (state, watts) in estimates.items():
        zone = led.zones[name]
        zone.idle_estimate_state, zone.idle_estimate_w = state, watts


def document(age=0.0, source='simulated', scale=1, led=None,
             idle_policy='vcpus', carbon=True, intensity=INTENSITY):
    """A snapshot document of ``led`` (make_ledger(scale) by default).
    'vcpus' by default: IDLE_UJ would be 0 under 'none'. ``carbon``:
    carbon counted ([accounting] set), the intensity in force
    ``intensity``."""
    led = led if led is not None else make_ledger(scale)
    led.source = source
    report = report_mod.ReportBuilder().build(
        led, host=HOST, time=time.time() - age, interval_s=2.0,
        configured_interval_s=2.0, stale_after_s=6.0, source=source,
        model='cputime', idle_policy=idle_policy, carbon=carbon,
        carbon_intensity=intensity if carbon else None,
        pue=PUE if carbon else 1.0)
    return snapshot.build(report)


def old_document(**kwargs):
    """What an agent before the idle/dynamic split wrote: the document
    with the keys of that schema only."""
    doc = document(**kwargs)

    def only(d, keys):
        assert set(keys) <= set(d), set(keys) - set(d)
        return {k: d[k] for k in keys}

    old = only(doc, OLD_TOP_KEYS)
    old['zones'] = [only(z, OLD_ZONE_KEYS) for z in doc['zones']]
    old['instances'] = [only(i, OLD_INSTANCE_KEYS) for i in doc['instances']]
    return old


def write(path, age=0.0, old=False, at=None, **kwargs):
    """Write a document (old_document with ``old``) to ``path``; ``at``:
    its time (s), exactly, instead of now - ``age``."""
    make = old_document if old else document
    doc = make(age=age, **kwargs)
    if at is not None:
        doc['time'] = at
    snapshot.write(str(path), doc)
    return str(path)


def write_document(path, doc):
    """Write ``doc`` (e.g. a document() changed by a test) to ``path``."""
    snapshot.write(str(path), doc)
    return str(path)
