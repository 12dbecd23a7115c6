"""One large file from one node to every node: swarm mode (BitTorrent between the nodes)
against a sequential fan-out (scp from the publisher to each node in turn) and a Unison
mesh round from the publisher, on links shaped to a fixed rate.

For each mesh size N, a lab of N nodes is made and deployed with site.yml (cron rounds
off, the swarm daemons running), every node's eth0 egress is shaped to --rate, and each
run sends a new file of --mb MiB of random data from node1 by the three schemes in turn
(the order alternates between runs). Times are measured on the nodes' clock (the host's):

- swarm: from the start of `replimesh swarm publish` (hashing included) until the last
  node has moved the verified file into place (the daemons' done records; every node's
  `swarm status` must say complete for that info-hash);
- fan-out: `scp` as root from node1 to node2, node3, ... one after the other;
- Unison mesh: one `replimesh sync` round on node1 (the file in the data root).

The lower bound is S/B: node1 must send the whole file at least once. Once per N, a
file already on every node is changed in place (1% of its pieces, at random
piece-aligned offsets) and published again: its time, and the payload bytes every node
downloaded for the new version, against the file's size.

    python bench/swarm.py --sizes 2,4,8 --mb 128 --rate 100mbit --runs 3

writes bench/results/swarm.json, the tables in bench/README.md (between its markers)
and bench/swarm.png.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import random
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "plugins" / "module_utils"))

import report  # noqa: E402 - bench/report.py, beside this script
from replimesh.swarm_offers import piece_size  # noqa: E402

from fabfile.lab import access, control, faults  # noqa: E402
from fabfile.lab.nodes import Lab, list_nodes  # noqa: E402

SWARM_ROOT = "/srv/replimesh/swarm"
DATA_ROOT = "/srv/replimesh/data"
SWARM_DIR = "/var/lib/replimesh/swarm"
FANOUT_DIR = "/root/bench-fanout"
SOURCE = "/root/bench-source.bin"
FANOUT_KEY = "/root/.ssh/bench_fanout"
SCHEMES = ("swarm", "fan-out", "Unison mesh")
PENDING = ("downloading", "checking", "moving")
POLL_S = 0.5
CHANGED_SHARE = 0.01


class Remote:
    """Root commands on the lab's nodes over SSH, one multiplexed connection per node
    (polling every node twice a second would otherwise spend the 2 cores on handshakes)."""

    def __init__(self, lab: Lab):
        self.folder = tempfile.mkdtemp(prefix="rmb-")
        self.base = ["ssh", *access.ssh_options(lab), "-o", "ControlMaster=auto",
                     "-o", f"ControlPath={self.folder}/%C", "-o", "ControlPersist=600"]

    def argv(self, node, command):
        return [*self.base, f"root@{node.address}", command]

    def run(self, node, command, timeout=600, ok=(0,)):
        done = subprocess.run(self.argv(node, command), capture_output=True, text=True,
                              timeout=timeout, check=False)
        if done.returncode not in ok:
            raise SystemExit(f"{node.name}: {command}: exit {done.returncode}: "
                             f"{done.stderr.strip() or done.stdout.strip()}")
        return done.stdout

    def start(self, node, command):
        return subprocess.Popen(self.argv(node, command), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def close(self, nodes):
        for node in nodes:
            subprocess.run([*self.base, "-O", "exit", f"root@{node.address}"],
                           capture_output=True, check=False)
        shutil.rmtree(self.folder, ignore_errors=True)


def on_all(remote, nodes, command, timeout=600):
    with concurrent.futures.ThreadPoolExecutor(len(nodes)) as pool:
        return list(pool.map(lambda n: remote.run(n, command, timeout), nodes))


def as_sync_user(command):
    return f"runuser -u replimesh -- {command}"


def deploy(size, rate):
    lab = Lab(f"bench{size}")
    control.up(lab, size, log=lambda *_: None)
    for attempt in (1, 2):  # once more after a failure: under load, a task can time out
        done = subprocess.run(["ansible-playbook", "-i", str(lab.inventory_dir),
                               "playbooks/site.yml"], cwd=HERE.parent, check=False,
                              capture_output=True, text=True)
        if done.returncode == 0:
            break
        failed = [line for line in done.stdout.splitlines() if "fatal:" in line or
                  "FAILED" in line]
        print(f"site.yml on {lab.name}, attempt {attempt}: exit {done.returncode}: "
              + " | ".join(failed[-3:]), file=sys.stderr, flush=True)
    else:
        raise SystemExit(f"site.yml failed twice on lab {lab.name}")
    nodes = list_nodes(lab)
    remote = Remote(lab)
    on_all(remote, nodes, "rm -f /etc/cron.d/replimesh")  # no cron rounds; the swarm
    # watchdog (cron.d/replimesh-swarm) stays
    for node in nodes:
        faults.shape(lab, node.name, rate)
    publisher, others = nodes[0], nodes[1:]
    # Fan-out: a root key on node1, trusted by the others' root (bench labs only; the
    # sync user's key is forced to `replimesh serve`).
    public = remote.run(publisher, f"test -f {FANOUT_KEY} || ssh-keygen -q -t ed25519 -N '' "
                                   f"-C bench-fanout -f {FANOUT_KEY}; cat {FANOUT_KEY}.pub")
    on_all(remote, others, f"grep -qxF {shlex.quote(public.strip())} "
                           f"/root/.ssh/authorized_keys || echo {shlex.quote(public.strip())}"
                           " >> /root/.ssh/authorized_keys")
    on_all(remote, nodes, f"mkdir -p {FANOUT_DIR}")
    # A few files that stay in the data root: a benchmark file deleted on every node
    # between runs is then not a root emptied, which the deletion guard would stop.
    remote.run(publisher, f"for i in 1 2 3; do echo keep > {DATA_ROOT}/bench-keep-$i.txt; "
                          f"done; chown replimesh: {DATA_ROOT}/bench-keep-*.txt")
    remote.run(publisher, as_sync_user("replimesh sync --json"), ok=(0, 1))
    for node in nodes:
        status = json.loads(remote.run(node, as_sync_user("replimesh swarm status --json")))
        if not status["running"]:
            raise SystemExit(f"{node.name}: the swarm daemon is not running after site.yml")
    return lab, nodes, remote


def make_source(remote, publisher, megabytes):
    remote.run(publisher, f"head -c {megabytes << 20} /dev/urandom > {SOURCE}")
    return remote.run(publisher, f"md5sum < {SOURCE}").split()[0]


def held_everywhere(remote, nodes, path, digest):
    """Whether every node holds path with the source's content."""
    sums = on_all(remote, nodes, f"md5sum < {path} 2>/dev/null || echo missing")
    return all(s.split()[0] == digest for s in sums)


def clock(out):
    """The two timestamps (start, end) a timed command printed around itself."""
    *_, started, ended = out.split()
    return float(ended) - float(started)


def swarm_status(remote, node):
    try:
        return json.loads(remote.run(node, f"cat {SWARM_DIR}/status.json", timeout=30))
    except (ValueError, SystemExit, subprocess.TimeoutExpired):
        return {"files": []}


def publish(remote, nodes, name, deadline_s):
    """Publish SWARM_ROOT/name on node1 and poll every node until each says complete
    for the new info-hash; (seconds, info-hash, every node's entry for it)."""
    publisher = nodes[0]
    command = as_sync_user(f"replimesh swarm publish {name} --json")
    job = remote.start(publisher, f"date +%s.%N; {command}")
    deadline = time.monotonic() + deadline_s
    infohash, started, entries = None, None, {}
    with concurrent.futures.ThreadPoolExecutor(len(nodes)) as pool:
        while time.monotonic() < deadline:
            polled = time.monotonic()
            if infohash is None and job.poll() is not None:
                out, err = job.communicate()
                first, _, answer = out.partition("\n")
                started = float(first)
                if job.returncode != 0:
                    raise SystemExit(f"publish {name} on {publisher.name}: exit "
                                     f"{job.returncode}: {err.strip() or answer}")
                infohash = json.loads(answer)["infohash"]
            statuses = list(pool.map(lambda n: swarm_status(remote, n), nodes))
            if infohash:
                entries = {n.name: next((f for f in s["files"] if f.get("infohash") == infohash),
                                        None) for n, s in zip(nodes, statuses)}
                if all(e and e["state"] == "complete" for e in entries.values()):
                    break
            time.sleep(max(0.0, POLL_S - (time.monotonic() - polled)))
        else:
            if job.poll() is None:
                job.kill()
            return None, infohash, entries
    # When each node moved the verified file into place: its done record (the publisher's
    # is written once hashed), on the same clock as `date` on node1.
    done = on_all(remote, nodes, f"cat {SWARM_DIR}/done/{infohash}.json")
    finished = max(json.loads(d)["at"] for d in done)
    return finished - started, infohash, entries


def measure(remote, nodes, scheme, name, digest, bound):
    publisher, others = nodes[0], nodes[1:]
    deadline = 120 + 6 * len(nodes) * bound
    result = {"scheme": scheme, "nodes": len(nodes), "file": name}
    if scheme == "swarm":
        remote.run(publisher, f"install -o replimesh -g replimesh -m 0644 {SOURCE} "
                              f"{SWARM_ROOT}/{name}")
        seconds, infohash, entries = publish(remote, nodes, name, deadline)
        result.update(infohash=infohash, downloaded=sum(
            (e or {}).get("downloaded", 0) for e in entries.values()))
        path = f"{SWARM_ROOT}/{name}"
    elif scheme == "fan-out":
        copies = "; ".join(
            f"scp -q -i {FANOUT_KEY} -o BatchMode=yes -o StrictHostKeyChecking=no "
            f"-o UserKnownHostsFile=/dev/null {SOURCE} root@{n.address}:{FANOUT_DIR}/{name} "
            "|| exit 1" for n in others)
        out = remote.run(publisher, f"date +%s.%N; {copies}; date +%s.%N", timeout=deadline)
        seconds = clock(out)
        path = f"{FANOUT_DIR}/{name}"
        remote.run(publisher, f"cp {SOURCE} {path}")  # the source is held by node1 already
    else:
        remote.run(publisher, f"install -o replimesh -g replimesh -m 0644 {SOURCE} "
                              f"{DATA_ROOT}/{name}")
        out = remote.run(publisher, f"date +%s.%N; {as_sync_user('replimesh sync --json')}; "
                                    "echo; date +%s.%N", timeout=deadline, ok=(0, 1))
        started, *lines, ended = out.strip().splitlines()
        answer = json.loads("\n".join(lines))
        seconds = float(ended) - float(started)
        result["failed_peers"] = [p["peer"] for p in answer["peers"] if p["result"] != "ok"]
        path = f"{DATA_ROOT}/{name}"
    result["seconds"] = round(seconds, 2) if seconds is not None else None
    result["complete"] = seconds is not None and held_everywhere(remote, nodes, path, digest)
    return result


def clean(remote, nodes, name):
    """Delete the run's file on every node (and the swarm's records of it), then wait
    until no daemon has anything pending."""
    on_all(remote, nodes, "set -e; "
                          f"for ih in $(grep -l '\"path\": \"{name}\"' {SWARM_DIR}/offers/*.json "
                          "2>/dev/null | xargs -r -n1 basename | sed 's/.json$//'); do "
                          f"rm -f {SWARM_DIR}/offers/$ih.json {SWARM_DIR}/done/$ih.json "
                          f"{SWARM_DIR}/resume/$ih.resume; done; "
                          f"rm -f {SWARM_ROOT}/{name} {DATA_ROOT}/{name} {FANOUT_DIR}/{name}")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        busy = [f for n in nodes for f in swarm_status(remote, n)["files"]
                if f.get("state") in PENDING]
        if not busy:
            return
        time.sleep(POLL_S)
    raise SystemExit(f"swarm daemons still busy after cleaning {name}: {busy}")


def republish(remote, nodes, name, megabytes, bound, seed):
    """Publish a file to every node, change CHANGED_SHARE of its pieces in place on
    node1, publish it again: the second publish's time and bytes downloaded."""
    publisher = nodes[0]
    size = megabytes << 20
    digest = make_source(remote, publisher, megabytes)
    first = measure(remote, nodes, "swarm", name, digest, bound)
    if not first["complete"]:
        return {"nodes": len(nodes), "file": name, "first": first, "complete": False}
    piece = piece_size(size)
    pieces = -(-size // piece)
    changed = sorted(random.Random(seed).sample(range(pieces),
                                                max(1, round(pieces * CHANGED_SHARE))))
    path = f"{SWARM_ROOT}/{name}"
    remote.run(publisher, "; ".join(f"dd if=/dev/urandom of={path} bs={piece} count=1 "
                                    f"seek={i} conv=notrunc status=none" for i in changed))
    changed_bytes = sum(min(piece, size - i * piece) for i in changed)
    digest = remote.run(publisher, f"md5sum < {path}").split()[0]
    seconds, infohash, entries = publish(remote, nodes, name, 120 + 6 * len(nodes) * bound)
    downloaded = sum((e or {}).get("downloaded", 0) for e in entries.values())
    return {"nodes": len(nodes), "file": name, "size": size, "piece_size": piece,
            "pieces": pieces, "changed_pieces": len(changed), "changed_bytes": changed_bytes,
            "first_seconds": first["seconds"], "infohash": infohash,
            "seconds": round(seconds, 2) if seconds is not None else None,
            "downloaded": downloaded,
            "downloaded_by_node": {k: (e or {}).get("downloaded") for k, e in entries.items()},
            "complete": seconds is not None and held_everywhere(remote, nodes, path, digest)}


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value, spec=".1f"):
    return "-" if value is None else format(value, spec)


def summary(results, size):
    row = {}
    for scheme in SCHEMES:
        runs = [r for r in results if r["nodes"] == size and r["scheme"] == scheme]
        row[scheme] = median(r["seconds"] for r in runs if r["complete"])
        row[scheme + " complete"] = f"{sum(r['complete'] for r in runs)}/{len(runs)}"
    return row


def tables(data):
    sizes, bound = data["sizes"], data["lower_bound_s"]
    lines = ["| nodes | S/B (s) | swarm (s) | swarm / (S/B) | fan-out (s) | Unison mesh (s) "
             "| swarm speedup over fan-out | complete runs (swarm, fan-out, Unison) |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for size in sizes:
        row = summary(data["runs"], size)
        swarm, fanout = row["swarm"], row["fan-out"]
        lines.append(
            f"| {size} | {bound:.1f} | {fmt(swarm)} | {fmt(swarm and swarm / bound, '.2f')} "
            f"| {fmt(fanout)} | {fmt(row['Unison mesh'])} "
            f"| {fmt(swarm and fanout and fanout / swarm, '.1f')}x "
            f"| {', '.join(row[s + ' complete'] for s in SCHEMES)} |")
    lines += ["", "Publishing again with 1% of the pieces changed (once per N):", "",
              "| nodes | pieces changed | time (s) | downloaded, all nodes (MiB) "
              "| downloaded / file size | least possible (MiB) | complete |",
              "| ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in data["republish"]:
        if "pieces" not in r:
            lines.append(f"| {r['nodes']} | - | - | - | - | - | no (first publish failed) |")
            continue
        least = r["changed_bytes"] * (r["nodes"] - 1)
        lines.append(f"| {r['nodes']} | {r['changed_pieces']} of {r['pieces']} "
                     f"({r['piece_size'] >> 10} KiB) | {fmt(r['seconds'])} "
                     f"| {r['downloaded'] / 2**20:.1f} | {r['downloaded'] / r['size']:.3f} "
                     f"| {least / 2**20:.1f} | {'yes' if r['complete'] else 'no'} |")
    merged = data.get("merged") or []
    done = [s for s in sizes if not any(s in m["sizes"] for m in merged)]
    lines += [""] + [
        f"N = {', '.join(map(str, m['sizes']))}: `{m['command']}`, on {m['date']} at commit "
        f"{m['commit']}, {m['total_s'] / 60:.0f} min (labs included)." for m in merged]
    lines += [f"{'N = ' + ', '.join(map(str, done)) + ': ' if merged else 'Command: '}"
              f"`{data['command']}`, on {data['date']} at "
              f"commit {data['commit']}, {data['total_s'] / 60:.0f} min (labs included)."]
    return "\n".join(lines)


def plot(data, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sizes = data["sizes"]
    figure, axis = plt.subplots(figsize=(6.5, 4))
    for scheme, marker in zip(SCHEMES, "os^"):
        medians = [summary(data["runs"], n)[scheme] for n in sizes]
        axis.plot(sizes, medians, marker=marker, label=scheme)
    axis.plot(sizes, [data["lower_bound_s"]] * len(sizes), linestyle="--", marker="_",
              markersize=12, color="grey", label="S/B (lower bound)")
    axis.set_xlabel("nodes")
    axis.set_ylabel("seconds until every node holds the file")
    axis.set_xticks(sizes)
    axis.set_ylim(bottom=0)
    axis.grid(alpha=0.3)
    axis.legend()
    axis.set_title(f"{data['mb']} MiB to every node, egress {data['rate']} "
                   "(median of runs)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def rate_bits(rate):
    number, unit = re.match(r"^(\d+(?:\.\d+)?)([a-z]+)$", rate.lower()).groups()
    return float(number) * {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}[unit]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="2,4,8")
    parser.add_argument("--mb", type=int, default=128, help="file size in MiB")
    parser.add_argument("--rate", default="100mbit", help="egress limit of every node (tc)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="leave the labs up")
    parser.add_argument("--merge", action="store_true",
                        help="keep the results of other sizes from results/swarm.json")
    args = parser.parse_args()
    report.require_plotting()
    faults.shape_command(args.rate)  # refuses a rate tc would not take
    began = time.monotonic()
    sizes = [int(s) for s in args.sizes.split(",")]
    bound = (args.mb << 20) * 8 / rate_bits(args.rate)
    results, updates = [], []
    for size in sizes:
        lab = Lab(f"bench{size}")
        try:
            lab, nodes, remote = deploy(size, args.rate)
        except BaseException:
            if not args.keep:
                control.down(lab)
            raise
        try:
            for run in range(args.runs):
                name = f"big-{size}-{run}.bin"
                digest = make_source(remote, nodes[0], args.mb)
                for scheme in (SCHEMES if run % 2 == 0 else SCHEMES[::-1]):
                    result = measure(remote, nodes, scheme, name, digest, bound)
                    result["run"] = run
                    print(json.dumps(result), flush=True)
                    results.append(result)
                clean(remote, nodes, name)
            update = republish(remote, nodes, f"big-{size}-update.bin", args.mb, bound, size)
            print(json.dumps(update), flush=True)
            updates.append(update)
            clean(remote, nodes, f"big-{size}-update.bin")
        finally:
            remote.close(nodes)
            if not args.keep:
                control.down(lab)
        save(args, sizes, bound, began, results, updates)


def save(args, sizes, bound, began, results, updates):
    """Write the results so far (after each size: a later failure loses nothing)."""
    path = HERE / "results" / "swarm.json"
    merged = []
    if args.merge and path.exists():
        old = json.loads(path.read_text())
        if (old["mb"], old["rate"]) != (args.mb, args.rate):
            raise SystemExit(f"--merge: {path} was measured with another --mb or --rate")
        keep = [s for s in old["sizes"] if s not in sizes]
        merged = [e for e in old.get("merged", []) if set(e["sizes"]) & set(keep)]
        if not merged and keep:
            merged = [{"sizes": keep, "command": old["command"], "date": old["date"],
                       "commit": old["commit"], "total_s": old["total_s"]}]
        results = [r for r in old["runs"] if r["nodes"] in keep] + results
        updates = [u for u in old["republish"] if u["nodes"] in keep] + updates
        sizes = sorted(set(keep) | set(sizes))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE.parent,
                            capture_output=True, text=True, check=False).stdout.strip()
    data = {"command": (f"python bench/swarm.py --sizes {args.sizes} --mb {args.mb} "
                        f"--rate {args.rate} --runs {args.runs}"
                        + (" --merge" if args.merge else "")),
            "argv": sys.argv,
            "date": datetime.now(timezone.utc).date().isoformat(), "commit": commit,
            "sizes": sizes, "mb": args.mb, "rate": args.rate, "runs_per_size": args.runs,
            "lower_bound_s": round(bound, 3), "total_s": round(time.monotonic() - began),
            "runs": results, "republish": updates, "merged": merged}
    report.save("swarm", data, tables(data))
    plot(data, HERE / "swarm.png")


if __name__ == "__main__":
    main()
