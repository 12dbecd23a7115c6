"""The integration tests' labs, each up for the session and down after: itest (3 bare
nodes) and imesh (4 nodes deployed with site.yml, shared by the mesh and membership
tests, which run in that order)."""

import pytest

from fabfile.lab import control
from fabfile.lab.nodes import Lab

from .helpers import playbook, running_nodes
from .mesh_lab import MESH

ITEST = Lab("itest")


@pytest.fixture(scope="session")
def lab():
    control.up(ITEST, 3)
    yield ITEST
    control.down(ITEST)


@pytest.fixture
def nodes(lab):
    return running_nodes(lab)


@pytest.fixture(scope="session")
def mesh():
    control.up(MESH, 4)
    first = playbook(MESH, "site.yml")
    yield {"first_run": first}
    control.down(MESH)
