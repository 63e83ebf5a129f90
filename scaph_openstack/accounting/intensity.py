"""The carbon intensity file ([accounting] carbon_intensity_file).

A text file an operator's job keeps current (doc/carbon.md): one entry
per line, ``<time>,<gCO2e/kWh>``, the time in ISO 8601 with its zone
(``2026-12-01T10:00:00Z``, ``2026-12-01T11:00:00+01:00``), blank lines
and lines starting with ``#`` ignored, entries in any order. The
intensity at time t is that of the latest entry not after t, so a file
may hold forecasts: they come into force when their time comes.

Read every tick, cheaply: one stat(); the file is parsed again only when
its inode, size, mtime or ctime changed. A version that cannot be used
(unreadable, not a regular file, too large, a line that is not an entry,
a negative or non-finite value, a time without zone, a time twice, no
entry at all) is rejected whole, logged once (statelog), and the last
good version stays in use: a job that writes the file in place and is
read half-way loses nothing.
"""

import bisect
import datetime
import math
import os
import stat

from oslo_log import log as logging

from scaph_openstack import statelog

LOG = logging.getLogger(__name__)
# A year of hourly entries is about 260 kB.
MAX_BYTES = 4 * 1024 * 1024


class IntensityFileError(ValueError):
    pass


def parse_time(text):
    """Seconds since the epoch of an ISO 8601 time with its zone."""
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise IntensityFileError('%r is not an ISO 8601 time' % text)
    if when.tzinfo is None:
        raise IntensityFileError('%r has no time zone (write Z for UTC)'
                                 % text)
    return when.timestamp()


def parse_value(text):
    try:
        value = float(text)
    except ValueError:
        raise IntensityFileError('%r is not a number' % text)
    if not math.isfinite(value) or value < 0:
        raise IntensityFileError('%r is not an intensity (gCO2e/kWh, 0 or '
                                 'more)' % text)
    return value


def parse(text):
    """(sorted times, their values) of a file's text; IntensityFileError
    naming the first bad line."""
    entries = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith('#'):
            continue
        fields = line.split(',')
        try:
            if len(fields) != 2:
                raise IntensityFileError('expected "<time>,<gCO2e/kWh>", '
                                         'got %r' % line)
            when = parse_time(fields[0].strip())
            value = parse_value(fields[1].strip())
            if when in entries:
                raise IntensityFileError('time %r given twice'
                                         % fields[0].strip())
        except IntensityFileError as exc:
            raise IntensityFileError('line %d: %s' % (number, exc))
        entries[when] = value
    if not entries:
        raise IntensityFileError('no entry')
    times = sorted(entries)
    return times, [entries[t] for t in times]


def read(path):
    """parse() of the file at ``path``; IntensityFileError or OSError."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise IntensityFileError('not a regular file')
        if st.st_size > MAX_BYTES:
            raise IntensityFileError('larger than %d bytes' % MAX_BYTES)
        chunks, size = [], 0
        while size <= MAX_BYTES:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_BYTES:
            raise IntensityFileError('larger than %d bytes' % MAX_BYTES)
    finally:
        os.close(fd)
    try:
        text = b''.join(chunks).decode('utf-8')
    except UnicodeDecodeError as exc:
        raise IntensityFileError('not UTF-8 text: %s' % exc)
    return parse(text)


class IntensityFile:
    """The intensities of one file, as of its last good version."""

    def __init__(self, path, max_age=86400.0, fallback=False):
        self.path = path
        self.max_age = max_age
        # Whether [accounting] carbon_intensity stands in: what the log
        # says happens instead.
        self.fallback = fallback
        self.states = statelog.StateLog(LOG)
        self._key = None       # stat of the version last parsed
        self._times = []
        self._values = []

    @property
    def entries(self):
        return len(self._times)

    def _instead(self):
        return ('the static [accounting] carbon_intensity is used'
                if self.fallback else 'no carbon is counted')

    def _keeping(self):
        if self._times:
            return 'its last good version (%d entries) stays in use' \
                % len(self._times)
        return 'no version was usable yet, ' + self._instead()

    def refresh(self):
        """Parse the file again if it changed; never raises."""
        try:
            st = os.stat(self.path)
        except OSError as exc:
            self._key = None
            self.states.failed('read', 'Carbon intensity file %s: %s; %s',
                               self.path, exc.strerror or exc,
                               self._keeping(), state=('stat', exc.errno))
            return
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
               st.st_ctime_ns)
        if key == self._key:
            return
        self._key = key
        try:
            times, values = read(self.path)
        except OSError as exc:
            self._key = None        # tried again next tick
            self.states.failed('read', 'Carbon intensity file %s: %s; %s',
                               self.path, exc.strerror or exc,
                               self._keeping(), state=('read', exc.errno))
            return
        except IntensityFileError as exc:
            self.states.failed('read', 'Carbon intensity file %s rejected '
                               '(%s); %s', self.path, exc, self._keeping(),
                               state=('parse', str(exc)))
            return
        self._times, self._values = times, values
        if not self.states.recovered(
                'read', 'Carbon intensity file %s usable again (%d '
                'entries)', self.path, len(times)):
            LOG.debug('Carbon intensity file %s read: %d entries',
                      self.path, len(times))

    def at(self, now):
        """(time of the entry, gCO2e/kWh) in force at wall-clock ``now``,
        or None (no entry yet, or stale: logged once)."""
        self.refresh()
        if not self._times:
            return None
        index = bisect.bisect_right(self._times, now) - 1
        if index < 0:
            self.states.failed(
                'entry', 'Carbon intensity file %s has no entry at or '
                'before now (the first is at %s): %s', self.path,
                _iso(self._times[0]), self._instead(), state=True)
            return None
        since = self._times[index]
        if self.max_age and now - since > self.max_age:
            self.states.failed(
                'entry', 'Carbon intensity file %s is stale: its entry in '
                'force is from %s, older than [accounting] '
                'carbon_intensity_max_age (%.0f s): %s', self.path,
                _iso(since), self.max_age, self._instead(), state='stale')
            return None
        self.states.recovered('entry', 'Carbon intensity file %s has an '
                              'entry in force again', self.path)
        return since, self._values[index]


def _iso(seconds):
    return datetime.datetime.fromtimestamp(
        seconds, datetime.timezone.utc).isoformat()
