"""The integration tests' own lab (REPLIMESH_LAB=itest), up for the session, down after."""

import pytest

from fabfile.lab import control
from fabfile.lab.nodes import Lab

from .helpers import running_nodes

ITEST = Lab("itest")


@pytest.fixture(scope="session")
def lab():
    control.up(ITEST, 3)
    yield ITEST
    control.down(ITEST)


@pytest.fixture
def nodes(lab):
    return running_nodes(lab)
