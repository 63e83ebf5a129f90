"""The Debian 13 stack (tests/functional/helpers/debian13.py) is started
once for the tests of this package and stopped after them: its daemons must
be gone before the host's libvirtd tests run (see that helper)."""

import pytest

from tests.functional.helpers import debian13


@pytest.fixture(scope='package')
def d13_stack():
    stack = debian13.ensure_stack()
    yield stack
    debian13.stop_stack()


@pytest.fixture(scope='package')
def d13_images(d13_stack):
    """(kernel, initrd) of the test guest, readable in both roots."""
    return d13_stack.images()
