"""A real Gnocchi (tools/gnocchi-stack) for the functional tests.

The stack runs Gnocchi's keystone auth mode with the API trusting the
identity headers that keystonemiddleware would set (no Keystone here), so
Gnocchi's own policy scopes each caller to their project: gnocchiclient's
``gnocchi-noauth`` auth type sends those headers, in Python
(``client()``) and on the command line (``cli_auth()``).

Every test makes its own resources (random UUIDs and projects), so runs
share one database without seeing each other's data.
"""

import os
import subprocess
import time
import uuid

import yaml

from tests.functional.helpers import agent as agentlib
from tests.functional.helpers import ceilometer as ceilolib
from tests.functional.helpers import require

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
STACK = os.path.join(ROOT, 'tools', 'gnocchi-stack')
ADMIN = {'user_id': 'scaph-test-admin', 'project_id': 'scaph-test-admin',
         'roles': 'admin'}


class Gnocchi:
    def __init__(self, endpoint, conf):
        self.endpoint = endpoint
        self.conf = conf

    def client(self, user_id=None, project_id=None, roles='member'):
        """gnocchiclient as that user of that project (admin by default)."""
        from gnocchiclient import auth
        from gnocchiclient import client
        from keystoneauth1 import session
        if user_id is None:
            user_id, project_id, roles = (ADMIN['user_id'],
                                          ADMIN['project_id'], 'admin')
        plugin = auth.GnocchiNoAuthPlugin(user_id, project_id, roles,
                                          self.endpoint)
        return client.Client('1', session=session.Session(auth=plugin))

    def cli_auth(self, user_id=None, project_id=None, roles='member'):
        """The options giving a command (openstack, scaph-openstack
        telemetry-setup) that identity: keystoneauth's arguments for
        gnocchiclient's gnocchi-noauth plugin."""
        if user_id is None:
            user_id, project_id, roles = (ADMIN['user_id'],
                                          ADMIN['project_id'], 'admin')
        return ['--os-auth-type', 'gnocchi-noauth', '--user-id', user_id,
                '--project-id', project_id, '--roles', roles,
                '--endpoint', self.endpoint]

    def ceilometer_credentials(self):
        """[service_credentials] for Ceilometer's gnocchi:// publisher and
        ceilometer-upgrade: the admin, through the same plugin."""
        return {'auth_type': 'gnocchi-noauth', 'user_id': ADMIN['user_id'],
                'project_id': ADMIN['project_id'], 'roles': 'admin',
                'endpoint': self.endpoint}

    def ceilometer_upgrade(self, tmp_path):
        """Ceilometer's own resource types (instance, ...), as devstack's
        Ceilometer plugin creates them."""
        conf = agentlib.write_config(
            os.path.join(str(tmp_path), 'ceilometer-upgrade.conf'),
            {'service_credentials': self.ceilometer_credentials()})
        run([agentlib.venv_bin('ceilometer-upgrade'), '--config-file', conf,
             '--retry', '3'], timeout=180)

    def telemetry_setup(self):
        """Our command: archive policies, energy_zone, the instance's
        energy_source attribute. Returns its output."""
        return run([agentlib.venv_bin('scaph-openstack'), 'telemetry-setup',
                    *self.cli_auth()], timeout=120).stdout

    def wait_processed(self, client, metric_ids, timeout=60):
        """Until metricd has aggregated every measure posted so far for
        ``metric_ids`` (Gnocchi's refresh does it in the API otherwise)."""
        deadline = time.monotonic() + timeout
        while True:
            status = client.status.get()
            pending = status['storage']['summary']['measures']
            if not pending:
                return
            if time.monotonic() > deadline:
                raise AssertionError('Gnocchi still has %d measures to '
                                     'process' % pending)
            time.sleep(0.5)


def resources_definition(directory):
    """Ceilometer's own gnocchi_resources.yaml with our snippet appended,
    as doc/ceilometer.md tells an operator to do; its path."""
    from ceilometer.publisher import gnocchi as publisher
    default = os.path.join(os.path.dirname(publisher.__file__), 'data',
                           'gnocchi_resources.yaml')
    with open(default) as f:
        merged = yaml.safe_load(f)
    with open(os.path.join(ROOT, 'etc', 'ceilometer',
                           'gnocchi_resources.yaml')) as f:
        ours = yaml.safe_load(f)
    merged['resources'].extend(ours['resources'])
    merged['archive_policies'].extend(ours['archive_policies'])
    path = os.path.join(str(directory), 'gnocchi_resources.yaml')
    with open(path, 'w') as f:
        yaml.safe_dump(merged, f)
    return path


def notification_agent(directory, transport_url, stack, file_out=None):
    """ceilometer-agent-notification (not started) publishing our meters
    with Ceilometer's gnocchi:// publisher to ``stack`` (and, with
    ``file_out``, as JSON lines to that file too)."""
    directory = str(directory)
    os.makedirs(directory, exist_ok=True)
    # No Keystone: the publisher cannot look up the "service" project
    # whose samples it would filter out, so that filter is off.
    publishers = ['gnocchi://?enable_filter_project=false&'
                  'resources_definition_file=%s' % resources_definition(
                      directory)]
    if file_out:
        publishers.append('file://%s?json' % file_out)
    pipeline = {'sources': [{'name': 'scaph_source',
                             'meters': list(ceilolib.METERS),
                             'sinks': ['scaph_sink']}],
                'sinks': [{'name': 'scaph_sink',
                           'publishers': publishers}]}
    pipeline_path = os.path.join(directory, 'pipeline.yaml')
    with open(pipeline_path, 'w') as f:
        yaml.safe_dump(pipeline, f)
    conf = agentlib.write_config(
        os.path.join(directory, 'ceilometer.conf'), {
            'DEFAULT': {'transport_url': transport_url,
                        'pipeline_cfg_file': pipeline_path,
                        'log_file': os.path.join(directory,
                                                 'notification.log')},
            'notification': {'pipelines': 'meter', 'workers': 1},
            'service_credentials': stack.ceilometer_credentials(),
        })
    return agentlib.ManagedProcess(
        [ceilolib.ceilometer_bin('ceilometer-agent-notification'),
         '--config-file', conf],
        os.path.join(directory, 'notification.out'))


def run(argv, timeout, env=None):
    proc = subprocess.run(argv, capture_output=True, text=True,
                          timeout=timeout, env=env)
    if proc.returncode:
        raise AssertionError('%s exited %s:\n%s\n%s' % (
            ' '.join(argv[:3]), proc.returncode, proc.stdout[-3000:],
            proc.stderr[-3000:]))
    return proc


class StackError(RuntimeError):
    pass


def start_stack():
    """Start tools/gnocchi-stack (if needed); the Gnocchi. StackError
    when it cannot start."""
    proc = subprocess.run(['bash', STACK, 'start'], capture_output=True,
                          text=True, timeout=300)
    if proc.returncode:
        raise StackError('tools/gnocchi-stack start failed:\n%s'
                         % proc.stderr[-3000:])
    env = subprocess.run(['bash', STACK, 'env'], capture_output=True,
                         text=True, check=True).stdout
    values = dict(line.split('=', 1) for line in env.split())
    return Gnocchi(values['GNOCCHI_ENDPOINT'], values['GNOCCHI_CONF'])


def stack_running():
    """Whether tools/gnocchi-stack's API runs now."""
    status = subprocess.run(['bash', STACK, 'status'], capture_output=True,
                            text=True, timeout=60).stdout
    return 'api: running' in status


def stop_stack():
    subprocess.run(['bash', STACK, 'stop'], capture_output=True,
                   timeout=120, check=True)


def ensure_gnocchi():
    """The stack, started if needed (root; PostgreSQL from Debian's
    packages and gnocchi in the virtualenv: tools/install-deps); skipped
    where it cannot run (a failure when CI=true)."""
    require(os.geteuid() == 0, 'the Gnocchi stack runs PostgreSQL as root')
    require(agentlib.venv_bin('gnocchi-api') is not None,
            'gnocchi is not installed (tools/install-deps)')
    try:
        return start_stack()
    except StackError as exc:
        require(False, str(exc))


def new_project():
    return uuid.uuid4().hex
