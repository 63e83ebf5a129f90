"""The cliff side: the rows' columns print rounded with 'unknown' in
tables and as plain numbers or null in machine formats; the plugin
module has what openstackclient asks of one; errors exit 1."""

import datetime

from osc_lib import exceptions
import pytest

from scaph_openstack.osc import plugin
from scaph_openstack.osc import usage
from scaph_openstack.osc.v1 import energy

UTC = datetime.timezone.utc
T0 = datetime.datetime(2026, 11, 30, 10, 0, tzinfo=UTC)


def server(**changes):
    values = dict(id='u', name='web', project_id='p', source='rapl',
                  granularity=300, start=T0,
                  end=T0 + datetime.timedelta(hours=1), energy_j=36000.0,
                  dynamic_j=30000.0, idle_j=6000.0, carbon_g=None,
                  resets=0)
    values.update(changes)
    return usage.ServerEnergy(**values)


def human(value):
    return value.human_readable() if hasattr(value, 'human_readable') \
        else value


def machine(value):
    return value.machine_readable() if hasattr(value, 'machine_readable') \
        else value


def test_row_machine_and_human():
    row = dict(zip(energy.COLUMNS, energy.row(server()), strict=True))
    assert machine(row['Energy (kWh)']) == 0.01
    assert human(row['Energy (kWh)']) == '0.010000'
    assert machine(row['Average (W)']) == 10.0
    assert human(row['Average (W)']) == '10.00'
    assert machine(row['Average over']) == 'window'
    assert human(row['Peak (W)']) == 'unknown'
    assert machine(row['Peak (W)']) is None
    assert machine(row['Carbon (g CO2e)']) is None
    assert human(row['Carbon (g CO2e)']) == 'unknown'
    assert machine(row['Seconds']) == 3600
    assert row['Start'] == '2026-11-30T10:00:00Z'
    assert row['End'] == '2026-11-30T11:00:00Z'
    assert machine(row['Source']) == 'rapl'


def test_row_average_while_running():
    row = dict(zip(energy.COLUMNS, energy.row(server(
        power_w=11.8, power_over=usage.RUNNING, peak_w=12.25)),
        strict=True))
    assert human(row['Average (W)']) == '11.80'
    assert machine(row['Average over']) == 'running'
    assert human(row['Peak (W)']) == '12.25'
    assert machine(row['Seconds']) == 3600


def test_row_plain_values_for_machine_formats():
    row = dict(zip(energy.COLUMNS, energy.row(server(name=None), False),
                   strict=True))
    assert row['Energy (kWh)'] == 0.01 and row['Carbon (g CO2e)'] is None
    assert row['Name'] is None and row['Seconds'] == 3600
    assert row['Source'] == 'rapl'


def test_total_row():
    row = dict(zip(energy.COLUMNS, energy.row(usage.total([], 300)),
                   strict=True))
    assert row['ID'] == 'Total' and human(row['Name']) == 'Total'
    assert human(row['Project']) == '' and machine(row['Project']) is None
    assert human(row['Average (W)']) == 'unknown'
    assert human(row['Source']) == 'unknown'


def test_plugin_module():
    assert plugin.API_NAME == 'energy'
    assert plugin.API_VERSION_OPTION == 'os_energy_api_version'
    assert '1' in plugin.API_VERSIONS


def test_usage_error_is_a_command_error():
    with pytest.raises(exceptions.CommandError, match='nope'):
        with energy._errors():
            raise usage.UsageError('nope')
