"""The agent's side of the handoff directory (scaph_openstack/handoff.py).

Each tick, after the inventory said which domains are here: apply the
starts of instances whose domain is here, freeze those Nova holds (and
answer with what was frozen, once the ledger holding it is saved), and
release holds Nova took back.
"""

import logging as std_logging
import os
import time

from oslo_log import log as logging

from scaph_openstack import handoff
from scaph_openstack import ledger as ledger_mod
from scaph_openstack.share import layout
from scaph_openstack import statelog

LOG = logging.getLogger(__name__)


class HandoffDesk:

    def __init__(self, work_dir, resolution_uj, wallclock=time.time,
                 retention_s=86400):
        self.work_dir = work_dir
        self.resolution_uj = resolution_uj
        # Files of an instance never seen here (a migration that failed
        # before its domain came) go after this long, like a record.
        self.retention_s = retention_s
        self.wallclock = wallclock     # Nova writes deadlines in it
        self.states = statelog.StateLog(LOG)
        self._answered = {}        # uuid -> token of the last .held

    def _open(self):
        try:
            return handoff.open_directory(self.work_dir)
        except OSError as exc:
            self.states.failed('open', 'Cannot open %s: %s',
                               handoff.directory(self.work_dir), exc,
                               level=std_logging.WARNING)
            return None

    def process(self, ledger):
        """(changed, answers): whether a record changed, and the
        [(uuid, Counters)] to write once the ledger is saved."""
        if not self.work_dir:
            return False, []
        fd = self._open()
        if fd is None:
            return False, []
        try:
            self.states.recovered('open')
            present = handoff.scan(fd)
            changed, answers = False, []
            for uuid, kinds in present.items():
                if uuid not in ledger.instances and \
                        self._stale(fd, uuid, kinds):
                    handoff.remove(fd, uuid, *kinds)
                    continue
                try:
                    changed |= self._one(fd, ledger, uuid, kinds, answers)
                    self.states.recovered(uuid)
                except (handoff.HandoffError, layout.LayoutError,
                        OSError) as exc:
                    self.states.failed(uuid, 'Ignoring the handoff of %s: '
                                       '%s', uuid, exc,
                                       level=std_logging.WARNING)
            for uuid, record in ledger.instances.items():
                if handoff.HOLD not in present.get(uuid, ()) and \
                        record.release():
                    LOG.info('Instance %s: hold released, its counters '
                             'grow again', uuid)
                    changed = True
            return changed, answers
        finally:
            os.close(fd)

    def _stale(self, fd, uuid, kinds):
        newest = 0.0
        for kind in kinds:
            try:
                newest = max(newest, os.stat(
                    '%s.%s' % (uuid, kind), dir_fd=fd,
                    follow_symlinks=False).st_mtime)
            except OSError:
                pass
        return self.wallclock() - newest > self.retention_s

    def _one(self, fd, ledger, uuid, kinds, answers):
        record = ledger.instances.get(uuid)
        here = record is not None and \
            record.state != ledger_mod.STATE_UNDEFINED
        changed = False
        if handoff.START in kinds and here:
            start = handoff.Counters.from_dict(
                handoff.read(fd, uuid, handoff.START))
            if record.apply_start(start.token, start.energy_uj,
                                  start.idle_uj):
                LOG.info('Instance %s: counters continue from %s µJ '
                         'carried in', uuid, start.energy_uj)
                changed = True
        hold = (handoff.read(fd, uuid, handoff.HOLD)
                if handoff.HOLD in kinds else None)
        if hold is not None and handoff.hold_expired(hold, self.wallclock()):
            # Nova's operation never came (a live migration whose
            # destination failed to prepare): the counters grow again.
            LOG.info('Instance %s: hold expired', uuid)
            handoff.remove(fd, uuid, handoff.HOLD, handoff.HELD)
            kinds.discard(handoff.HOLD)
            kinds.discard(handoff.HELD)
            self._answered.pop(uuid, None)
        if handoff.HOLD in kinds:
            token = handoff.check_token((hold or {}).get('token'))
            before = record.held_token if record is not None else None
            held, held_idle = (record.hold(token) if record is not None
                               else ({}, {}))
            if record is not None and before != token:
                LOG.info('Instance %s: counters held at %s µJ', uuid, held)
                changed = True
            if self._answered.get(uuid) != token or \
                    handoff.HELD not in kinds:
                answers.append((uuid, handoff.Counters(
                    token, held,
                    {kind: layout.quantise(uj, self.resolution_uj)
                     for kind, uj in held.items()}, held_idle)))
        elif handoff.HELD in kinds:
            handoff.remove(fd, uuid, handoff.HELD)
            self._answered.pop(uuid, None)
        return changed

    def answer(self, answers):
        """Write each .held; called after the ledger was saved."""
        if not answers:
            return
        fd = self._open()
        if fd is None:
            return
        try:
            for uuid, counters in answers:
                try:
                    handoff.write(fd, uuid, handoff.HELD,
                                  counters.as_dict())
                    self._answered[uuid] = counters.token
                except OSError as exc:
                    self.states.failed('answer', 'Cannot answer the hold '
                                       'of %s: %s', uuid, exc)
        finally:
            os.close(fd)

    def forget(self, uuids):
        """Remove the files of instances the ledger dropped."""
        if not uuids or not self.work_dir:
            return
        fd = self._open()
        if fd is None:
            return
        try:
            for uuid in uuids:
                self._answered.pop(uuid, None)
                try:
                    handoff.remove(fd, uuid, handoff.HOLD, handoff.HELD,
                                   handoff.START)
                except (OSError, layout.LayoutError):
                    pass
        finally:
            os.close(fd)
