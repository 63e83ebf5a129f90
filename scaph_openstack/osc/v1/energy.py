"""``openstack server energy show`` and ``openstack energy usage``.

Thin cliff commands over scaph_openstack.osc.usage (doc/cli.md). Numbers
print rounded, with "unknown", in tables, and as plain numbers (null when
unknown) with -f json/csv/yaml/value.
"""

import contextlib

from cliff import columns
from gnocchiclient import exceptions as gnocchi_exc
from osc_lib.command import command
from osc_lib import exceptions

from scaph_openstack.osc import usage

COLUMNS = (
    'ID', 'Name', 'Project', 'Source', 'Energy (kWh)', 'Average (W)',
    'Average over', 'Peak (W)', 'Dynamic (kWh)', 'Idle (kWh)',
    'Carbon (g CO2e)', 'Start', 'End', 'Seconds', 'Granularity (s)',
    'Counter resets',
)


class _Number(columns.FormattableColumn):
    """A number, or None shown as 'unknown' (json: null, never 0)."""
    FORMAT = '%.6f'

    def human_readable(self):
        if self._value is None:
            return 'unknown'
        return self.FORMAT % self._value

    def machine_readable(self):
        return self._value


class KWh(_Number):
    FORMAT = '%.6f'


class Watts(_Number):
    FORMAT = '%.2f'


class Grams(_Number):
    FORMAT = '%.2f'


class Text(columns.FormattableColumn):
    def human_readable(self):
        return 'unknown' if self._value is None else str(self._value)

    def machine_readable(self):
        return self._value


class Blank(columns.FormattableColumn):
    """Text, or None shown as nothing (json: null)."""

    def human_readable(self):
        return '' if self._value is None else str(self._value)

    def machine_readable(self):
        return self._value


def row(server, human=True):
    """The columns of one server (or the total). ``human``: cliff columns
    that print rounded, with 'unknown', in tables; else the plain values
    (cliff's csv formatter would write a column's None as "None" and
    quote its numbers)."""
    values = (
        server.id, Blank(server.name), Blank(server.project_id),
        Text(server.source),
        KWh(server.energy_kwh), Watts(server.average_w),
        Text(server.average_over), Watts(server.peak_w),
        KWh(server.dynamic_kwh), KWh(server.idle_kwh),
        Grams(server.carbon_g), usage.isoformat(server.start),
        usage.isoformat(server.end), Blank(usage.whole(server.seconds)),
        server.granularity, server.resets,
    )
    if human:
        return values
    return tuple(v.machine_readable()
                 if isinstance(v, columns.FormattableColumn) else v
                 for v in values)


def _human(parsed_args):
    return getattr(parsed_args, 'formatter', 'table') == 'table'


@contextlib.contextmanager
def _errors():
    try:
        yield
    except usage.UsageError as exc:
        raise exceptions.CommandError(str(exc))
    except gnocchi_exc.ClientException as exc:
        raise exceptions.CommandError('Gnocchi: %s' % exc)


def _window_options(parser):
    parser.add_argument(
        '--start', metavar='<time>', default=usage.DEFAULT_START,
        help='Start of the window: ISO 8601 (UTC when no zone is given) '
             'or relative to now (--start=-7d, -12h, -30m, -2w: with "=", '
             'as argparse takes -7d for an option). Default: %s. '
             'Rounded down to the granularity.' % usage.DEFAULT_START)
    parser.add_argument(
        '--end', metavar='<time>', default=None,
        help='End of the window (same forms, exclusive): the periods '
             'starting before it are counted. Default: now.')
    parser.add_argument(
        '--granularity', metavar='<seconds>', type=float, default=None,
        help="Period length, one of the archive policy's granularities. "
             "Default: the finest whose retention holds --start.")


class ShowServerEnergy(command.ShowOne):
    """Show a server's energy (kWh), average power and carbon from
    Gnocchi."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument('server', metavar='<server>',
                            help='Server (UUID or name)')
        _window_options(parser)
        return parser

    def take_action(self, parsed_args):
        client = self.app.client_manager.energy
        with _errors():
            span = usage.window(parsed_args.start, parsed_args.end)
            server = usage.server_energy(client, parsed_args.server, span,
                                         parsed_args.granularity)
        return COLUMNS, row(server, _human(parsed_args))


class ListEnergyUsage(command.Lister):
    """List the energy of servers, most first, and their total."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        parser.add_argument(
            '--project', metavar='<project-id>', default=None,
            help="Only this project's servers (an admin's choice: others "
                 "see their own project's only, as Gnocchi's policy says)")
        _window_options(parser)
        return parser

    def take_action(self, parsed_args):
        client = self.app.client_manager.energy
        with _errors():
            span = usage.window(parsed_args.start, parsed_args.end)
            servers, total = usage.usage(client, span, parsed_args.project,
                                         parsed_args.granularity)
        human = _human(parsed_args)
        return COLUMNS, [row(s, human) for s in servers] + [row(total,
                                                                  human)]
