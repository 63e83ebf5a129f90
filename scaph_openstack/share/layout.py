"""The guest-visible tree: a contract (doc/share.md), no I/O here.

Per instance, under ``<export_dir>/<uuid>/``::

    intel-rapl:0/name                   package-0
    intel-rapl:0/energy_uj              cumulative µJ (package zones)
    intel-rapl:0/max_energy_range_uj    18446744073709551615
    intel-rapl:0:0/...                  the same for dram, if the host has it
    scaph-openstack.json                schema, uuid, interval, time, source

This is what scaphandre's ``--vm`` mode reads (doc/design.md, Facts 1): a
package directory with a ``name`` that is not ``psys``, a trimmed u64
``energy_uj``. Guest counters are the agent's cumulative ledger values and
never wrap, so ``max_energy_range_uj`` is the u64 maximum.
"""

import json
import re

PACKAGE_DIR = 'intel-rapl:0'
DRAM_DIR = 'intel-rapl:0:0'
META_FILE = 'scaph-openstack.json'
META_FORMAT = 'scaph-openstack.share'
META_VERSION = 1
MAX_ENERGY_RANGE_UJ = 2 ** 64 - 1
DIR_MODE = 0o555
FILE_MODE = 0o444
DEFAULT_TAG = 'scaphandre'
MAX_META_BYTES = 65536      # what a reader of the meta file reads at most
GUEST_MOUNTPOINT = '/var/scaphandre'

# fullmatch: with match(), '$' also matches before a final newline.
_SAFE_NAME = re.compile(r'[A-Za-z0-9][A-Za-z0-9._-]{0,127}')


class LayoutError(ValueError):
    pass


def instance_dir_name(uuid):
    """The directory name of an instance; refuses anything path-like."""
    if not isinstance(uuid, str) or not _SAFE_NAME.fullmatch(uuid):
        raise LayoutError('%r cannot name a share directory' % (uuid,))
    return uuid


def quantise(value_uj, resolution_uj):
    return value_uj - value_uj % resolution_uj


def _number(value):
    return b'%d\n' % value


def constant_files(with_dram=False):
    """The files that never change once written: names and ranges."""
    files = {
        (PACKAGE_DIR, 'name'): b'package-0\n',
        (PACKAGE_DIR, 'max_energy_range_uj'): _number(MAX_ENERGY_RANGE_UJ),
    }
    if with_dram:
        files.update({
            (DRAM_DIR, 'name'): b'dram\n',
            (DRAM_DIR, 'max_energy_range_uj'): _number(MAX_ENERGY_RANGE_UJ),
        })
    return files


def counter_files(package_uj, dram_uj=None):
    """The energy_uj files (dram only when the host has DRAM zones)."""
    files = {(PACKAGE_DIR, 'energy_uj'): _number(package_uj)}
    if dram_uj is not None:
        files[(DRAM_DIR, 'energy_uj')] = _number(dram_uj)
    return files


def zone_files(package_uj, dram_uj=None):
    """{(directory, file name): bytes}: the whole counter tree."""
    files = constant_files(dram_uj is not None)
    files.update(counter_files(package_uj, dram_uj))
    return files


def meta_document(uuid, updated, update_interval_s, source, model,
                  resolution_uj, epoch=None, idle_estimate=None):
    """The small JSON a guest reads to tell a stalled agent from an idle
    VM. ``updated`` is None until the agent first writes the counters.
    ``epoch`` changes when the host's energy source does (counters then
    start again from zero); ``idle_estimate`` is {state, watts} of the
    host's idle power, which says how settled the split is."""
    return {
        'format': META_FORMAT, 'version': META_VERSION, 'uuid': uuid,
        'updated': updated, 'update_interval_s': update_interval_s,
        'source': source, 'model': model, 'resolution_uj': resolution_uj,
        'unit': 'uJ', 'epoch': epoch, 'idle_estimate': idle_estimate,
    }


def padding(name):
    """The byte that may fill a file's new content up to its old length,
    so that it is updated in place (fileutil.update_at): white space for
    the JSON meta file, nothing for numbers (a counter only grows)."""
    return b' ' if name == META_FILE else None


def meta_file(document):
    return json.dumps(document, sort_keys=True).encode() + b'\n'


def initial_files(uuid, with_dram=False):
    """What exists before the agent first writes: zero counters, pending."""
    files = zone_files(0, 0 if with_dram else None)
    files[('', META_FILE)] = meta_file(
        meta_document(uuid, None, None, None, None, None))
    return files
