import os

import pytest

from scaph_openstack.energy import base
from scaph_openstack.energy import rapl
from tests.unit import powercap


def zones(tmp_path):
    return {z.name: z for z in rapl.RaplSource(str(tmp_path)).read().zones}


def test_two_sockets_with_dram(tmp_path):
    powercap.intel_two_sockets(tmp_path)
    found = zones(tmp_path)
    assert sorted(found) == ['core-0', 'dram-0', 'dram-1', 'package-0',
                             'package-1']
    assert found['package-1'].socket == 1
    assert found['package-1'].energy_uj == 3000
    assert found['dram-1'].kind == 'dram'
    assert found['dram-0'].max_energy_range_uj == powercap.INTEL_RANGE


def test_client_with_psys(tmp_path):
    powercap.intel_client_with_psys(tmp_path)
    found = zones(tmp_path)
    assert found['psys'].kind == 'psys'
    assert found['psys'].energy_uj == 9000
    assert found['uncore-0'].kind == 'uncore'


def test_amd_has_no_dram(tmp_path):
    powercap.amd_epyc(tmp_path)
    found = zones(tmp_path)
    assert sorted(found) == ['core-0', 'package-0', 'package-1']
    assert found['package-0'].max_energy_range_uj == powercap.AMD_RANGE


def test_ignores_other_powercap_drivers(tmp_path):
    powercap.amd_epyc(tmp_path)
    os.makedirs(tmp_path / 'dtpm')
    powercap.write_zone(tmp_path, 'intel-rapl-mmio:0', 'package-0', 1)
    assert 'package-0' in zones(tmp_path)
    assert len(zones(tmp_path)) == 3


def test_no_rapl_is_a_clear_error(tmp_path):
    with pytest.raises(base.EnergySourceError, match='no intel-rapl zone'):
        rapl.RaplSource(str(tmp_path))
    with pytest.raises(base.EnergySourceError, match='cannot list'):
        rapl.RaplSource(str(tmp_path / 'missing'))


def test_garbage_in_one_zone_is_that_zones_error(tmp_path):
    powercap.intel_two_sockets(tmp_path)
    (tmp_path / 'intel-rapl:1' / 'energy_uj').write_text('banana\n')
    reading = rapl.RaplSource(str(tmp_path)).read()
    assert 'package-1' not in reading.by_name()
    assert 'banana' in reading.errors['package-1']
    assert reading.by_name()['package-0'].energy_uj == 1000


@pytest.mark.parametrize('garbage', ['', '-5\n', '12abc', '\x00\x01',
                                     '1e9\n'])
def test_garbage_values_are_rejected(tmp_path, garbage):
    powercap.write_zone(tmp_path, 'intel-rapl:0', 'package-0', 1)
    (tmp_path / 'intel-rapl:0' / 'energy_uj').write_text(garbage)
    with pytest.raises(base.EnergySourceError, match='no readable RAPL'):
        rapl.RaplSource(str(tmp_path)).read()


def _read_as_nobody(source):
    """Run source.read() in a child that dropped root, like a packaged
    agent without privsep would run. Returns the error text."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        message = b'no error'
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            source.read()
        except rapl.UnreadableCounter as exc:
            message = str(exc).encode()
        except BaseException as exc:  # report anything else as a failure
            message = ('unexpected %r' % exc).encode()
        os.write(write_fd, message)
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, 'rb') as f:
        message = f.read().decode()
    os.waitpid(pid, 0)
    return message


@pytest.mark.skipif(os.geteuid() != 0, reason='needs root to drop it')
def test_root_only_energy_uj_names_file_and_fix(tmp_path):
    powercap.intel_two_sockets(tmp_path)
    os.chmod(tmp_path, 0o755)
    os.chmod(tmp_path.parent, 0o755)
    for zone in os.listdir(tmp_path):
        os.chmod(tmp_path / zone / 'energy_uj', 0o400)
    message = _read_as_nobody(rapl.RaplSource(str(tmp_path)))
    assert 'energy_uj is not readable' in message
    assert 'intel-rapl:0/energy_uj' in message
    assert 'CVE-2020-8694' in message and 'use_privsep' in message


def test_privileged_reader_used_when_permission_denied(tmp_path,
                                                      monkeypatch):
    powercap.intel_two_sockets(tmp_path)
    seen = []
    original = rapl._read_text

    def deny_energy(path):
        if path.endswith('energy_uj'):
            raise PermissionError(13, 'Permission denied', path)
        return original(path)

    monkeypatch.setattr(rapl, '_read_text', deny_energy)
    source = rapl.RaplSource(str(tmp_path),
                             privileged_reader=lambda p: seen.append(p)
                             or '42\n')
    assert {z.energy_uj for z in source.read().zones} == {42}
    assert len(seen) == 5


class TestCounterDelta:
    def test_plain(self):
        assert base.counter_delta(100, 250, 1000) == 150

    def test_wrap_is_exact(self):
        assert base.counter_delta(900, 50, 1000) == 150

    def test_wrap_to_exactly_zero(self):
        assert base.counter_delta(999, 0, 1000) == 1

    def test_unchanged(self):
        assert base.counter_delta(5, 5, 1000) == 0

    def test_two_wraps_in_a_long_pause_with_expected_energy(self):
        # 2.5 ranges of energy went by; the counter alone shows 0.5.
        assert base.counter_delta(0, 500, 1000) == 500
        assert base.counter_delta(0, 500, 1000, expected_uj=2400) == 2500

    def test_expected_never_removes_energy(self):
        assert base.counter_delta(0, 900, 1000, expected_uj=10) == 900
