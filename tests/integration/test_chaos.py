"""A short seeded chaos run (tests/integration/chaos.py) on the fault tests' lab, then
proof that its checks see a lost write and an undone deletion planted on purpose.

The seed comes from REPLIMESH_CHAOS_SEED (the steps from REPLIMESH_CHAOS_STEPS); a
failure names it with the command that replays the run on a lab of its own. Longer runs
over many seeds: `make chaos`.
"""

import os
import shlex

import pytest

from .chaos import Workload, replay_command
from .mesh_lab import ROOT, Nodes

SEED = int(os.environ.get("REPLIMESH_CHAOS_SEED", "7"))
STEPS = int(os.environ.get("REPLIMESH_CHAOS_STEPS", "25"))


@pytest.fixture(scope="module")
def run(fault_lab):
    """The workload after its run, and what its checks found then."""
    workload = Workload(fault_lab, SEED, STEPS, replay=replay_command(SEED, STEPS))
    return workload, workload.run()


def test_a_seeded_random_workload_loses_no_write_and_undoes_no_deletion(run):
    _, outcome = run
    assert outcome.ok, "\n".join(outcome.findings)


def test_the_checks_report_a_planted_loss_and_a_planted_resurrection(fault_lab, run):
    workload, outcome = run
    history, nodes = workload.history, Nodes(fault_lab)
    reported = "\n".join(outcome.findings)
    writes = [c for c in history.changes if c.kind == "write" and c.seen
              and len(history.destroyed.get(c.content, ())) < 2 and c.describe() not in reported
              and any(c.content in held for held in outcome.anywhere.values())]
    deletions = [c for c in history.changes if c.kind == "delete" and c.seen
                 and c.describe() not in reported and writes and c.content != writes[0].content]
    assert writes and deletions, f"seed {SEED}: nothing seen to plant on; try another seed"
    lost, undone = writes[0], deletions[0]
    target = shlex.quote(f"{ROOT}/{undone.path}")
    for node in workload.up():
        address = workload.node(node)
        # The lost write's content goes from everywhere, backup area and copies included.
        nodes.on(address, f"grep -rlxZF -- {shlex.quote(lost.content)} {ROOT} | xargs -0r rm")
        nodes.on(address, f"mkdir -p \"$(dirname {target})\" && "
                          f"printf %s {shlex.quote(undone.content)} > {target}")
    found = "\n".join(workload.check())
    assert f"invariant 2 (seen write lost): {lost.describe()}" in found, found
    assert f"invariant 3 (deletion undone): {undone.describe()}" in found, found
