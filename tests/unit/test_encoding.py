"""Encodings made cheaper for the tick at scale (doc/performance.md) give
exactly the bytes of the plain ones: the ledger and the snapshot encoded
a batch of instances at a time, the share's meta file from one template
per publication."""

import json

import pytest

from scaph_openstack import jsonutil


def _reference(header, key, items):
    return json.dumps(dict(header, **{key: list(items)}),
                      separators=(',', ':')).encode()


@pytest.mark.parametrize('count', [0, 1, 3, 4, 5, 130])
def test_same_bytes_as_json_dumps(count):
    header = {'format': 'x', 'time': 1.5, 'zones': [{'name': 'p-0'}],
              'nothing': None, 'nested': {'a': [1, 2]}}
    items = [{'uuid': 'u%d' % i, 'name': 'vm-é-"%d"\n' % i, 'n': i,
              'f': i / 3, 'ok': bool(i % 2), 'd': {'package-0': i}}
             for i in range(count)]
    assert jsonutil.dumps_with_list(header, 'items', items, batch=4) == \
        _reference(header, 'items', items)
    assert jsonutil.dumps_with_list(header, 'items', iter(items)) == \
        _reference(header, 'items', items)


def test_the_list_must_come_last():
    with pytest.raises(ValueError):
        jsonutil.dumps_with_list({'items': 1}, 'items', [])


def _ledger(count):
    from scaph_openstack.inventory import base as inventory_base
    from scaph_openstack import ledger as ledger_mod
    ledger = ledger_mod.Ledger()
    for zone, kind in (('package-0', 'package'), ('dram-0', 'dram')):
        ledger.zones[zone] = ledger_mod.ZoneRecord(zone, kind, 0)
    for i in range(count):
        identity = inventory_base.InstanceIdentity(
            uuid='uuid-%d' % i, name='instance-%d' % i,
            display_name='vm "%d" é' % i, vcpus=2, nova=True)
        ledger.instances[identity.uuid] = ledger_mod.InstanceRecord(
            identity, {'package-0': 10 * i + 1, 'dram-0': i},
            first_seen=1.25, last_seen=2.5, power_w=i / 7,
            idle_uj={'package-0': i}, placement='socket')
    return ledger


@pytest.mark.parametrize('count', [0, 1, 200])
def test_ledger_saves_what_to_dict_says(count):
    ledger = _ledger(count)
    assert ledger.dumps() == json.dumps(ledger.to_dict(),
                                        separators=(',', ':')).encode()


@pytest.mark.parametrize('count', [0, 1, 200])
def test_snapshot_publisher_writes_what_build_says(count):
    from scaph_openstack.publishers import snapshot as snapshot_publisher
    from tests.unit import fakes
    report = fakes.report_of(_ledger(count), 100.0)
    assert snapshot_publisher.dumps(report) == json.dumps(
        snapshot_publisher.build(report), separators=(',', ':')).encode()


@pytest.mark.parametrize('uuid', ['e4b0d344-30b3-55ec-9885-507314ac1373',
                                  'u1', 'a"b', 'é', 'x\\y', ''])
@pytest.mark.parametrize('idle', [None, {'state': 'learned', 'watts': 2.5}])
def test_share_meta_files_are_layout_meta_files(uuid, idle):
    from scaph_openstack.publishers import share
    from scaph_openstack.share import layout

    def make(u):
        return layout.meta_file(layout.meta_document(
            u, 1796066177.3594923, 10.0, 'rapl', 'cputime', 1000000, 2,
            idle))

    assert share.MetaFiles(make)(uuid) == make(uuid)


def test_share_meta_files_without_a_usable_placeholder():
    from scaph_openstack.publishers import share
    from scaph_openstack.share import layout

    def make(u):
        # The placeholder shows twice: every file is encoded in full.
        return layout.meta_file(layout.meta_document(
            u, 1.0, 10.0, share.MetaFiles.PLACEHOLDER, 'cputime', 1))

    meta = share.MetaFiles(make)
    assert meta('u1') == make('u1')
