"""Snapshots written by the real snapshot module, from a hand-made ledger.

Building through scaph_openstack.snapshot.build keeps these tests on the
schema the agent really writes.
"""

import time
import types

from scaph_openstack.inventory import base as inventory_base
from scaph_openstack import ledger as ledger_mod
from scaph_openstack import snapshot

HOST = 'compute-1'
UUID_A = '6f1c3a52-8c1e-4d5e-9f5c-000000000001'
UUID_B = '6f1c3a52-8c1e-4d5e-9f5c-000000000002'
UUID_STOPPED = '6f1c3a52-8c1e-4d5e-9f5c-000000000003'
UUID_PLAIN = '6f1c3a52-8c1e-4d5e-9f5c-000000000004'
PROJECT = 'b1c7e0a1d2e34f5a8b9c0d1e2f3a4b5c'
USER = 'a1c7e0a1d2e34f5a8b9c0d1e2f3a4b5c'


def nova_identity(uuid, display_name, flavor='m1.small', vcpus=2,
                  memory_mb=2048):
    return inventory_base.InstanceIdentity(
        uuid=uuid, name='instance-%08x' % int(uuid[-4:], 16),
        display_name=display_name, project_id=PROJECT,
        project_name='demo', user_id=USER, user_name='alice',
        flavor=flavor, vcpus=vcpus, memory_mb=memory_mb, nova=True)


def make_ledger(scale=1):
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
            power_w=12.25, running=True),
        ledger_mod.InstanceRecord(
            nova_identity(UUID_B, 'db', flavor='m1.large', vcpus=4),
            energy_uj={'package-0': 13_000_000 * scale,
                       'dram-0': 2_000_000 * scale},
            power_w=3.5, running=True),
        ledger_mod.InstanceRecord(
            nova_identity(UUID_STOPPED, 'gone'),
            energy_uj={'package-0': 5}, running=False),
        ledger_mod.InstanceRecord(
            inventory_base.InstanceIdentity(uuid=UUID_PLAIN, name='plain'),
            energy_uj={'package-0': 1}, power_w=0.5, running=True),
    ]
    for record in records:
        led.instances[record.identity.uuid] = record
    return led


def document(age=0.0, source='simulated', scale=1, led=None):
    report = types.SimpleNamespace(
        host=HOST, time=time.time() - age, interval_s=2.0,
        configured_interval_s=2.0, stale_after_s=6.0, source=source,
        model='cputime', idle_policy='none',
        ledger=led if led is not None else make_ledger(scale))
    return snapshot.build(report)


def write(path, age=0.0, **kwargs):
    snapshot.write(str(path), document(age=age, **kwargs))
    return str(path)
