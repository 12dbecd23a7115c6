"""A seeded random workload on a deployed 4-node lab, then checks that no data was lost
and that no deletion was undone (issue "Deletions stay deleted", item 4).

The model (History, the check functions) takes plain data, so tests/unit checks it on
hand-made histories; Workload drives a lab over real SSH and feeds the model what it did
and what each round reported.

    python -m tests.integration.chaos --seed 1 2 3 --steps 60 [--lab chaos] [--keep]
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field

from fabfile.lab import access, control, faults
from fabfile.lab.nodes import Lab, list_nodes

from .helpers import playbook, wait_until
from .mesh_lab import BACKUP, DEPLOY, HOME, ROOT, Nodes, fresh_replicas

DEFAULT_LAB = "chaos"
NODE_NAMES = ("node1", "node2", "node3", "node4")
DIRS = ("", "d0", "d1", "d2", "d3", "d0/d1", "d1/d2", "d3/d0")
FILES = ("f0.txt", "f1.txt", "f2.txt", "f3")
# Step kinds and their weights: a round (foreground or killed) every 3 to 4 steps.
KINDS = {"write": 5, "edit": 4, "rename": 2, "delete": 3, "rmdir": 1, "conflict": 2,
         "round": 7, "killed": 1, "stop-start": 1, "partition-heal": 1}
MAX_DOWN = 2
RMDIR_MAX_FILES = 3  # keeps clear of the deletion guard (10 files and half of them)
KILL_GRACE_S = 0.5   # a killed round's Unison should be gone by then (it dies with it)


# ---- the model: plain data in, findings out --------------------------------------------

@dataclass
class Change:
    """A write or a deletion the workload made at path on node, and whether a round that
    synced node completed before the next local change of path there (it was seen)."""
    kind: str      # write | delete
    step: int
    node: str
    path: str
    content: str
    open: bool = True
    seen: str = ""  # how it was seen: "step 12, round on node3"

    def describe(self) -> str:
        verb = "write of" if self.kind == "write" else "deletion of"
        return f"step {self.step}: {verb} {self.path} = {self.content!r} on {self.node}"


@dataclass
class History:
    changes: list[Change] = field(default_factory=list)
    # content -> nodes where the workload itself overwrote or deleted it
    destroyed: dict[str, set[str]] = field(default_factory=dict)

    def _local_change(self, node: str, path: str) -> None:
        for change in self.changes:
            if change.open and change.node == node and change.path == path:
                change.open = False

    def _destroy(self, node: str, content: str | None) -> None:
        if content is not None:
            self.destroyed.setdefault(content, set()).add(node)

    def write(self, step: int, node: str, path: str, content: str,
              replaced: str | None = None) -> Change:
        """content written at path on node, over replaced (what was there, if anything)."""
        self._local_change(node, path)
        self._destroy(node, replaced)
        change = Change("write", step, node, path, content)
        self.changes.append(change)
        return change

    def delete(self, step: int, node: str, path: str, content: str) -> Change:
        self._local_change(node, path)
        self._destroy(node, content)
        change = Change("delete", step, node, path, content)
        self.changes.append(change)
        return change

    def rename(self, step: int, node: str, old: str, new: str, content: str) -> None:
        """A rename is a deletion of the old path and a write of the new one; the content
        itself lives on."""
        self._local_change(node, old)
        self.changes.append(Change("delete", step, node, old, content))
        self.write(step, node, new, content)

    def round(self, step: int, node: str, peers: dict[str, str] | None) -> set[str]:
        """A completed round on node, peers {peer: result} from its JSON (None if it
        printed none); marks seen every open change of the nodes it synced."""
        synced = {peer for peer, result in (peers or {}).items() if result == "ok"}
        if synced:
            synced.add(node)
        for change in self.changes:
            if change.open and not change.seen and change.node in synced:
                change.seen = f"step {step}, round on {node}"
        return synced

    def lost_writes(self, anywhere: dict[str, set[str]]) -> list[str]:
        """Invariant 2: each seen write's content is somewhere at the end (live, a conflict
        copy or a backup), unless the workload itself removed it on two nodes or more (a
        seen write is on two nodes at least, so one local removal cannot lose it)."""
        held = set().union(*anywhere.values()) if anywhere else set()
        lost = []
        for change in self.changes:
            if change.kind != "write" or not change.seen or change.content in held:
                continue
            if len(self.destroyed.get(change.content, ())) >= 2:
                continue
            lost.append(f"invariant 2 (seen write lost): {change.describe()}, seen at "
                        f"{change.seen}: its content is on no node, not even as a conflict "
                        f"copy or under {BACKUP}")
        return lost

    def resurrected(self, trees: dict[str, dict[str, str]]) -> list[str]:
        """Invariant 3: no seen deletion leaves its path live again with the deleted
        content on any node."""
        back = []
        for change in self.changes:
            if change.kind != "delete" or not change.seen:
                continue
            holders = sorted(n for n, tree in trees.items()
                             if tree.get(change.path) == change.content)
            if holders:
                back.append(f"invariant 3 (deletion undone): {change.describe()}, seen at "
                            f"{change.seen}: {change.path} holds that content again on "
                            f"{', '.join(holders)}; see the rounds after step {change.step} "
                            f"and {ROOT}/{BACKUP}")
        return back


def differing_trees(trees: dict[str, dict[str, str]]) -> list[str]:
    """Invariant 1: every node holds the same paths with the same contents."""
    every = sorted(set().union(*trees.values())) if trees else []
    found = []
    for path in every:
        versions = {node: tree.get(path) for node, tree in trees.items()}
        if len(set(versions.values())) > 1:
            shown = ", ".join(f"{n}: {v!r}" for n, v in sorted(versions.items()))
            found.append(f"invariant 1 (trees differ): {path}: {shown}")
    return found


def leftovers(processes: dict[str, str], temporary: dict[str, list[str]],
              final_rounds: list[tuple[str, int, str]]) -> list[str]:
    """Invariant 4: no Unison left running, no temporary file left behind, every final
    round exited 0. processes: node -> `pgrep -a` output; temporary: node -> paths;
    final_rounds: (node, exit code, output)."""
    found = [f"invariant 4 (unison left running) on {node}: {text.strip()}"
             for node, text in sorted(processes.items()) if text.strip()]
    found += [f"invariant 4 (temporary files left) on {node}: {', '.join(paths)}"
              for node, paths in sorted(temporary.items()) if paths]
    found += [f"invariant 4 (final round failed): round on {node} exited {code}: "
              f"{output.strip()[-1500:]}"
              for node, code, output in final_rounds if code != 0]
    return found


def parse_dump(text: str) -> dict[str, str]:
    """{path: content} from `find -print0` paths each followed by its content and a NUL."""
    fields = text.split("\0")
    return {path.removeprefix("./"): content
            for path, content in zip(fields[0:-1:2], fields[1::2])}


def split_dump(files: dict[str, str]) -> tuple[dict[str, str], set[str], list[str]]:
    """A root's files -> (live tree, every content held, Unison temporary files): the
    backup area is left out of the tree but counts for what is held."""
    tree, temporary = {}, []
    for path, content in files.items():
        if path == BACKUP or path.startswith(BACKUP + "/"):
            continue
        if path.rsplit("/", 1)[-1].startswith(".unison."):
            temporary.append(path)
        else:
            tree[path] = content
    return tree, set(files.values()), temporary


# ---- the workload on a lab --------------------------------------------------------------

def replay_command(seed: int, steps: int, lab_name: str = DEFAULT_LAB,
                   watch: bool = False) -> str:
    lab = f" --lab {lab_name}" if lab_name != DEFAULT_LAB else ""
    return (f"python -m tests.integration.chaos --seed {seed} --steps {steps}{lab}"
            + (" --watch" if watch else ""))


def reset(lab: Lab) -> None:
    """Every node running, linked, unshaped, with no Unison left, empty replicas and no
    history (Unison archives, replica records, backups)."""
    fresh_replicas(lab)


@dataclass
class Outcome:
    seed: int
    steps: int
    findings: list[str]
    seconds: float
    # Left out of the repr, which pytest shows when a test fails: the findings say it all.
    history: History = field(repr=False)
    trees: dict[str, dict[str, str]] = field(repr=False)
    anywhere: dict[str, set[str]] = field(repr=False)

    @property
    def ok(self) -> bool:
        return not self.findings


class Workload:
    """One seeded run on a deployed lab: steps picked by random.Random(seed), each logged
    with its number so that a finding can be traced to what made it."""

    def __init__(self, lab: Lab, seed: int, steps: int, log=None, replay: str = "",
                 watch: bool = False):
        self.lab, self.seed, self.steps = lab, seed, steps
        # Watchers on every node during the steps (stopped before the final rounds, so
        # that the checks see no round of theirs under way).
        self.watch = watch
        self.log = log or functools.partial(print, flush=True)  # a live log, even piped
        self.nodes = Nodes(lab)
        self.random = random.Random(seed)
        self.history = History()
        self.counter = 0
        self.step = 0
        self.down: set[str] = set()
        self.groups: list[list[str]] | None = None
        self.findings: list[str] = []
        self.by_name: dict = {}  # name -> Node, read from the lab once
        self.known_paths: list[str] = []  # every path the workload wrote, for reuse
        self.replay = replay or replay_command(seed, steps, lab.name, watch)
        self.trees: dict[str, dict[str, str]] = {}   # at the end: node -> live tree
        self.anywhere: dict[str, set[str]] = {}      # at the end: node -> contents held

    # -- helpers on nodes

    def node(self, name):
        """The lab's node by name (addresses are fixed: stopping one keeps its own)."""
        if name not in self.by_name:
            self.by_name = {n.name: n for n in list_nodes(self.lab)}
        return self.by_name[name]

    def up(self) -> list[str]:
        return [n for n in NODE_NAMES if n not in self.down]

    def content(self, node: str) -> str:
        self.counter += 1
        return f"s{self.seed}-{self.step}-{node}-{self.counter}"

    def files(self, node: str) -> dict[str, str]:
        """{path: content} of node's live files the workload may touch (no backups, no
        conflict copies, no Unison temporary files)."""
        done = self.nodes.on(self.node(node), _DUMP.format(where=ROOT, prune=_PRUNE))
        return {p: c for p, c in parse_dump(done.stdout).items()
                if ".conflict-" not in p and not p.rsplit("/", 1)[-1].startswith(".unison.")}

    def put(self, node: str, path: str) -> str | None:
        """Write fresh content at path on node as the sync user's file; what it replaced."""
        text = self.content(node)
        target = f"{ROOT}/{path}"
        folders = _folders(path)
        make = (f"install -d -o replimesh -g replimesh {' '.join(folders)} && "
                if folders else "")
        done = self.nodes.on(self.node(node),
                             f"{make}if [ -f {shlex.quote(target)} ]; then printf old; "
                             f"cat {shlex.quote(target)}; fi; printf %s {shlex.quote(text)} "
                             f"> {shlex.quote(target)} && chown replimesh: "
                             f"{shlex.quote(target)}")
        replaced = done.stdout[3:] if done.stdout.startswith("old") else None
        self.history.write(self.step, node, path, text, replaced)
        if path not in self.known_paths:
            self.known_paths.append(path)
        self.log(f"  {node}: wrote {path} = {text}"
                 + (f" (over {replaced!r})" if replaced is not None else ""))
        return text

    def new_path(self) -> str:
        folder = self.random.choice(DIRS)
        name = self.random.choice(FILES)
        return f"{folder}/{name}" if folder else name

    def some_path(self) -> str:
        """Half the time a path already written somewhere, so that edits, deletions and
        conflicts meet across nodes."""
        if self.known_paths and self.random.random() < 0.5:
            return self.random.choice(self.known_paths)
        return self.new_path()

    # -- step kinds

    def do_write(self):
        self.put(self.random.choice(self.up()), self.some_path())

    def do_edit(self):
        node = self.random.choice(self.up())
        held = sorted(self.files(node))
        if not held:
            return self.do_write()
        self.put(node, self.random.choice(held))

    def do_conflict(self):
        if len(self.up()) < 2:
            return self.do_write()
        first, second = self.random.sample(self.up(), 2)
        path = self.some_path()
        self.put(first, path)
        self.put(second, path)

    def do_delete(self):
        node = self.random.choice(self.up())
        held = self.files(node)
        if len(held) < 2:  # emptying a root trips the deletion guard
            return self.do_write()
        path = self.random.choice(sorted(held))
        self.nodes.on(self.node(node), f"rm -f {shlex.quote(f'{ROOT}/{path}')}")
        self.history.delete(self.step, node, path, held[path])
        self.log(f"  {node}: deleted {path} (held {held[path]!r})")

    def do_rmdir(self):
        node = self.random.choice(self.up())
        held = self.files(node)
        folders = sorted({p.rsplit("/", 1)[0] for p in held if "/" in p})
        self.random.shuffle(folders)
        for folder in folders:
            done = self.nodes.on(self.node(node),
                                 _DUMP.format(where=f"{ROOT}/{folder}", prune=""))
            inside = parse_dump(done.stdout)
            if len(inside) <= RMDIR_MAX_FILES and len(held) - len(inside) >= 1:
                break
        else:
            return self.do_delete()
        self.nodes.on(self.node(node), f"rm -r {shlex.quote(f'{ROOT}/{folder}')}")
        for path, text in sorted(inside.items()):
            self.history.delete(self.step, node, f"{folder}/{path}", text)
        self.log(f"  {node}: removed {folder}/ ({', '.join(sorted(inside))})")

    def do_rename(self):
        node = self.random.choice(self.up())
        held = self.files(node)
        if not held:
            return self.do_write()
        old = self.random.choice(sorted(held))
        # A path never used before: a rename back or onto a file would make a legitimate
        # resurrection or loss that the checks would have to tell apart.
        self.counter += 1
        folder = self.random.choice(DIRS)
        new = f"{folder}/m{self.counter}.txt" if folder else f"m{self.counter}.txt"
        folders = _folders(new)
        make = (f"install -d -o replimesh -g replimesh {' '.join(folders)} && "
                if folders else "")
        self.nodes.on(self.node(node), f"{make}mv {shlex.quote(f'{ROOT}/{old}')} "
                                       f"{shlex.quote(f'{ROOT}/{new}')}")
        self.history.rename(self.step, node, old, new, held[old])
        self.known_paths.append(new)
        self.log(f"  {node}: renamed {old} -> {new} ({held[old]!r})")

    def do_round(self, node: str | None = None) -> tuple[int, str]:
        node = node or self.random.choice(self.up())
        done = self.nodes.as_sync_user(self.node(node), "replimesh sync --json", check=False)
        try:
            peers = {p["peer"]: p for p in json.loads(done.stdout)["peers"]}
        except (ValueError, KeyError, TypeError):
            peers = None
        results = {p: r["result"] for p, r in (peers or {}).items()}
        synced = self.history.round(self.step, node, results)
        if peers is None:
            self.log(f"  {node}: round exited {done.returncode} with no JSON: "
                     f"{(done.stderr or done.stdout).strip()[-800:]}")
        else:
            shown = ", ".join(f"{p} {r['result']}" + (f" ({r['conflicts']} conflicts)"
                                                      if r["conflicts"] else "")
                              for p, r in peers.items())
            self.log(f"  {node}: round exited {done.returncode}: {shown}; synced "
                     f"{', '.join(sorted(synced)) or 'nothing'}")
            for p, r in peers.items():
                if r["result"] == "failed" and p not in self.down and not self.groups:
                    self.log(f"    {p} failed: {r['message'][-600:]}")
        return done.returncode, done.stdout + done.stderr

    def do_killed(self):
        node = self.random.choice(self.up())
        delay = round(self.random.uniform(0.1, 2.0), 2)
        running = subprocess.Popen(["ssh", *access.ssh_options(self.lab),
                                    f"root@{self.node(node).address}",
                                    "runuser -u replimesh -- replimesh sync"],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        time.sleep(delay)  # the kill lands at a random point of the round, on purpose
        killed = self.nodes.on(self.node(node), _KILL.format(unison=self.unison_list()))
        code, _, left = killed.stdout.partition("\n")
        running.wait(timeout=120)
        if code.strip() != "0":  # not started yet, or done: no kill, and unseen
            self.log(f"  {node}: nothing to kill after {delay} s (the round was not running)")
            return
        self.log(f"  {node}: round killed after {delay} s")
        if left.strip():
            self.findings.append(
                f"invariant 4 (killed round left unison running): step {self.step}, round on "
                f"{node} killed after {delay} s: {KILL_GRACE_S} s later its Unison still ran: "
                f"{' | '.join(left.strip().splitlines())}")
            self.log(f"  {self.findings[-1]}")
        try:  # what is left must not run into the next steps
            wait_until(lambda: not self.unison_running(), 60, "no unison left")
        except AssertionError:
            self.findings.append(
                f"invariant 4 (killed round left unison running): step {self.step}, round on "
                f"{node} killed after {delay} s: Unison still runs 60 s later")
            self.log(f"  {self.findings[-1]}")

    def unison_list(self) -> str:
        return _UNISON_BUT_WATCHERS if self.watch else _UNISON

    def unison_running(self) -> dict[str, str]:
        found = {}
        for name in self.up():
            text = self.nodes.on(self.node(name), f"{self.unison_list()}; true").stdout
            if text.strip():
                found[name] = text
        return found

    def do_stop_start(self):
        if self.down and (len(self.down) >= MAX_DOWN or self.random.random() < 0.6):
            name = self.random.choice(sorted(self.down))
            control.start(self.lab, name, log=lambda _: None)
            self.down.discard(name)
            self.log(f"  {name}: started")
            if self.groups:  # a restarted container lost its cuts
                self.partition(self.groups)
        else:
            name = self.random.choice(self.up())
            control.stop(self.lab, name)
            self.down.add(name)
            self.log(f"  {name}: stopped")

    def do_partition_heal(self):
        if self.groups:
            faults.heal(self.lab)
            self.groups = None
            self.log("  healed")
            return
        names = list(NODE_NAMES)
        self.random.shuffle(names)
        cut = self.random.randint(1, len(names) - 1)
        self.partition([sorted(names[:cut]), sorted(names[cut:])])

    def partition(self, groups: list[list[str]]) -> None:
        self.groups = groups
        running = [[n for n in g if n not in self.down] for g in groups]
        if all(running):
            faults.partition(self.lab, running)
        else:  # one side is all down: nothing to cut among the running nodes
            faults.heal(self.lab)
        self.log(f"  partitioned {' / '.join(','.join(g) for g in groups)}")

    # -- the run

    def run(self) -> Outcome:
        began = time.monotonic()
        self.log(f"chaos: seed {self.seed}, {self.steps} steps on lab {self.lab.name}; "
                 f"replay: {self.replay}")
        reset(self.lab)
        if self.watch:
            self.watchers("--detach")
        kinds, weights = list(KINDS), list(KINDS.values())
        for step in range(1, self.steps + 1):
            self.step = step
            kind = self.random.choices(kinds, weights)[0]
            self.log(f"step {self.step}: {kind}")
            getattr(self, "do_" + kind.replace("-", "_"))()
        self.step += 1
        self.log(f"step {self.step}: end: heal, start every node, rounds on each twice")
        faults.heal(self.lab)
        self.groups = None
        for name in sorted(self.down):
            control.start(self.lab, name, log=lambda _: None)
        self.down.clear()
        if self.watch:
            self.watchers("--stop")
        final = [(name, *self.do_round(name)) for name in NODE_NAMES * 2]
        findings = self.check(final)
        self.log(f"chaos: seed {self.seed}, {self.steps} steps: {len(findings)} findings in "
                 f"{time.monotonic() - began:.0f} s")
        return Outcome(self.seed, self.steps, findings, time.monotonic() - began,
                       self.history, self.trees, self.anywhere)

    def watchers(self, verb: str) -> None:
        for name in self.up():
            self.nodes.as_sync_user(self.node(name), f"replimesh watch {verb}")

    def check(self, final_rounds=()) -> list[str]:
        """Every invariant on what the nodes hold now, each finding tagged with the seed
        and the replay command; final_rounds: (node, exit code, output)."""
        self.trees, self.anywhere, temporary, processes = self.collect()
        findings = [*self.findings, *differing_trees(self.trees),
                    *self.history.lost_writes(self.anywhere),
                    *self.history.resurrected(self.trees),
                    *leftovers(processes, temporary, list(final_rounds))]
        tag = f"[seed {self.seed}; replay: {self.replay}]"
        return [f"{text} {tag}" for text in findings]

    def collect(self):
        """Each node's live tree, every content it holds, its temporary files (Unison's
        in the root, .tmp-* of the agent) and its Unison processes."""
        trees, anywhere, temporary, processes = {}, {}, {}, {}
        for name in NODE_NAMES:
            node = self.node(name)
            dump = self.nodes.on(node, _DUMP.format(where=ROOT, prune="")).stdout
            trees[name], anywhere[name], temporary[name] = split_dump(parse_dump(dump))
            stray = self.nodes.on(node, f"find {HOME} -name '.tmp-*'").stdout.split()
            temporary[name] += stray
            processes[name] = self.nodes.on(node, "pgrep -a -x unison; true").stdout
        return trees, anywhere, temporary, processes


def _folders(path: str) -> list[str]:
    """The root's subfolders that path needs, outermost first."""
    parts = path.split("/")[:-1]
    return [shlex.quote(f"{ROOT}/{'/'.join(parts[:i + 1])}") for i in range(len(parts))]


# Kill the round on a node (its exit code: 0 if a round was killed), then wait at most
# KILL_GRACE_S there for its Unison to go, and show what is left (nothing, if all is well).
_KILL = ("pkill -KILL -f '[r]eplimesh sync'; echo $?; i=0; "
         "while [ -n \"$({unison})\" ] && [ $i -lt " f"{int(KILL_GRACE_S * 10)} ]; do "
         "sleep 0.1; i=$((i+1)); done; {unison}; true")
# The Unison processes of a node. With watchers, those of a live round are left out:
# the watcher's own sessions (its children) and those it serves to the peers' watchers.
_UNISON = "pgrep -a -x unison"
_UNISON_BUT_WATCHERS = ("ps -o pid=,ppid=,args= -C unison | awk -v w=\"$(cat "
                        f"{HOME}/mesh/watch.lock 2>/dev/null)\" '$2 != w && !/ -server/'")
# Every regular file under a folder: its path, a NUL, its content, a NUL (files are small).
_PRUNE = f"-path ./{BACKUP} -prune -o"
_DUMP = ("cd {where} 2>/dev/null || exit 0; find . {prune} -type f -print0 | "
         "while IFS= read -r -d '' f; do printf '%s\\0' \"$f\"; cat \"$f\"; printf '\\0'; done")


def deploy(lab: Lab) -> None:
    """A 4-node lab deployed as the fault tests deploy theirs: no cron rounds."""
    control.up(lab, 4)
    playbook(lab, "site.yml", *DEPLOY)
    nodes = Nodes(lab)
    for node in list_nodes(lab):
        nodes.on(node, "rm -f /etc/cron.d/replimesh")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.integration.chaos",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, nargs="+", required=True,
                        help="one or more seeds, run one after the other on one lab")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lab", default=DEFAULT_LAB, help=f"lab name (default: {DEFAULT_LAB})")
    parser.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    parser.add_argument("--watch", action="store_true",
                        help="with watchers running on every node during the steps")
    parser.add_argument("--no-deploy", action="store_true",
                        help="reuse a lab left up by --keep, without running site.yml")
    args = parser.parse_args(argv)
    lab = Lab(args.lab)
    failed = []
    try:
        if not args.no_deploy:
            deploy(lab)
        for seed in args.seed:
            outcome = Workload(lab, seed, args.steps, watch=args.watch).run()
            print(f"seed {seed}: {'ok' if outcome.ok else 'FAILED'} "
                  f"({len(outcome.findings)} findings, {outcome.seconds:.0f} s)")
            for text in outcome.findings:
                print(f"  {text}")
            if not outcome.ok:
                failed.append(seed)
    finally:
        if not args.keep:
            control.down(lab)
    print(f"chaos: {len(args.seed) - len(failed)} of {len(args.seed)} seeds passed"
          + (f"; failed: {' '.join(map(str, failed))}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
