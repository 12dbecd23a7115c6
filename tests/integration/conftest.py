"""The integration tests' labs, each up for the session and down after: itest (3 bare
nodes), imesh (4 nodes deployed with site.yml, shared by the mesh and membership
tests, which run in that order) and ifault (4 deployed nodes with short timeouts and no
cron rounds, shared by the chaos run, the fault tests and the swarm tests, in that order:
each resets what it needs; swarm offers travel by publish and by the rounds the tests
run). One deploy fewer keeps make test shorter. Each lab starts from nothing: containers
left by an earlier run that was cut short (a node5 the membership tests added, another
operator key) would change what the tests see."""

import pytest

from fabfile.lab import control
from fabfile.lab.nodes import Lab

from .helpers import playbook, running_nodes
from .mesh_lab import DEPLOY, FAULT, MESH, NO_WATCHER, Nodes, fresh_replicas

ITEST = Lab("itest")


def clean_lab(lab, count):
    """A lab of exactly `count` new nodes, whatever an earlier run left."""
    control.down(lab)
    control.up(lab, count)


@pytest.fixture(scope="session")
def lab():
    clean_lab(ITEST, 3)
    yield ITEST
    control.down(ITEST)


@pytest.fixture
def nodes(lab):
    return running_nodes(lab)


@pytest.fixture(scope="session")
def mesh():
    clean_lab(MESH, 4)
    playbook(MESH, "site.yml", *NO_WATCHER)   # its idempotence: molecule's check
    yield MESH
    control.down(MESH)


@pytest.fixture(scope="session")
def fault_lab():
    clean_lab(FAULT, 4)
    playbook(FAULT, "site.yml", *DEPLOY)
    nodes = Nodes(FAULT)
    for node in running_nodes(FAULT):
        nodes.on(node, "rm -f /etc/cron.d/replimesh")
    yield FAULT
    control.down(FAULT)


@pytest.fixture(scope="session")
def swarm_lab(fault_lab):
    """The fault tests' lab, its replicas emptied: what the swarm tests need of it."""
    fresh_replicas(fault_lab)
    return fault_lab
