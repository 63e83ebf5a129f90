import io
import json
import time

from scaph_openstack import cli
from scaph_openstack import snapshot
from tests.unit import test_snapshot


def run(argv):
    out = io.StringIO()
    args = cli.build_parser().parse_args(argv)
    return args.func(args, out=out), out.getvalue()


def test_status_table_says_simulated(tmp_path):
    path = test_snapshot.written(tmp_path, now=time.time())
    code, out = run(['status', '--snapshot', path])
    assert code == 0
    assert 'SIMULATED' in out
    assert test_snapshot.test_share.UUID in out
    assert '5.0' in out  # joules


def test_status_json(tmp_path):
    path = test_snapshot.written(tmp_path, now=time.time())
    code, out = run(['status', '--json', '--snapshot', path])
    assert code == 0 and json.loads(out)['format'] == snapshot.FORMAT


def test_status_missing_and_stale(tmp_path, capsys):
    code, _ = run(['status', '--snapshot', str(tmp_path / 'x.json')])
    assert code == 2
    assert 'agent running' in capsys.readouterr().err
    path = test_snapshot.written(tmp_path, now=time.time() - 600)
    code, _ = run(['status', '--snapshot', path])
    assert code == 3
    assert 'not updating' in capsys.readouterr().err
