"""Turns the workers' raw results into the markdown report."""

import statistics

from tools.bench_support import agent_worker

TARGET_SCALE = 1000
TARGET_US_PER_INSTANCE = 25.0
TARGET_FLOOR_RATIO = 2.0
TARGET_RSS_MB = 80.0
TARGET_POLL_RATIO = 0.2
STAGE_COLUMNS = agent_worker.STAGES + ('other',)


def _us(ns):
    return ns / 1000.0


def _fmt(value, digits=0):
    if value is None:
        return 'n/a'
    return '{:,.{d}f}'.format(value, d=digits)


def _separator(head):
    return '|' + '|'.join(['---'] * (head.count('|') - 1)) + '|'


def _verdict(ok):
    return 'PASS' if ok else 'MISS'


class AgentRow:
    """One agent worker result, summarised."""

    def __init__(self, result, label, amortised):
        self.result = result
        self.label = label
        self.amortised = amortised
        self.n = result['n']
        records = result['records'][result['warmup']:]
        pick = statistics.fmean if amortised else statistics.median
        self.stages = {k: _us(pick([r[k] for r in records]))
                       for k in STAGE_COLUMNS + ('total', 'wall',
                                                 'libvirtd')}
        self.total = self.stages['total']
        self.per_instance = self.total / self.n if self.n else None
        # The floor's parts, then each measured tick priced with them:
        # the inputs, and what the agent could not avoid writing in that
        # very tick (ledger saves and snapshots on publishing ticks, the
        # share trees and counters it wrote).
        floors = result['floor']
        parts = {k: statistics.median(f[k] for f in floors)
                 for k in floors[0]}
        count = max(parts['instances'], 1)
        meta = parts['share_meta'] / count
        energy_file = max(parts['share_full'] - parts['share_meta'],
                          0) / (2 * count)
        inputs = parts['inputs'] + parts['stats_call']

        def price(r):
            share = r['share_instances'] * meta + \
                r['changed_counters'] * energy_file
            return share, (r['saves'] * parts['ledger']
                           + r['snapshot_writes'] * parts['snapshot'])

        priced = [price(r) for r in records]
        self.floor_parts = {k: _us(parts[k]) for k in (
            'inputs', 'stats_call', 'snapshot', 'ledger', 'share_full')}
        self.floor_parts['share'] = _us(pick([p[0] for p in priced]))
        self.floor_parts['outputs'] = _us(pick([p[1] for p in priced]))
        self.floor = _us(pick([inputs + a + b for a, b in priced]))
        self.ratio = self.total / self.floor if self.floor else None
        self.unavoidable_per_instance = statistics.fmean(
            r['share_instances'] + r['changed_counters']
            for r in records) / self.n if self.n else None
        self.ticks = len(records)
        self.publishing = sum(r['published'] for r in records)
        self.saves = statistics.fmean(r['saves'] for r in records)
        self.snapshots = statistics.fmean(r['snapshot_writes']
                                          for r in records)
        # Mean CPU of the ticks that published and of those that did not.
        self.by_kind = {}
        for published in (True, False):
            chosen = [r['total'] for r in records
                      if bool(r['published']) == published]
            self.by_kind[published] = (
                (_us(statistics.fmean(chosen)), len(chosen)) if chosen
                else None)
        # The garbage collector's share (spread over the stages), as a
        # mean over the measured ticks whatever the row's statistic: full
        # collections are rare and long.
        self.gc_us = _us(statistics.fmean(r.get('gc', 0) for r in records))
        self.gc_per_tick = [statistics.fmean(
            r.get('gc_collections', [0, 0, 0])[g] for r in records)
            for g in range(3)]
        self.mean_total = _us(statistics.fmean(r['total'] for r in records))
        self.gc_tracked = result.get('gc_tracked')
        self.gc_frozen = result.get('gc_frozen')
        rss = result['rss']
        self.rss = rss['peak_mb']
        self.standin_mb = rss.get('standin_mb')
        self.import_mb = rss['after_imports']
        self.rss_after = rss.get('rss_after_ticks')
        # The tick that reached the peak (0: the baseline tick).
        hwm = [r.get('hwm_mb') for r in result['records']]
        self.peak_tick = (hwm.index(max(hwm)) if all(
            h is not None for h in hwm) else None)
        first = result['records'][0]
        self.first = {k: _us(v) for k, v in first.items()
                      if k in STAGE_COLUMNS + ('total', 'wall')}
        self.files_per_instance = (statistics.fmean(
            r['share_files'] for r in records) / self.n if self.n else None)

    @property
    def mode_cell(self):
        if self.amortised:
            return 'min_interval %g s (mean; %d of %d ticks publish)' % (
                self.result['min_interval'], self.publishing, self.ticks)
        return 'every tick (median; %d of %d publish)' % (self.publishing,
                                                          self.ticks)

    @property
    def at_target_scale(self):
        return self.n == TARGET_SCALE

    def verdicts(self):
        """PASS (True) or MISS (False) per target; the µs target is the
        default configuration's only (None: not a target)."""
        return {
            'us': self.per_instance <= TARGET_US_PER_INSTANCE
            if self.amortised else None,
            'floor': self.ratio is not None
            and self.ratio <= TARGET_FLOOR_RATIO,
            'rss': self.rss <= TARGET_RSS_MB,
        }

    def target_cell(self):
        if not self.at_target_scale:
            return '—'
        v = self.verdicts()
        return ' · '.join(
            '%s %s' % (_verdict(v[key]), what)
            for key, what in (('us', 'µs'), ('floor', 'floor'),
                              ('rss', 'RSS')) if v[key] is not None)


def agent_table(rows):
    head = ('| scale | publication | energy µs | /proc/stat µs | '
            'inventory µs | attribution µs | ledger µs | save µs | '
            'report µs | snapshot µs | share µs | share files/inst | '
            'other µs | total µs/tick | µs/instance/tick | '
            'floor µs/tick | agent/floor | RSS MB | target (1000: '
            '≤80 MB, ≤2x floor; default also ≤25 µs/inst) |')
    lines = [head, _separator(head)]
    for row in rows:
        s = row.stages
        cells = [row.label, row.mode_cell] + [
            _fmt(s[k]) for k in ('energy', 'procstat', 'inventory',
                                 'attribution', 'ledger', 'save', 'report',
                                 'snapshot', 'share')] + [
            _fmt(row.files_per_instance, 2), _fmt(s['other']),
            _fmt(row.total), _fmt(row.per_instance, 1), _fmt(row.floor),
            _fmt(row.ratio, 2), _fmt(row.rss, 1), row.target_cell()]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def floor_table(rows):
    head = ('| scale | publication | inputs (RAPL + /proc/stat) µs | '
            'getAllDomainStats µs | ledger save (fsync) µs | saves/tick | '
            'snapshot µs | snapshots/tick | share files µs/tick | files it '
            'must replace /inst/tick | floor µs/tick | floor µs/instance | '
            'share if both counters and meta change µs |')
    lines = [head, _separator(head)]
    for row in rows:
        p = row.floor_parts
        cells = [row.label, row.mode_cell, _fmt(p['inputs']),
                 _fmt(p['stats_call']), _fmt(p['ledger']),
                 _fmt(row.saves, 2), _fmt(p['snapshot']),
                 _fmt(row.snapshots, 2), _fmt(p['share']),
                 _fmt(row.unavoidable_per_instance, 2), _fmt(row.floor),
                 _fmt(row.floor / row.n if row.n else None, 1),
                 _fmt(p['share_full'])]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


class PollRow:
    def __init__(self, result, label):
        self.label = label
        self.n = result['n']
        cycles = result['cycles']

        def med(key):
            return statistics.median(c[key] for c in cycles)

        self.ours_discovery = _us(med('ours_discovery'))
        self.ours_pollsters = _us(med('ours_pollsters'))
        self.ours = _us(med('ours'))
        self.ours_samples = med('ours_samples')
        self.cpu = _us(med('cpu'))
        self.cpu_samples = med('cpu_samples')
        self.ceilometer_discovery = _us(med('ceilometer_discovery'))
        self.ratio = self.ours / self.cpu if self.cpu else None
        both = self.cpu + self.ceilometer_discovery
        self.ratio_with_discovery = self.ours / both if both else None
        self.real = result['mode'] == 'real'
        self.libvirtd = {k: _us(med(k)) for k in (
            'ours_libvirtd', 'ceilometer_discovery_libvirtd',
            'cpu_libvirtd')}

    def target_cell(self):
        if self.ratio is None:
            return 'n/a'
        return _verdict(self.ratio <= TARGET_POLL_RATIO)


def poll_table(rows):
    head = ('| scale | ours: discovery µs | ours: 4 pollsters µs | ours '
            'µs/cycle | ours samples | `cpu` pollster µs/cycle | `cpu` '
            'samples | ours/`cpu` | target ≤0.2x | µs/sample ours · `cpu` '
            '| Ceilometer local_instances discovery µs | ours/(`cpu` + '
            'its discovery) | libvirtd CPU µs: ours · discovery · `cpu` |')
    lines = [head, _separator(head)]
    for row in rows:
        per_sample = '%s · %s' % (
            _fmt(row.ours / row.ours_samples if row.ours_samples else None,
                 1),
            _fmt(row.cpu / row.cpu_samples if row.cpu_samples else None, 1))
        daemon = ('%s · %s · %s' % tuple(_fmt(row.libvirtd[k]) for k in (
            'ours_libvirtd', 'ceilometer_discovery_libvirtd',
            'cpu_libvirtd')) if row.real else 'n/a (stand-in)')
        lines.append('| %s | %s | %s | %s | %d | %s | %d | %s | %s | %s | '
                     '%s | %s | %s |' % (
                         row.label, _fmt(row.ours_discovery),
                         _fmt(row.ours_pollsters), _fmt(row.ours),
                         row.ours_samples, _fmt(row.cpu), row.cpu_samples,
                         _fmt(row.ratio, 2), row.target_cell(), per_sample,
                         _fmt(row.ceilometer_discovery),
                         _fmt(row.ratio_with_discovery, 2), daemon))
    return '\n'.join(lines)
