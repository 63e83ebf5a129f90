import pytest

from ceilometer import service

from scaph_openstack.ceilometer import discovery
from scaph_openstack import snapshot
from scaph_openstack.conf import ceilometer as scaph_conf


@pytest.fixture(scope='session')
def _ceilometer_conf():
    # The ConfigOpts ceilometer-polling builds, without config files.
    conf = service.prepare_service([], [])
    scaph_conf.register_opts(conf)
    conf.set_override('host', 'compute-1')
    return conf


@pytest.fixture
def conf(_ceilometer_conf, tmp_path):
    _ceilometer_conf.set_override('snapshot_path',
                                  str(tmp_path / 'snapshot.json'),
                                  group='scaphandre')
    yield _ceilometer_conf
    _ceilometer_conf.clear_override('snapshot_path', group='scaphandre')


@pytest.fixture(autouse=True)
def _fresh_health():
    # The health log is per process, like in ceilometer-polling: each test
    # starts as a freshly started polling agent.
    discovery.HEALTH.clear()
    yield
    discovery.HEALTH.clear()


@pytest.fixture
def reads(monkeypatch):
    """Counts snapshot.read calls (the file open and JSON parse)."""
    calls = []
    real = snapshot.read

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(snapshot, 'read', counting)
    return calls
