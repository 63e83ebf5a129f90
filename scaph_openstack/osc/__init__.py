"""openstackclient plugin: `openstack server energy show` and
`openstack energy usage`, read from Gnocchi (doc/cli.md)."""
