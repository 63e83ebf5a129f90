"""openstackclient plugin module (entry point ``openstack.cli.extension``).

The commands read Gnocchi, the ``metric`` service of the catalog, with the
user's own Keystone session: Gnocchi's policy decides what they see (a
member their project's servers, an admin every project's).
"""

from osc_lib import utils

DEFAULT_API_VERSION = '1'
API_VERSION_OPTION = 'os_energy_api_version'
API_NAME = 'energy'
API_VERSIONS = {
    '1': 'gnocchiclient.v1.client.Client',
}


def make_client(instance):
    """A gnocchiclient on the user's session.

    The endpoint is the catalog's ``metric`` service (interface and region
    as openstackclient was given them); with gnocchiclient's own auth types
    (gnocchi-noauth, gnocchi-basic) the auth plugin gives the endpoint.
    """
    client_class = utils.get_client_class(
        API_NAME, instance._api_version[API_NAME], API_VERSIONS)
    instance.setup_auth()
    return client_class(session=instance.session,
                        adapter_options={
                            'service_type': 'metric',
                            'interface': instance.interface,
                            'region_name': instance.region_name,
                        })


def build_option_parser(parser):
    parser.add_argument(
        '--os-energy-api-version',
        metavar='<energy-api-version>',
        default=utils.env('OS_ENERGY_API_VERSION',
                          default=DEFAULT_API_VERSION),
        help='Energy API version, default=%s (Env: OS_ENERGY_API_VERSION)'
             % DEFAULT_API_VERSION)
    return parser
