"""Installs nova/virt/scaphandre/__init__.py, and nothing else of Nova's.

``pip install ./nova_shim`` puts that one package into the site-packages
Nova is installed in (Nova >= 31 has no namespace packages to merge). With
an editable Nova (devstack), link the directory into Nova's source tree
instead: see doc/nova.md.
"""

import setuptools

setuptools.setup(
    name='scaph-openstack-nova-shim',
    version='1.0.0',
    description='nova.virt.scaphandre: compute_driver entry for '
                'scaph-openstack',
    license='Apache-2.0',
    # Only the leaf package, mapped from this directory: the parents
    # (nova, nova.virt) are Nova's and must not be packaged here.
    packages=['nova.virt.scaphandre'],
    package_dir={'nova.virt.scaphandre': 'nova/virt/scaphandre'},
    python_requires='>=3.11',
)
