"""Carbon counters through the real Ticker and Ledger (doc/carbon.md):
each tick's energy x PUE x the intensity in force at that tick, checked
against exact fractions computed here from the per-tick energies and the
file's entries, never total energy x today's intensity."""

import datetime
import fractions
import itertools
import json
import logging
import math
import os

from oslo_config import cfg
import pytest

from scaph_openstack.accounting import carbon as carbon_mod
from scaph_openstack.accounting import intensity as intensity_mod
from scaph_openstack import conf as scaph_conf
from scaph_openstack import ledger as ledger_mod
from scaph_openstack.publishers import snapshot as snapshot_pub
from tests.unit import test_tick_energy

F = fractions.Fraction
UJ_PER_KWH = 3_600_000_000_000
START = 1000.0     # fakes.Clock: the wall clock of the first tick


def iso(seconds):
    return datetime.datetime.fromtimestamp(
        seconds, datetime.timezone.utc).isoformat().replace('+00:00', 'Z')


def write_file(path, entries, extra=''):
    """entries {wall time: gCO2e/kWh}, written atomically as a cron job
    would (temp + rename)."""
    tmp = '%s.tmp' % path
    with open(tmp, 'w') as f:
        f.write('# time,gCO2e/kWh\n' + extra)
        for when, value in entries.items():
            f.write('%s,%s\n' % (iso(when), value))
    os.replace(tmp, path)


def in_force(entries, when):
    """The truth: the value of the latest entry not after ``when``."""
    times = [t for t in entries if t <= when]
    return entries[max(times)] if times else None


def make_conf(tmp_path, **accounting):
    """The agent's options with ``accounting`` in a config file (an
    override would outlive the test: option groups are shared)."""
    path = tmp_path / 'scaph-openstack.conf'
    path.write_text('[accounting]\n' + ''.join(
        '%s = %s\n' % item for item in accounting.items()))
    conf = cfg.ConfigOpts()
    scaph_conf.register_opts(conf)
    conf(['--config-file', str(path)], default_config_files=[])
    return conf


class CarbonHost(test_tick_energy.TwoSocketHost):
    """The two-socket host in the default configuration, plus
    [accounting] options; two instances, one pinned to each socket."""

    def __init__(self, tmp_path, **accounting):
        self.conf = make_conf(tmp_path, **accounting)
        self.accounting = carbon_mod.from_conf(self.conf)
        super().__init__(tmp_path)
        self.cpu = {'a': 0, 'b': 0}
        self.inventory.set('a', 0, cpus={0})
        self.inventory.set('b', 0, cpus={1})

    def new_ticker(self):
        ticker = super().new_ticker()
        ticker.accounting = self.accounting
        return ticker

    def step(self, joules, busy_a, busy_b):
        """2 s: ``joules`` per package, each instance busy for that many
        ns on its own CPU (the host a bit more)."""
        self.cpu['a'] += busy_a
        self.cpu['b'] += busy_b
        self.inventory.set('a', self.cpu['a'])
        self.inventory.set('b', self.cpu['b'])
        self.run(2, joules, busy=(busy_a + 10 ** 8, busy_b + 10 ** 8))

    def energies(self):
        """({uuid: published additive µJ}, {zone: measured µJ})."""
        led = self.ticker.ledger
        return ({u: ledger_mod.additive_total(r.published_kind_totals())
                 for u, r in led.instances.items()},
                {z.name: z.measured_uj for z in led.zones.values()})

    def report(self):
        return self.ticker.publishers[0].reports[-1]


class Truth:
    """Exact µg per instance and zone from per-tick energies."""

    def __init__(self, pue):
        self.pue = F(str(pue))
        self.instances, self.zones = {}, {}

    def ug(self, key, zones=False):
        return math.floor((self.zones if zones else self.instances)
                          .get(key, 0))


def run_ticks(host, truth, schedule, entries_at=None):
    """Tick through ``schedule`` [(joules, busy_a, busy_b)]; ``entries_at``
    {tick index: entries}: the file rewritten before that tick. The
    truth's intensity: what the entries in force say at the tick."""
    entries = None
    for index, (joules, busy_a, busy_b) in enumerate(schedule):
        if entries_at and index in entries_at:
            entries = entries_at[index]
            write_file(host.intensity_file, entries)
        before = host.energies()
        host.step(joules, busy_a, busy_b)
        host.ticker.tick()
        after = host.energies()
        truth_add(truth, before, after,
                  in_force(entries, host.clock.now) if entries else None)


def truth_add(truth, before, after, intensity):
    if intensity is None:
        return
    factor = truth.pue * F(str(intensity)) * 10 ** 6 / UJ_PER_KWH
    for mine, b, a in ((truth.instances, before[0], after[0]),
                       (truth.zones, before[1], after[1])):
        for key, uj in a.items():
            mine[key] = mine.get(key, 0) + (uj - b.get(key, 0)) * factor


# Power that varies tick by tick, and CPU time that varies with it.
SCHEDULE = [((20 + 7 * k, 35 - 2 * k), 10 ** 9 * (k % 3 + 1) // 3,
             10 ** 9 * ((k + 1) % 4) // 4) for k in range(12)]


def carbon_host(tmp_path, **accounting):
    path = str(tmp_path / 'intensity.csv')
    host = CarbonHost(tmp_path, carbon_intensity_file=path, **accounting)
    host.intensity_file = path
    return host


def test_carbon_is_integrated_tick_by_tick_with_the_intensity_then(
        tmp_path):
    host = carbon_host(tmp_path, pue=1.37)
    truth = Truth(1.37)
    # Forecast entries come into force as time passes; the job rewrites
    # the file twice, changing values already in force.
    first = {START - 10: 100.0, START + 7: 250.25, START + 13: 180.5}
    second = {**first, START + 13: 420.125, START + 17: 35.0}
    third = {START + 19: 612.75}
    write_file(host.intensity_file, first)
    host.ticker.tick()                              # the baseline
    run_ticks(host, truth, SCHEDULE, {0: first, 5: second, 9: third})
    led = host.ticker.ledger
    seen = set()
    for uuid in ('a', 'b'):
        assert truth.instances[uuid] > 1000          # something counted
        assert led.instances[uuid].published_carbon_ug() == \
            truth.ug(uuid)
        assert host.report().instances[uuid].carbon_ug == truth.ug(uuid)
        seen.add(truth.ug(uuid))
    for zone in ('package-0', 'package-1'):
        assert carbon_mod.ug(led.zones[zone].carbon_units) == \
            truth.ug(zone, zones=True)
    doc = snapshot_pub.build(host.report())
    assert doc['host_totals']['carbon_ug'] == sum(
        truth.ug(z, zones=True) for z in ('package-0', 'package-1'))
    assert {i['uuid']: i['carbon_ug'] for i in doc['instances']} == {
        u: truth.ug(u) for u in ('a', 'b')}
    assert (doc['carbon_intensity_g_per_kwh'], doc['carbon_intensity_source'],
            doc['carbon_intensity_since'], doc['pue']) == (
        612.75, 'file', START + 19, 1.37)
    # Energy meters stay measured joules: PUE is not in them.
    energy, measured = host.energies()
    assert doc['host_totals']['energy_uj'] == sum(measured.values())


def test_carbon_is_not_total_energy_times_the_final_intensity(tmp_path):
    host = carbon_host(tmp_path)
    truth = Truth(1.0)
    entries = {START: 50.0, START + 22: 800.0}
    write_file(host.intensity_file, entries)
    host.ticker.tick()
    run_ticks(host, truth, SCHEDULE, {0: entries})
    energy, _ = host.energies()
    for uuid in ('a', 'b'):
        carbon = host.report().instances[uuid].carbon_ug
        naive = F(energy[uuid]) * 800 * 10 ** 6 / UJ_PER_KWH
        assert carbon == truth.ug(uuid)
        assert carbon < naive * F(3, 4), (carbon, naive)


def test_static_intensity_and_pue(tmp_path):
    host = CarbonHost(tmp_path, carbon_intensity=321.5, pue=1.5)
    truth = Truth(1.5)
    host.ticker.tick()
    for joules, busy_a, busy_b in SCHEDULE:
        before = host.energies()
        host.step(joules, busy_a, busy_b)
        host.ticker.tick()
        truth_add(truth, before, host.energies(), 321.5)
    for uuid in ('a', 'b'):
        assert host.report().instances[uuid].carbon_ug == truth.ug(uuid)
    doc = snapshot_pub.build(host.report())
    assert (doc['carbon_intensity_g_per_kwh'], doc['carbon_intensity_source'],
            doc['carbon_intensity_since'], doc['pue']) == (
        321.5, 'static', None, 1.5)


def test_without_an_intensity_nothing_is_counted_or_published(tmp_path):
    host = CarbonHost(tmp_path, pue=1.2)
    host.ticker.tick()
    for joules, busy_a, busy_b in SCHEDULE[:3]:
        host.step(joules, busy_a, busy_b)
        host.ticker.tick()
    led = host.ticker.ledger
    assert all(r.carbon_units == 0 for r in led.instances.values())
    assert all(z.carbon_unknown_uj == 0 for z in led.zones.values())
    doc = snapshot_pub.build(host.report())
    assert 'carbon_ug' not in doc['instances'][0]
    assert 'carbon_ug' not in doc['host_totals']
    assert (doc['carbon_intensity_g_per_kwh'],
            doc['carbon_intensity_source'], doc['pue']) == (
        None, 'unknown', 1.2)


def intensity_logs(caplog):
    return [r for r in caplog.records
            if r.name == intensity_mod.__name__ and
            r.levelno >= logging.WARNING]


def test_bad_versions_are_logged_once_and_the_last_good_kept(
        tmp_path, caplog):
    host = carbon_host(tmp_path)
    truth = Truth(1.0)
    good = {START - 100: 200.0, START + 9: 300.0}
    write_file(host.intensity_file, good)
    host.ticker.tick()
    run_ticks(host, truth, SCHEDULE[:2], {0: good})
    bad_versions = [
        lambda p: write_file(p, good, extra='garbage\n'),
        lambda p: write_file(p, {START + 2: -5.0}),
        lambda p: write_file(p, {START + 2: 'nan'}),
        lambda p: open(p, 'w').write('2026-12-01T10:00:00,12\n'),  # no zone
        lambda p: None,             # missing (each version is removed)
        lambda p: os.mkdir(p),                        # not a regular file
    ]
    schedule = itertools.cycle(SCHEDULE)
    for bad in bad_versions:
        caplog.clear()
        bad(host.intensity_file)
        with caplog.at_level(logging.DEBUG):
            for _ in range(2):      # logged once, not once a tick
                joules, busy_a, busy_b = next(schedule)
                before = host.energies()
                host.step(joules, busy_a, busy_b)
                host.ticker.tick()
                # The last good version still says what is in force.
                truth_add(truth, before, host.energies(),
                          in_force(good, host.clock.now))
        logs = intensity_logs(caplog)
        assert len(logs) == 1, [r.getMessage() for r in logs]
        assert 'last good version (2 entries) stays in use' in \
            logs[0].getMessage()
        assert host.report().carbon_intensity.source == 'file'
        path = host.intensity_file
        if os.path.isdir(path):
            os.rmdir(path)
        elif os.path.exists(path):
            os.unlink(path)
    # Nothing was lost: every tick was counted at the intensity in force.
    for uuid in ('a', 'b'):
        assert host.report().instances[uuid].carbon_ug == truth.ug(uuid)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        write_file(host.intensity_file, {START: 10.0})
        host.step(*SCHEDULE[0])
        host.ticker.tick()
    assert 'usable again' in caplog.text
    assert host.report().carbon_intensity.g_per_kwh == 10.0


def test_the_file_is_parsed_only_when_it_changes(tmp_path, monkeypatch):
    host = carbon_host(tmp_path)
    write_file(host.intensity_file, {START: 100.0})
    parsed = []
    real = intensity_mod.read
    monkeypatch.setattr(intensity_mod, 'read',
                        lambda path: parsed.append(path) or real(path))
    host.ticker.tick()
    for step in SCHEDULE[:4]:
        host.step(*step)
        host.ticker.tick()
    assert len(parsed) == 1
    write_file(host.intensity_file, {START: 100.0, START + 9: 50.0})
    for step in SCHEDULE[:3]:
        host.step(*step)
        host.ticker.tick()
    assert len(parsed) == 2
    assert host.report().carbon_intensity.g_per_kwh == 50.0


def test_no_entry_in_force_yet_counts_no_carbon_and_says_unknown(
        tmp_path, caplog):
    host = carbon_host(tmp_path)
    truth = Truth(1.0)
    entries = {START + 9: 400.0}           # in force from the 5th tick
    write_file(host.intensity_file, entries)
    host.ticker.tick()
    with caplog.at_level(logging.WARNING):
        run_ticks(host, truth, SCHEDULE[:3], {0: entries})
    assert len(intensity_logs(caplog)) == 1
    assert 'no entry at or before now' in caplog.text
    led = host.ticker.ledger
    assert all(r.carbon_units == 0 for r in led.instances.values())
    unknown = sum(z.carbon_unknown_uj for z in led.zones.values())
    assert unknown == sum(z.measured_uj for z in led.zones.values()) > 0
    doc = snapshot_pub.build(host.report())
    assert (doc['carbon_intensity_g_per_kwh'],
            doc['carbon_intensity_source']) == (None, 'unknown')
    assert doc['instances'][0]['carbon_ug'] == 0
    assert doc['host_totals']['carbon_unknown_uj'] == unknown
    run_ticks(host, truth, SCHEDULE[3:8], {0: entries})
    assert host.report().carbon_intensity.source == 'file'
    for uuid in ('a', 'b'):
        assert host.report().instances[uuid].carbon_ug == truth.ug(uuid) > 0


def test_a_stale_file_falls_back_to_the_static_intensity(tmp_path, caplog):
    host = carbon_host(tmp_path, carbon_intensity=90.0,
                       carbon_intensity_max_age=5.0)
    write_file(host.intensity_file, {START: 500.0})
    host.ticker.tick()
    host.step(*SCHEDULE[0])
    host.ticker.tick()                     # START + 2: fresh
    assert host.report().carbon_intensity.g_per_kwh == 500.0
    with caplog.at_level(logging.WARNING):
        for step in SCHEDULE[1:5]:         # START + 8: stale
            host.step(*step)
            host.ticker.tick()
    assert len(intensity_logs(caplog)) == 1
    assert 'stale' in caplog.text and 'static' in caplog.text
    report = host.report()
    assert (report.carbon_intensity.g_per_kwh,
            report.carbon_intensity.source) == (90.0, 'static')


def test_carbon_survives_a_restart_and_an_older_ledger_loads(tmp_path):
    host = CarbonHost(tmp_path, carbon_intensity=400.0)
    host.ticker.tick()
    for step in SCHEDULE[:4]:
        host.step(*step)
        host.ticker.tick()
    saved = {u: r.carbon_units
             for u, r in host.ticker.ledger.instances.items()}
    assert all(saved.values())
    host.ticker = host.new_ticker()        # the agent restarts
    led = host.ticker.ledger
    assert {u: r.carbon_units for u, r in led.instances.items()} == saved
    host.ticker.tick()                     # a baseline: nothing added
    host.step(*SCHEDULE[4])
    host.ticker.tick()
    for uuid, units in saved.items():
        assert host.ticker.ledger.instances[uuid].carbon_units > units
    # A ledger written before carbon: every carbon counter starts at 0.
    with open(host.ledger_path) as f:
        doc = json.load(f)
    for item in doc['instances']:
        for key in ('carbon_units', 'held_carbon_ug'):
            del item[key]
    for zone in doc['zones']:
        del zone['carbon_units'], zone['carbon_unknown_uj']
    old = ledger_mod.Ledger.from_dict(doc)
    assert all(r.carbon_units == 0 and r.published_carbon_ug() == 0
               for r in old.instances.values())
    assert all(z.carbon_units == 0 for z in old.zones.values())


def test_a_new_epoch_resets_carbon(tmp_path):
    host = CarbonHost(tmp_path, carbon_intensity=400.0)
    host.ticker.tick()
    for step in SCHEDULE[:3]:
        host.step(*step)
        host.ticker.tick()
    assert host.ticker.ledger.instances['a'].carbon_units > 0
    led = ledger_mod.Ledger.load(host.ledger_path)
    led.source = 'simulated'               # counted with another source
    led.save(host.ledger_path)
    host.ticker = host.new_ticker()
    host.ticker.tick()
    led = host.ticker.ledger
    assert led.epoch == 2
    assert all(r.carbon_units == 0 for r in led.instances.values())
    assert all(z.carbon_units == 0 for z in led.zones.values())


@pytest.mark.parametrize('text,error', [
    ('', 'no entry'),
    ('# only a comment\n\n', 'no entry'),
    ('2026-12-01T10:00:00Z\n', 'line 1'),
    ('2026-12-01T10:00:00Z,1,2\n', 'line 1'),
    ('#\n2026-12-01T10:00:00Z,abc\n', 'line 2'),
    ('2026-12-01T10:00:00Z,-1\n', 'not an intensity'),
    ('2026-12-01T10:00:00Z,inf\n', 'not an intensity'),
    ('yesterday,1\n', 'not an ISO 8601 time'),
    ('2026-12-01T10:00:00,1\n', 'no time zone'),
    ('2026-12-01T10:00:00Z,1\n2026-12-01T11:00:00+01:00,2\n', 'twice'),
])
def test_parse_rejects(text, error):
    with pytest.raises(intensity_mod.IntensityFileError, match=error):
        intensity_mod.parse(text)


def test_parse_format():
    times, values = intensity_mod.parse(
        '# from the grid operator\n'
        '2026-12-01T11:00:00Z, 123.4\n'
        '\n'
        '  2026-12-01T10:00:00+00:00,0\n'
        '2026-12-01T12:30:00+02:00,99\n')
    assert values == [0.0, 99.0, 123.4]
    assert times[0] == datetime.datetime(
        2026, 12, 1, 10, tzinfo=datetime.timezone.utc).timestamp()
    assert times[1] == times[0] + 1800     # 10:30 UTC
