"""Publisher ``share``: each instance's powercap tree for its guest.

Guest exposure is rate-limited (``min_interval``) and quantised
(``resolution_uj``): a per-VM counter derived from host-wide RAPL moves
with the neighbours' activity (PLATYPUS, CVE-2020-8694). Defaults of 10 s
and 1 J keep scaphandre's power readings useful (it averages over its own
interval) while blurring the fine-grained variations a side channel needs.
"""

import json
import logging as std_logging
import os
import re
import time

from oslo_log import log as logging

from scaph_openstack.privsep import mounts
from scaph_openstack.publishers import base
from scaph_openstack.share import layout
from scaph_openstack.share import tree
from scaph_openstack import statelog

LOG = logging.getLogger(__name__)
ORPHAN_SCAN_INTERVAL_S = 60.0
# A string JSON encodes as itself between quotes.
_PLAIN = re.compile(r'[A-Za-z0-9._-]+\Z')


class MetaFiles:
    """The meta file of each instance for one publication.

    Only the uuid differs between instances: the document is encoded once
    (layout.meta_file, about 4 µs a call) around a placeholder, and each
    instance's bytes are that with its uuid put in. Any uuid that would
    not encode as itself, or a placeholder that is not found exactly
    once, takes layout.meta_file itself: the bytes are always the same.
    """

    PLACEHOLDER = 'scaph-openstack.uuid.placeholder'

    def __init__(self, make):
        self._make = make       # uuid -> the meta file's bytes
        data = make(self.PLACEHOLDER)
        quoted = json.dumps(self.PLACEHOLDER).encode()
        self._parts = (data.split(quoted) if data.count(quoted) == 1
                       else None)

    def __call__(self, uuid):
        if self._parts is None or not _PLAIN.match(uuid):
            return self._make(uuid)
        head, tail = self._parts
        return b'%s"%s"%s' % (head, uuid.encode(), tail)


class SharePublisher(base.Publisher):

    name = 'share'

    def __init__(self, work_dir, export_dir=None, manage_mounts=False,
                 tmpfs_size='128m', min_interval=10.0, resolution_uj=1000000,
                 retention_s=86400, clock=time.monotonic):
        self.tree = tree.ShareTree(work_dir, keep_open=True)
        self.work_dir = work_dir
        self.export_dir = export_dir
        self.manage_mounts = manage_mounts
        self.tmpfs_size = tmpfs_size
        self.min_interval = min_interval
        self.resolution_uj = resolution_uj
        self.retention_s = retention_s
        self.clock = clock
        self._last_write = {}    # uuid -> monotonic time
        self._last_values = {}   # uuid -> (package, dram) written
        self._last_scan = None
        self._orphans = {}       # directory name -> monotonic first sight
        self.states = statelog.StateLog(LOG)

    def start(self):
        if self.manage_mounts:
            mounts.ensure_share_mounts()    # the daemon's own [share]
        else:
            os.makedirs(self.work_dir, exist_ok=True)

    def stop(self):
        self.tree.close()

    def _due(self, uuid, now):
        last = self._last_write.get(uuid)
        return last is None or now - last >= self.min_interval

    def _files(self, uuid, totals, with_dram, meta):
        """What changed since this process last wrote the tree: the whole
        tree the first time, then only counters that moved, and the meta
        file (its time says the agent is alive)."""
        package = layout.quantise(totals.package_uj, self.resolution_uj)
        dram = (layout.quantise(totals.dram_uj, self.resolution_uj)
                if with_dram else None)
        last = self._last_values.get(uuid)
        files = {}
        if last is None or (last[1] is None) != (dram is None):
            files.update(layout.zone_files(package, dram))
        elif last != (package, dram):
            changed = layout.counter_files(package, dram)
            if package == last[0]:
                del changed[(layout.PACKAGE_DIR, 'energy_uj')]
            if dram == last[1]:
                changed.pop((layout.DRAM_DIR, 'energy_uj'), None)
            files.update(changed)
        self._last_values[uuid] = (package, dram)
        files[('', layout.META_FILE)] = meta(uuid)
        return files

    def _meta_files(self, report):
        idle_estimate = report.host_idle_estimate()
        interval = max(self.min_interval, report.configured_interval_s)
        return MetaFiles(lambda uuid: layout.meta_file(layout.meta_document(
            uuid, report.time, interval, report.source, report.model,
            self.resolution_uj, report.epoch, idle_estimate)))

    def publish(self, report):
        now = self.clock()
        if self.tree.refresh():
            # work_dir is another directory now (tmpfs mounted over it):
            # everything must be written again.
            self._last_values.clear()
            self._last_write.clear()
        with_dram = report.has_kind('dram')
        meta = self._meta_files(report)
        for uuid, totals in report.instances.items():
            # Instances that do not run (paused, shut off, undefined) are
            # written once per agent lifetime: after a host reboot the
            # tmpfs is empty, and a guest whose share directory is
            # missing cannot start (virtiofsd refuses it).
            if not self._due(uuid, now) or \
                    (not totals.running and uuid in self._last_write):
                continue
            self._write(uuid, totals, with_dram, meta, now)
        for uuid in report.expired:
            self._forget(uuid)
        self._remove_orphans(report, now)

    def _write(self, uuid, totals, with_dram, meta, now):
        try:
            self.tree.write_instance(
                uuid, self._files(uuid, totals, with_dram, meta))
        except (layout.LayoutError, OSError) as exc:
            # One broken tree (a full tmpfs, something planted in it)
            # must not stop the other instances' updates.
            self._last_values.pop(uuid, None)
            self.tree.forget(uuid)
            self.states.failed(uuid, 'Cannot update the share of %s: %s',
                               uuid, exc, level=std_logging.WARNING)
            return
        self.states.recovered(uuid, 'Share of %s updated again', uuid)
        self._last_write[uuid] = now

    def _forget(self, uuid):
        self.states.forget(uuid)
        self._last_write.pop(uuid, None)
        self._last_values.pop(uuid, None)
        try:
            self.tree.remove_instance(uuid)
        except layout.LayoutError:
            pass

    def _remove_orphans(self, report, now):
        """Directories no ledger entry owns for longer than the retention
        (monotonic time, counted from when this agent first saw them):
        instances deleted while the agent was down. Younger ones may be
        instances Nova is starting right now."""
        if self._last_scan is not None and \
                now - self._last_scan < ORPHAN_SCAN_INTERVAL_S:
            return
        self._last_scan = now
        orphans = {name for name in self.tree.instance_names()
                   if name not in report.instances}
        for name in set(self._orphans) - orphans:
            del self._orphans[name]
        for name in orphans:
            first_seen = self._orphans.setdefault(name, now)
            if now - first_seen > self.retention_s:
                LOG.info('Removing share of vanished instance %s', name)
                self._forget(name)
                del self._orphans[name]


def from_conf(conf):
    share = conf.share
    return SharePublisher(share.work_dir, share.export_dir,
                          share.manage_mounts, share.tmpfs_size,
                          share.min_interval, share.resolution_uj,
                          conf.agent.retention)
