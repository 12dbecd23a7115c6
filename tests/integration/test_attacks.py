"""Attacks with a stolen node key, on the deployed lab ifault: node1's private sync key
is copied to the controller and used the way a thief would, against node2 and node3,
with real ssh and real Unison. Each attack must fail, and the honest nodes must keep
working: their rounds still converge and nothing is lost.

Every test here failed on the code before the confinement issue (see its closing note).
"""

import hashlib
import json
import os
import shlex
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import pytest

from fabfile.lab import access
from plugins.module_utils.replimesh import swarm_offers

from .helpers import playbook, recap, wait_until
from .mesh_lab import DEPLOY, FAULT, HOME, IDLE_TIMEOUT_S, MESH_FILES, ROOT, Nodes, fresh_replicas

LAB = Nodes(FAULT)
on, as_sync_user, sync, write, contents = (LAB.on, LAB.as_sync_user, LAB.sync, LAB.write,
                                           LAB.contents)


@pytest.fixture
def nodes(fault_lab):
    return fresh_replicas(fault_lab)


@pytest.fixture
def stolen_key(nodes, tmp_path):
    """node1's private sync key, on the controller."""
    key = tmp_path / "stolen"
    key.write_text(on(nodes["node1"], f"cat {HOME}/.ssh/id_ed25519").stdout)
    key.chmod(0o600)
    return key


def as_thief(key, node, *command, stdin="", timeout=60):
    """`ssh -i KEY replimesh@NODE command...` from the controller: what a thief holding
    node1's key can do. Host keys are the lab's pinned ones."""
    return subprocess.run(
        ["ssh", *access.ssh_options(FAULT), "-i", str(key), "-o", "IdentitiesOnly=yes",
         f"replimesh@{node.address}", *command],
        input=stdin, capture_output=True, text=True, timeout=timeout, check=False)


def thief_sends(key, node, command, data: bytes):
    """as_thief, with bytes on stdin (text that is not UTF-8, or tens of MiB)."""
    return subprocess.run(
        ["ssh", *access.ssh_options(FAULT), "-i", str(key), "-o", "IdentitiesOnly=yes",
         f"replimesh@{node.address}", command],
        input=data, capture_output=True, timeout=120, check=False)


def honest_round_converges(nodes):
    """The nodes still work after an attack: a file written on node2 reaches every node
    through node2's round, and every node ends with the same files."""
    write(nodes["node2"], "after-attack.txt", "still working")
    code, _ = sync(nodes["node2"])
    assert code == 0
    seen = {name: contents(node) for name, node in nodes.items()}
    assert all(files == seen["node2"] for files in seen.values()), seen
    assert seen["node2"]["after-attack.txt"] == "still working"


# --- Confinement of the Unison server -------------------------------------------------

THIEF = "/tmp/thief"  # on node3, a host with Unison: the thief's key, archives and loot
EXCHANGE = "replimesh peers exchange"


def thief_unison(nodes, key, local, remote, user="replimesh"):
    """The thief's Unison, run as root on node3 with node1's stolen key, syncing its local
    folder with `remote` on node2 through the server command a round uses; its output."""
    node3 = nodes["node3"]
    on(node3, f"rm -rf {THIEF}/archives && mkdir -p {THIEF} && cat > {THIEF}/key && "
              f"chmod 600 {THIEF}/key",
       stdin=key.read_text())
    ssh_args = (f"-i {THIEF}/key -o IdentitiesOnly=yes -o StrictHostKeyChecking=no "
                "-o UserKnownHostsFile=/dev/null")
    command = (f"UNISON={THIEF}/archives unison {local} "
               f"ssh://{user}@{nodes['node2'].address}/{remote} -batch -ui text -times "
               f"-sshargs {shlex.quote(ssh_args)} "
               f"-servercmd {shlex.quote(f'replimesh-replica {ROOT}')} 2>&1")
    return on(node3, command, check=False).stdout


def test_a_stolen_key_reads_nothing_outside_the_replicas(nodes, stolen_key):
    assert sync(nodes["node3"])[0] == 0  # node2 then holds the archives of (node2, node3)
    for secret in (f"{HOME}/.ssh", "/etc/replimesh", f"{HOME}/.unison/pairs/node3"):
        loot = f"{THIEF}/loot{secret.replace('/', '-')}"
        on(nodes["node3"], f"rm -rf {loot} && mkdir -p {loot}")
        said = thief_unison(nodes, stolen_key, loot, "/" + secret)
        assert f"Permission denied [opendir({secret})]" in said, said
        assert on(nodes["node3"], f"ls -A {loot}").stdout == "", secret
    honest_round_converges(nodes)


def test_a_stolen_key_writes_nothing_outside_the_replicas(nodes, stolen_key):
    planted = f"{THIEF}/plant"
    on(nodes["node3"], f"rm -rf {planted} {THIEF}/shell* && mkdir -p {planted} && "
                       f"ssh-keygen -q -t ed25519 -N '' -f {THIEF}/shell && "
                       f"cp {THIEF}/shell.pub {planted}/authorized_keys && "
                       f"echo planted > {planted}/rc")
    before = on(nodes["node2"], f"ls -A {HOME}/.ssh").stdout
    said = thief_unison(nodes, stolen_key, planted, "/" + f"{HOME}/.ssh")
    assert "Permission denied" in said, said
    assert on(nodes["node2"], f"ls -A {HOME}/.ssh").stdout == before
    shell = on(nodes["node3"], f"ssh -i {THIEF}/shell -o IdentitiesOnly=yes "
                               "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
                               f"-o BatchMode=yes replimesh@{nodes['node2'].address} id",
               check=False)
    assert shell.returncode != 0 and "uid=" not in shell.stdout
    honest_round_converges(nodes)


# The exchange and swarm verbs are replimesh's own code reading a peer's input: serve
# confines itself before it reads a byte of it (serve._confine_verb).
VERB_REACH = f"""
import os, sys
sys.path.insert(0, "/opt/replimesh/lib")
from replimesh import config, serve
serve._confine_verb(config.load())
for kind, path in (("read", "{HOME}/.ssh/id_ed25519"), ("read", "/etc/replimesh/swarm-node.key"),
                   ("read", "{HOME}/.unison/pairs"), ("write", "{HOME}/.ssh/planted"),
                   ("write", "{HOME}/.unison/planted"), ("write", "{HOME}/planted"),
                   ("read", "{MESH_FILES}/peers.json"), ("write", "{MESH_FILES}/.tmp/probe")):
    try:
        if kind == "write":
            open(path, "w").close()
        elif os.path.isdir(path):
            os.listdir(path)
        else:
            open(path, "rb").close()
        print(kind, path, "allowed")
    except PermissionError:
        print(kind, path, "denied")
"""


def test_a_stolen_keys_exchange_runs_where_the_nodes_keys_are_out_of_reach(nodes, stolen_key):
    node2 = nodes["node2"]
    held = subprocess.Popen(  # an exchange whose list never comes: node2 waits for it
        ["ssh", *access.ssh_options(FAULT), "-i", str(stolen_key), "-o", "IdentitiesOnly=yes",
         f"replimesh@{node2.address}", EXCHANGE],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:   # within the 5 s a peer has to start sending, until serve has confined itself
        status = on(node2, "for _ in $(seq 40); do "
                           "pid=$(pgrep -n -u replimesh -f 'python3 .*serve --peer node1'); "
                           "seen=$(grep -s NoNewPrivs /proc/$pid/status); "
                           "case $seen in *1) break;; esac; sleep 0.1; done; echo $seen").stdout
    finally:
        held.kill()
        held.wait()
    assert status.split() == ["NoNewPrivs:", "1"], status   # it entered its sandbox
    reach = as_sync_user(node2, "python3 -", stdin=VERB_REACH).stdout.splitlines()
    assert reach == [
        f"read {HOME}/.ssh/id_ed25519 denied", "read /etc/replimesh/swarm-node.key denied",
        f"read {HOME}/.unison/pairs denied", f"write {HOME}/.ssh/planted denied",
        f"write {HOME}/.unison/planted denied", f"write {HOME}/planted denied",
        f"read {MESH_FILES}/peers.json allowed", f"write {MESH_FILES}/.tmp/probe allowed"]
    honest_round_converges(nodes)


def test_a_session_held_open_by_a_stolen_key_ends_at_the_idle_limit(nodes, stolen_key):
    node2 = nodes["node2"]
    accepted = log_count(node2, "accepted node1: -server")
    stopped = log_count(node2, "with no traffic")
    held = subprocess.Popen(  # a Unison session that is never spoken to
        ["ssh", *access.ssh_options(FAULT), "-i", str(stolen_key), "-o", "IdentitiesOnly=yes",
         f"replimesh@{node2.address}", f"replimesh-replica {ROOT} -server"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: log_count(node2, "accepted node1: -server") > accepted, 30,
                   "the held session to be accepted")
        wait_until(lambda: log_count(node2, "with no traffic") > stopped, IDLE_TIMEOUT_S + 20,
                   "node2 to stop the held session at its idle limit")
        code, peers = sync(nodes["node3"])  # node2's replica is free again
        assert code == 0 and peers["node2"]["result"] == "ok", peers
    finally:
        held.kill()
        held.wait()
    honest_round_converges(nodes)


def log_count(node, text):
    """How many lines of node's serve.log hold text."""
    done = on(node, f"grep -cF {shlex.quote(text)} /var/log/replimesh/serve.log", check=False)
    return int(done.stdout.strip() or 0)


# --- Nothing root or sshd trusts is writable by the sync user ---------------------------

DECOYS = "/root/replimesh-decoys"   # root's own files and folders, targets of planted links
# Every path a root task of some role touched in the sync user's reach (a folder the sync
# user owns, or a root under a folder it owned), linked to what the thief wants root to
# chown or overwrite: /etc/shadow as in the report, decoys for the others.
PLANTS = {f"{HOME}/.ssh/id_ed25519": "/etc/shadow",
          f"{HOME}/.ssh/id_ed25519.pub": f"{DECOYS}/pub",
          f"{HOME}/.ssh/config": f"{DECOYS}/config",
          f"{HOME}/.ansible/tmp": f"{DECOYS}/tmp/",
          f"{HOME}/swarm": f"{DECOYS}/swarm/",
          f"{MESH_FILES}/peers.json": f"{DECOYS}/peers.json",
          "/srv/replimesh/swarm": f"{DECOYS}/swarm-root/",
          "/srv/replimesh/data": f"{DECOYS}/data/"}
SPOOL = "/var/spool/cron/crontabs/replimesh"


def owners(node):
    """owner:group mode of /etc/shadow and every decoy."""
    return on(node, f"stat -c '%n %U:%G %a' /etc/shadow {DECOYS}/*").stdout


def thief_ssh(key, node, *options, command="id", timeout=30):
    """as_thief with ssh options of the thief's choosing (forwardings, a TTY)."""
    return subprocess.run(
        ["ssh", *access.ssh_options(FAULT), "-i", str(key), *options,
         f"replimesh@{node.address}", *([command] if command else [])],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
        check=False, env={**os.environ, "DISPLAY": ":0"})


@pytest.mark.timeout(1200)   # one site.yml run
def test_what_a_compromised_sync_user_plants_gives_it_nothing_and_stops_the_deploy(
        nodes, tmp_path):
    node2 = nodes["node2"]
    folders = " ".join(t for t in PLANTS.values() if t.endswith("/"))
    files = " ".join(t for t in PLANTS.values() if t.startswith(DECOYS) and t[-1] != "/")
    on(node2, f"mkdir -p -m 0700 {DECOYS} {folders} && touch {files} && chmod 0600 {files}")
    before = owners(node2)
    key = tmp_path / "planted"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    planted = (tmp_path / "planted.pub").read_text(encoding="utf-8").strip()

    # A shell as the sync user: links in its folders, a key of its own, schedules.
    links = as_sync_user(node2, "sh -c " + shlex.quote("; ".join(
        f"mv {p} {p}.orig 2>/dev/null && ln -sn {t.rstrip('/')} {p} && echo {p}"
        for p, t in PLANTS.items())), check=False).stdout.split()
    as_sync_user(node2, f"sh -c 'echo {planted} >> {HOME}/.ssh/authorized_keys'")
    crontab = as_sync_user(node2, "crontab -", stdin="* * * * * echo planted\n", check=False)
    on(node2, f"printf '* * * * * echo planted\\n' > {SPOOL} && chown replimesh:crontab {SPOOL}"
              f" && chmod 0600 {SPOOL}")   # one planted before cron.deny was written
    has_at = on(node2, "command -v at", check=False).returncode == 0
    at_job = as_sync_user(node2, "at now + 1 hour", stdin="true\n", check=False)
    try:
        got_in = thief_ssh(key, node2)
        deploy = playbook(FAULT, "site.yml", *DEPLOY, check=False)
        assert owners(node2) == before   # nothing followed a link
        assert got_in.returncode == 255 and "Permission denied" in got_in.stderr, got_in
        assert thief_ssh(key, node2).returncode == 255
        assert crontab.returncode != 0 and "not allowed" in crontab.stderr, crontab
        assert on(node2, f"test -e {SPOOL}", check=False).returncode == 1
        assert not has_at or at_job.returncode != 0, at_job
        # The roots' folder is root's: the sync user cannot swap a root for a link.
        assert "/srv/replimesh/data" not in links and "/srv/replimesh/swarm" not in links
        outcome = recap(deploy.stdout)
        assert outcome["node2"]["failed"] == 1, deploy.stdout[-3000:]
        assert all(outcome[n]["failed"] == 0 for n in outcome if n != "node2"), outcome
        assert "may be compromised" in deploy.stdout
        assert all(p in deploy.stdout for p in links), (links, deploy.stdout[-3000:])
    finally:
        on(node2, "; ".join(f"[ -L {p} ] && rm {p} && mv {p}.orig {p}" for p in PLANTS)
                  + f"; rm -rf {DECOYS} {HOME}/.ssh/authorized_keys {SPOOL}; true")
    honest_round_converges(nodes)


def test_a_stolen_key_gets_no_forwarding_tty_or_x11(nodes, stolen_key):
    node1, node2 = nodes["node1"], nodes["node2"]
    effective = dict(line.split(" ", 1) for line in on(
        node2, f"sshd -T -C user=replimesh,host=node1,addr={node1.address}").stdout.splitlines())
    assert {k: effective[k] for k in (
        "authorizedkeysfile", "authorizedkeyscommand", "authorizedkeyscommanduser",
        "disableforwarding", "allowtcpforwarding", "allowstreamlocalforwarding",
        "allowagentforwarding", "x11forwarding", "permittunnel", "gatewayports", "permittty",
        "permituserrc", "maxsessions")} == {
        "authorizedkeysfile": "none",
        "authorizedkeyscommand": "/usr/local/sbin/replimesh-authorized-keys %u",
        "authorizedkeyscommanduser": "replimesh-keys", "disableforwarding": "yes",
        "allowtcpforwarding": "no", "allowstreamlocalforwarding": "no",
        "allowagentforwarding": "no", "x11forwarding": "no", "permittunnel": "no",
        "gatewayports": "no", "permittty": "no", "permituserrc": "no", "maxsessions": "4"}

    stdio = thief_ssh(stolen_key, node2, "-W", "127.0.0.1:22", command=None)
    assert "stdio forwarding failed" in stdio.stderr and "SSH-2.0" not in stdio.stdout, stdio
    remote = thief_ssh(stolen_key, node2, "-N", "-o", "ExitOnForwardFailure=yes",
                       "-R", "127.0.0.1:0:127.0.0.1:22", command=None)
    assert remote.returncode == 255 and "forwarding failed" in remote.stderr, remote
    tty = thief_ssh(stolen_key, node2, "-tt")
    assert "PTY allocation request failed" in tty.stderr, tty
    x11 = thief_ssh(stolen_key, node2, "-Y")
    assert "X11 forwarding request failed" in x11.stderr, x11
    with socket.socket() as probe:   # a free local port for -L
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    local = subprocess.Popen(
        ["ssh", *access.ssh_options(FAULT), "-i", str(stolen_key), "-N",
         "-L", f"127.0.0.1:{port}:127.0.0.1:22", f"replimesh@{node2.address}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True)
    try:
        banner, connected = b"", False
        for _ in range(50):   # until ssh listens
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as tunnel:
                    connected = True
                    tunnel.settimeout(5)
                    banner = tunnel.recv(100)
                break
            except ConnectionRefusedError:
                time.sleep(0.2)
            except (TimeoutError, ConnectionResetError):
                break
        assert connected and not banner.startswith(b"SSH-"), banner   # sshd never answered
    finally:
        local.terminate()
        local.wait(timeout=10)
    honest_round_converges(nodes)



# --- Bounded work per peer, peer-supplied text as data ----------------------------------

LOGS = "/var/log/replimesh"


def log_size(node):
    return int(on(node, f"cat {LOGS}/peers.log {LOGS}/serve.log 2>/dev/null | wc -c").stdout)


def bogus_entries(node, size=4 << 20):
    """A peer list of size bytes: node's own entries, then tombstones of new names, all
    "newer", each with a well-formed signature made over something else (each would cost
    a real `ssh-keygen -Y verify`)."""
    real = json.loads(on(node, f"cat {MESH_FILES}/peers.json").stdout)
    signature = real["peers"][0]["signature"]
    one = {"addresses": [], "ssh_key": "", "host_keys": [], "state": "removed",
           "version": 99, "signature": signature}
    count = size // len(json.dumps({"name": "bogus00000", **one}))
    bogus = [{"name": f"bogus{n:05d}", **one} for n in range(count)]
    return json.dumps({"format": 2, "peers": real["peers"] + bogus})


def honest_exchange(node, peer):
    """node's own exchange with peer, as its rounds start it: (exit code, seconds)."""
    started = time.monotonic()
    done = as_sync_user(node, f"sh -c 'ssh {peer.address} {EXCHANGE} < {MESH_FILES}/peers.json "
                              "> /dev/null'", check=False, timeout=600)
    return done.returncode, time.monotonic() - started


def test_a_flood_of_bogus_entries_costs_seconds_and_blocks_no_other_peer(nodes, stolen_key):
    node2, node3 = nodes["node2"], nodes["node3"]
    flood, before = bogus_entries(node2), log_size(node2)
    started = time.monotonic()
    with ThreadPoolExecutor(1) as pool:
        thief = pool.submit(as_thief, stolen_key, node2, EXCHANGE, stdin=flood, timeout=120)
        time.sleep(0.5)  # the flood is being checked
        code, honest_s = honest_exchange(node3, node2)
        done = thief.result()
    flood_s = time.monotonic() - started
    assert code == 0 and honest_s < 15, honest_s       # was 225 s, behind the flood
    assert done.returncode == 0 and flood_s < 20, flood_s  # was 231 s
    assert log_size(node2) - before < 2000   # was 1.07 MB: a line per bogus entry
    ignored = on(node2, f"grep -c 'ignored bogus00000 .* from node1' {LOGS}/peers.log").stdout
    assert ignored.strip() == "1"
    honest_round_converges(nodes)


@pytest.mark.parametrize("data", [
    b"[" * 200_000,
    b'{"format": 2, "peers": [{"name": "\xff\x1b[2J"}]}',
    b'{"format": 2, "peers": [{"name": "\\udcff"}]}',
    b'{"format": 2, "peers": [], "n": ' + b"9" * 1_000_000 + b"}",
    b'{"format": 2, "peers": [{"name": "n", "version": 1e999}]}',
    b'{"format": 2, "peers": [{"name": "' + b"x" * 1_000_000 + b'"}]}',
], ids=["deep", "not-utf8", "lone-surrogate", "huge-int", "infinite", "long-name"])
def test_a_malformed_exchange_gets_a_one_line_refusal(nodes, stolen_key, data):
    node2 = nodes["node2"]
    lines = int(on(node2, f"cat {LOGS}/serve.log | wc -l").stdout)
    done = thief_sends(stolen_key, node2, EXCHANGE, data)
    err = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 1 and done.stdout == b""
    assert err.count("\n") == 1 and err.startswith("replimesh: "), err[:2000]
    assert "Traceback" not in err and len(err) < 1200   # a long name was 1 MB
    added = on(node2, f"tail -n +{lines + 1} {LOGS}/serve.log").stdout.splitlines()
    assert len(added) == 1 and " exchange with node1 failed: " in added[0], added
    assert len(added[0]) < 1200


def test_a_newline_in_a_requested_root_forges_no_log_line(nodes, stolen_key):
    node2 = nodes["node2"]
    lines = int(on(node2, f"cat {LOGS}/serve.log | wc -l").stdout)
    done = as_thief(stolen_key, node2,
                    "replimesh-replica '/x\naccepted node3: forged\x1b[2J' -server")
    assert done.returncode == 1
    added = on(node2, f"tail -n +{lines + 1} {LOGS}/serve.log").stdout.splitlines()
    assert len(added) == 1, added
    assert added[0].endswith(" refused node1: /x\\naccepted node3: forged\\x1b[2J is not "
                             "a replica of node2"), added


def test_an_exchange_that_sends_nothing_is_cut_off(nodes, stolen_key):
    node2 = nodes["node2"]
    idle = subprocess.Popen(  # stdin stays open and silent: `sleep 100000 | ssh ...`
        ["ssh", *access.ssh_options(FAULT), "-i", str(stolen_key), "-o", "IdentitiesOnly=yes",
         f"replimesh@{node2.address}", EXCHANGE],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        started, seen, gone = time.monotonic(), False, None
        while time.monotonic() - started < 30 and gone is None:
            serving = on(node2, "pgrep -u replimesh -f 'replimesh serve --peer node1'",
                         check=False).stdout.strip()
            seen = seen or bool(serving)
            if seen and not serving:
                gone = time.monotonic() - started
            time.sleep(0.5)
        assert gone is not None and gone < 12, gone   # was: never
        assert "exchange with node1 failed: peer list from node1: 0 bytes in 5 s, too slow" \
            in on(node2, f"tail -n 1 {LOGS}/serve.log").stdout
    finally:
        idle.kill()
        idle.wait()
    honest_round_converges(nodes)


# --- Swarm admission ---------------------------------------------------------------------
# Offers: node1's stolen key may sign offers as node1, never as another node; what any
# offer may claim is bounded. The swarm port: only active peers' addresses reach it.

SWARM_PORT = 6881
MANIFEST_NS = "replimesh-swarm-offer"


def bencode(value) -> bytes:
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, bytes):
        return b"%d:%s" % (len(value), value)
    return b"d" + b"".join(bencode(k) + bencode(v) for k, v in sorted(value.items())) + b"e"


def thief_offer(key, tmp_path, path="big.bin", size=1 << 40, publisher="node1",
                published=None):
    """An offer as a thief makes it: a manifest claiming size bytes with no piece layer
    (~300 bytes), signed with the stolen key as node1."""
    name = path.rsplit("/", 1)[-1].encode()
    info = {b"file tree": {name: {b"": {b"length": size, b"pieces root": b"r" * 32}}},
            b"meta version": 2, b"name": name, b"piece length": 16 << 20, b"private": 1}
    offer = swarm_offers.Offer(
        path, hashlib.sha256(bencode(info)).hexdigest(), bencode({b"info": info}), publisher,
        published or datetime.now(timezone.utc).isoformat(timespec="microseconds"), size)
    data = tmp_path / "offer.signed"
    data.write_bytes(offer.signed_bytes())
    subprocess.run(["ssh-keygen", "-q", "-Y", "sign", "-f", str(key), "-n", MANIFEST_NS,
                    str(data)], check=True, capture_output=True)
    return offer.signed((tmp_path / "offer.signed.sig").read_text().strip())


def assert_one_line_refusal(done, needle=""):
    err = done.stderr.decode(errors="replace")
    assert done.returncode != 0, (done.stdout, err)
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert "refused" in err or "replimesh:" in err, err
    assert needle in err, err


def held_offers(key, node):
    return as_thief(key, node, "replimesh-swarm have").stdout.split()


def daemon_rss_kib(node):
    return int(on(node, "ps -o rss= -p $(cat /var/lib/replimesh/swarm/daemon.lock)").stdout)


@pytest.fixture
def swarm_daemons(nodes):
    for node in nodes.values():
        as_sync_user(node, "replimesh swarm daemon --detach")
    time.sleep(3)  # listening, its first offers and filter read
    return nodes


def test_a_kibibyte_offer_claiming_a_tebibyte_is_refused_and_the_daemon_stays_small(
        swarm_daemons, stolen_key, tmp_path):
    nodes = swarm_daemons
    before = daemon_rss_kib(nodes["node2"])
    offer = thief_offer(stolen_key, tmp_path)
    assert len(offer.to_json()) < 1024
    done = thief_sends(stolen_key, nodes["node2"], "replimesh-swarm offer",
                       offer.to_json().encode())
    assert_one_line_refusal(done, "piece layer does not match its size")
    time.sleep(5)  # what a taken offer would cost shows within a tick of the daemon
    after = daemon_rss_kib(nodes["node2"])
    assert after - before < 20_000, (before, after)
    assert offer.infohash not in held_offers(stolen_key, nodes["node2"])
    honest_round_converges(nodes)


@pytest.mark.parametrize(("change", "needle"), [
    ({"published": "9999-12-31T23:59:59.000000+00:00"}, "ahead of this node's clock"),
    ({"publisher": "node3"}, "not signed by its publisher node3")],
    ids=["dated-9999", "forged-publisher"])
def test_an_offer_dated_far_ahead_or_for_another_publisher_is_refused(
        nodes, stolen_key, tmp_path, change, needle):
    offer = thief_offer(stolen_key, tmp_path, path="blocked.bin", size=1000, **change)
    done = thief_sends(stolen_key, nodes["node2"], "replimesh-swarm offer",
                       offer.to_json().encode())
    assert_one_line_refusal(done, needle)
    assert offer.infohash not in held_offers(stolen_key, nodes["node2"])


@pytest.mark.parametrize("sent", [
    b"[" * 200_000, b'{"path": "\xff\xfe"}', b'{"size": 1' + b"0" * 200_000 + b"}",
    b"{" * 40 + b"x" * (40 << 20)], ids=["deep", "not-utf8", "huge-number", "huge"])
def test_malformed_swarm_input_gets_a_one_line_refusal(nodes, stolen_key, sent):
    done = thief_sends(stolen_key, nodes["node2"], "replimesh-swarm offer", sent)
    assert_one_line_refusal(done, "offer from node1")


def test_the_swarm_port_drops_a_non_peer_before_tls(swarm_daemons):
    """The controller is on the lab's network but in no peer list: its connection to
    node2's swarm port never opens (no TLS handshake to try). node1, a peer, connects."""
    nodes = swarm_daemons
    node2 = nodes["node2"]
    with pytest.raises(OSError):
        socket.create_connection((node2.address, SWARM_PORT), timeout=3).close()
    reached = on(nodes["node1"], f"timeout 5 bash -c '</dev/tcp/{node2.address}/"
                                 f"{SWARM_PORT}' && echo open", check=False)
    assert reached.stdout.strip() == "open", reached.stderr
