"""The integration tests' own lab (REPLIMESH_LAB=itest), up for the session, down after."""

import pytest

from fabfile.lab import control
from fabfile.lab.nodes import Lab, list_nodes

ITEST = Lab("itest")


@pytest.fixture(scope="session")
def lab():
    control.up(ITEST, 3)
    yield ITEST
    control.down(ITEST)


@pytest.fixture
def nodes(lab):
    """The lab's nodes, all running: a test that stops one gets it back for the next."""
    for node in list_nodes(lab):
        if node.state != "running":
            control.start(lab, node.name)
    return list_nodes(lab)
