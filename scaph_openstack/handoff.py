"""Counters that follow an instance from host to host (doc/nova.md,
"Counters that follow the instance").

A root-only directory, ``<work_dir>/.handoff`` in the share tmpfs (never
exported: each guest sees only its own ``<work_dir>/<uuid>``), carries
three kinds of small JSON file between nova-compute (through its privsep
daemon) and the agent of the same host:

``<uuid>.hold``  Nova, before the instance leaves (live or cold migration,
                 resize, shelve, stop): freeze what is published for it.
``<uuid>.held``  The agent's answer, written once the frozen values are in
                 its saved ledger: what it froze, exact and as the guest
                 sees them (quantised). Nova carries this in the
                 instance's system metadata.
``<uuid>.start`` Nova, before a domain of the instance starts here: the
                 carried values; the agent publishes at least these.

The agent keeps each instance's energy of this host in its own counters
(conservation is per host); what it publishes is that plus what was
carried in, and, while held, no more than the frozen values. A guest thus
sees a flat value during a migration, never a decrease, and no interval
is counted on two hosts.
"""

import dataclasses
import json
import math
import os
import re

from scaph_openstack import fileutil
from scaph_openstack.share import layout

DIR_NAME = '.handoff'
DIR_MODE = 0o700
FILE_MODE = 0o600
HOLD, HELD, START = 'hold', 'held', 'start'
KINDS = ('package', 'dram')
MAX_FILE_BYTES = 4096
_TOKEN = re.compile(r'[A-Za-z0-9._:-]{1,64}')


class HandoffError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Counters:
    """Per kind (package, dram): the exact µJ, what the guest saw, and
    the idle part of the exact µJ (Ceilometer's energy.instance.idle)."""
    token: str
    energy_uj: dict
    shown_uj: dict
    idle_uj: dict = dataclasses.field(default_factory=dict)

    def as_dict(self):
        return {'token': self.token, 'energy_uj': dict(self.energy_uj),
                'shown_uj': dict(self.shown_uj),
                'idle_uj': dict(self.idle_uj)}

    @classmethod
    def from_dict(cls, doc):
        if not isinstance(doc, dict):
            raise HandoffError('not an object: %r' % (doc,))
        return cls(check_token(doc.get('token')),
                   _kinds(doc.get('energy_uj'), 'energy_uj'),
                   _kinds(doc.get('shown_uj'), 'shown_uj'),
                   _kinds(doc.get('idle_uj', {}), 'idle_uj'))

    def at_least(self, other):
        """Per kind the larger of the two; this one's token."""
        if other is None:
            return self
        return Counters(self.token, _max(self.energy_uj, other.energy_uj),
                        _max(self.shown_uj, other.shown_uj),
                        _max(self.idle_uj, other.idle_uj))


def _max(a, b):
    return {kind: max(a.get(kind, 0), b.get(kind, 0))
            for kind in KINDS if kind in a or kind in b}


def _kinds(value, what):
    if not isinstance(value, dict):
        raise HandoffError('%s is not an object: %r' % (what, value))
    kinds = {}
    for kind, uj in value.items():
        if kind not in KINDS:
            raise HandoffError('%s: unknown kind %r' % (what, kind))
        if type(uj) is not int or uj < 0 or uj >= 2 ** 64:
            raise HandoffError('%s: %s is not a µJ counter: %r'
                               % (what, kind, uj))
        kinds[kind] = uj
    return kinds


def check_token(token):
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        raise HandoffError('not a handoff token: %r' % (token,))
    return token


def directory(work_dir):
    return os.path.join(work_dir, DIR_NAME)


def file_name(uuid, kind):
    return '%s.%s' % (layout.instance_dir_name(uuid), kind)


def open_directory(work_dir, create=False, root_fd=None):
    """An fd of ``<work_dir>/.handoff`` (O_NOFOLLOW), made 0700 if asked;
    None when it does not exist. ``root_fd``: work_dir already opened
    (the privsep daemon reaches it without following any symlink)."""
    own_root = root_fd is None
    if own_root:
        try:
            root_fd = fileutil.open_dir(work_dir)
        except FileNotFoundError:
            return None
    try:
        if create:
            try:
                os.mkdir(DIR_NAME, DIR_MODE, dir_fd=root_fd)
            except FileExistsError:
                pass
        try:
            fd = fileutil.open_dir(DIR_NAME, dir_fd=root_fd)
        except FileNotFoundError:
            return None
        if create:
            os.fchmod(fd, DIR_MODE)
        return fd
    finally:
        if own_root:
            os.close(root_fd)


def write(dir_fd, uuid, kind, doc):
    fileutil.replace_at(dir_fd, file_name(uuid, kind),
                        json.dumps(doc, sort_keys=True).encode() + b'\n',
                        mode=FILE_MODE)


def read(dir_fd, uuid, kind):
    """The document, None when there is none; HandoffError if unusable."""
    try:
        fd = os.open(file_name(uuid, kind),
                     os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC |
                     os.O_NONBLOCK, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise HandoffError('%s: %s' % (file_name(uuid, kind), exc))
    try:
        data = os.read(fd, MAX_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        raise HandoffError('%s is too large' % file_name(uuid, kind))
    try:
        return json.loads(data)
    except ValueError as exc:
        raise HandoffError('%s: %s' % (file_name(uuid, kind), exc))


def remove(dir_fd, uuid, *kinds):
    for kind in kinds:
        try:
            os.unlink(file_name(uuid, kind), dir_fd=dir_fd)
        except FileNotFoundError:
            pass


def scan(dir_fd):
    """{uuid: set of kinds} of the files present; other names ignored."""
    found = {}
    for name in os.listdir(dir_fd):
        uuid, _, kind = name.rpartition('.')
        if kind in (HOLD, HELD, START) and uuid and \
                not uuid.startswith('.'):
            found.setdefault(uuid, set()).add(kind)
    return found


# -- Nova's side (through its privsep daemon, or in-process in tests) --

def request_hold(work_dir, uuid, token, expires=None, root_fd=None):
    """Ask this host's agent to freeze the instance's published values,
    until Nova releases them or, when given, the wall-clock time
    ``expires`` (a hold whose operation never came)."""
    check_token(token)
    check_expires(expires)
    fd = open_directory(work_dir, create=True, root_fd=root_fd)
    try:
        held = read(fd, uuid, HELD)
        if held is not None and held.get('token') != token:
            remove(fd, uuid, HELD)   # an answer to an older hold
        write(fd, uuid, HOLD, {'token': token, 'expires': expires})
    finally:
        os.close(fd)


def check_expires(expires):
    if expires is not None and (type(expires) not in (int, float) or
                                not math.isfinite(expires) or expires < 0):
        raise HandoffError('not a time: %r' % (expires,))
    return expires


def hold_expired(doc, now):
    """Whether a hold document's deadline has passed."""
    expires = check_expires((doc or {}).get('expires'))
    return expires is not None and now > expires


def answer_of(work_dir, uuid, token, root_fd=None):
    """The agent's answer to the hold ``token``, None before it."""
    fd = open_directory(work_dir, root_fd=root_fd)
    if fd is None:
        return None
    try:
        doc = read(fd, uuid, HELD)
    finally:
        os.close(fd)
    if doc is None or doc.get('token') != token:
        return None
    return Counters.from_dict(doc)


def release_hold(work_dir, uuid, root_fd=None):
    """Let the counters grow again (the instance stays here)."""
    fd = open_directory(work_dir, root_fd=root_fd)
    if fd is None:
        return
    try:
        remove(fd, uuid, HOLD, HELD)
    finally:
        os.close(fd)


def offer_start(work_dir, uuid, counters, root_fd=None):
    """The values the agent publishes at least, once the domain is here."""
    fd = open_directory(work_dir, create=True, root_fd=root_fd)
    try:
        write(fd, uuid, START, counters.as_dict())
    finally:
        os.close(fd)
