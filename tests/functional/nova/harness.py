"""Nova's functional harness with scaphandre.LibvirtDriver, from outside.

``cases_servers.py`` boots servers through the Nova API (fakelibvirt); it
runs in child interpreters (tests/unit/nova/isolated.py says why). Other
tests use :func:`domain_xml` to get the domain XML the driver generates
for a server with the share, e.g. to define and boot it in a real
libvirtd; setting ``SCAPH_NOVA_XML_OUT`` to a path while the Nova tests
run saves the same XML there.
"""

import importlib.util
import os
import tempfile
import xml.etree.ElementTree as ET

from tests.unit.nova import isolated

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = os.path.join(HERE, 'cases_servers.py')
HANDOFF_CASES = os.path.join(HERE, 'cases_handoff.py')
XML_OUT_ENV = 'SCAPH_NOVA_XML_OUT'
VIRT_TYPE_ENV = 'SCAPH_NOVA_VIRT_TYPE'
XML_CASE = 'OptInTest.test_flavor_opt_in'
NOVA_XMLNS = 'http://openstack.org/xmlns/libvirt/nova/1.1'
REQUIRED = ('nova', 'placement', 'wsgi_intercept', 'oslotest', 'fixtures')


def unavailable_reason():
    """Why the harness cannot run here, or None."""
    missing = isolated.missing_modules(REQUIRED)
    if missing:
        return 'missing Python packages: %s' % ', '.join(missing)
    nova_dir = importlib.util.find_spec('nova').submodule_search_locations[0]
    if not os.path.exists(os.path.join(nova_dir, 'virt', 'scaphandre',
                                       '__init__.py')):
        return ('nova.virt.scaphandre is not installed: pip install '
                '--no-deps ./nova_shim')
    return None


def run_all(**kwargs):
    """isolated.Results of every case of cases_servers.py."""
    return isolated.run_cases(CASES, **kwargs)


def domain_xml(share_dir=None, virt_type='kvm', timeout=600):
    """The domain XML scaphandre.LibvirtDriver generated for a server
    booted through the Nova API with a flavor asking for the share.

    virt_type is nova.conf's [libvirt] virt_type (qemu for TCG guests).
    The virtiofs source is <export_dir>/<uuid> in a temporary directory of
    the run; share_dir, if given, replaces it. Disk and console paths
    point into the run's (deleted) instances directory. Raises
    RuntimeError when the harness cannot run or the boot fails.
    """
    reason = unavailable_reason()
    if reason:
        raise RuntimeError('the Nova harness cannot run: %s' % reason)
    with tempfile.TemporaryDirectory(prefix='scaph-nova-xml-') as tmp:
        out = os.path.join(tmp, 'domain.xml')
        results = isolated.run_cases(CASES, cases=[XML_CASE], shards=1,
                                     extra_env={XML_OUT_ENV: out,
                                                VIRT_TYPE_ENV: virt_type},
                                     timeout=timeout)
        if not os.path.exists(out):
            raise RuntimeError('no XML from %s:\n%s' % (
                XML_CASE, '\n'.join(results.outputs)[-isolated.OUTPUT_TAIL:]))
        with open(out) as f:
            xml = f.read()
    return retarget_share(xml, share_dir) if share_dir else xml


def retarget_share(xml, share_dir):
    """xml with the source of its virtiofs filesystem set to share_dir."""
    ET.register_namespace('nova', NOVA_XMLNS)  # keep Nova's prefix
    root = ET.fromstring(xml)
    for fs in root.iterfind('./devices/filesystem'):
        driver = fs.find('driver')
        if driver is not None and driver.get('type') == 'virtiofs':
            fs.find('source').set('dir', share_dir)
    return ET.tostring(root, encoding='unicode')
