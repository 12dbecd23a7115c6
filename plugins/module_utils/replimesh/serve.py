"""`replimesh serve --peer NAME`: the forced command of every peer's key.

sshd runs it instead of whatever the peer asked for, which arrives in
SSH_ORIGINAL_COMMAND. Only replimesh's own verbs pass: the Unison server for one of
this node's replicas (run under that replica's lock), the push of a few files into one
of them (push.py), the peer-list exchange, and the swarm offers.
Anything else (a shell, scp, another program) is refused with a logged one-line reason
and a non-zero exit.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable

from . import (
    children,
    confine,
    journal,
    markers,
    membership,
    peer_input,
    push,
    replica,
    replica_history,
    swarm_mesh,
    unison,
)
from .config import Config
from .errors import ConfigError

# What a round's Unison asks the server side to run (`<servercmd> -server`, the server
# command naming the replica); newer releases may add flags of their own after it.
UNISON_SERVER_FLAGS = {"__new-rpc-mode"}
LOG = "serve.log"
EXIT_BUSY = 75  # EX_TEMPFAIL


class Refused(Exception):
    """The request is not one of replimesh's verbs from an active peer."""


def check(cfg: Config, peer: str, original_command: str | None) -> list[str]:
    """What to run for this request: [unison, ROOT, -server, flags...] for a Unison
    session on the replica ROOT (run as `unison -server flags...` under ROOT's lock), or
    [EXCHANGE] for the peer-list exchange, or [a swarm_mesh verb] (both done in this
    process); Refused saying why not."""
    known = membership.load(cfg)
    if peer == cfg.node or peer not in known or not known[peer].active:
        raise Refused(f"{peer} is not an active peer of {cfg.node}")
    if cfg.node in known and not known[cfg.node].active:
        raise Refused(f"{cfg.node} is removed from the mesh: it serves nobody")
    if not original_command:
        raise Refused("no command given (an interactive shell is never allowed)")
    try:
        argv = shlex.split(original_command)
    except ValueError:
        raise Refused(f"unparsable command {original_command!r}") from None
    if (len(argv) >= 3 and argv[0] == unison.REPLICA_SERVER and argv[2] == "-server"
            and set(argv[3:]) <= UNISON_SERVER_FLAGS):
        if argv[1] not in cfg.roots:
            raise Refused(f"{argv[1]} is not a replica of {cfg.node}")
        return [cfg.unison, *argv[1:]]  # [unison, root, -server, flags...]
    if argv[:2] == ["unison", "-server"]:
        raise Refused(f"{peer} asked for a plain `unison -server`: it runs an older "
                      "replimesh; deploy it with playbooks/site.yml")
    if argv == membership.EXCHANGE.split():
        return [membership.EXCHANGE]
    if len(argv) == 2 and argv[0] == push.VERB:
        if argv[1] not in cfg.roots:
            raise Refused(f"{argv[1]} is not a replica of {cfg.node}")
        return argv   # [push.VERB, root]
    if " ".join(argv) in swarm_mesh.VERBS:
        return [" ".join(argv)]
    raise Refused(f"command not allowed: {original_command[:200]!r}")


def serve(cfg: Config, peer: str) -> int:
    """Check the request, log the decision, and run the allowed verb."""
    original = os.environ.get("SSH_ORIGINAL_COMMAND")
    try:
        argv = check(cfg, peer, original)
    except (Refused, ConfigError) as refusal:  # an unreadable peer list refuses everyone
        journal.append(cfg, LOG, f"refused {peer}: {refusal}")
        print(f"replimesh: refused: {journal.one_line(str(refusal))}", file=sys.stderr)
        return 1
    if argv[0] in (membership.EXCHANGE, push.VERB) or argv[0] in swarm_mesh.VERBS:
        try:
            _confine_verb(cfg, writable=argv[1:] if argv[0] == push.VERB else None)
        except confine.Unavailable as why:
            return _refuse_unconfined(cfg, peer, why, "replimesh: refused: ")
        if argv[0] == membership.EXCHANGE:
            return _exchange(cfg, peer)
        if argv[0] == push.VERB:
            return _push(cfg, peer, argv[1])
        return _swarm(cfg, peer, argv[0])
    return _unison_server(cfg, peer, argv[1], [argv[0], *argv[2:]])


def _refuse_unconfined(cfg: Config, peer: str, why: confine.Unavailable, prefix: str) -> int:
    refusal = (f"{cfg.node} cannot confine a peer's session ({why}); it serves none "
               "unless deployed with replimesh_agent_confine: false")
    journal.append(cfg, LOG, f"refused {peer}: {refusal}")
    print(f"{prefix}{refusal}", file=sys.stderr)
    return 1


def _unison_server(cfg: Config, peer: str, root: str, argv: list[str]) -> int:
    """Run the Unison server for a peer's session on root, confined to that replica and
    the pair's archives, holding the replica's lock until it exits (the server inherits
    it too, and dies with this process), within the session and idle limits. Before, the
    replica is observed (the deletion guard, what was deleted here) and what the mesh's
    history says was deleted is deleted here too; after, what came in is observed."""
    try:
        sandbox = _sandbox(cfg, peer, root)
    except confine.Unavailable as why:
        return _refuse_unconfined(cfg, peer, why, unison.REFUSED)
    try:
        fd = replica.acquire(cfg, root, f"session from {peer}", replica.PEER_WAIT_S)
    except replica.Busy as busy:
        journal.append(cfg, LOG, f"busy for {peer}: {busy}")
        print(f"{unison.BUSY}{busy}", file=sys.stderr)
        return EXIT_BUSY
    try:
        observed = replica_history.observe(cfg, root, fresh_s=replica_history.FRESH_S)
        if observed.refusal:
            journal.append(cfg, LOG, f"refused {peer}: {observed.refusal}")
            print(f"{unison.REFUSED}{observed.refusal}", file=sys.stderr)
            return 1
        applied = replica_history.apply(cfg, root, observed)
        if applied:
            journal.append(cfg, LOG, f"deleted {len(applied)} path(s) of {root} that the "
                                     f"mesh deleted, into the backup area")
        journal.append(cfg, LOG, f"accepted {peer}: {' '.join(argv[1:])} on {root}"
                                 + ("" if sandbox else " (unconfined)"))
        process = subprocess.Popen(
            argv, cwd="/", env=unison.environment(cfg, peer), pass_fds=(fd,),
            preexec_fn=children.tied(then=sandbox.enter if sandbox else None))
        if sandbox:
            sandbox.close()
        stopped = children.supervise(process, cfg.session_timeout, cfg.idle_timeout)
        if stopped:
            journal.append(cfg, LOG, f"session from {peer} on {root} {stopped}")
        replica_history.observe(cfg, root, guard=False, after_session=True)
        return process.returncode
    finally:
        os.close(fd)


# What a confined Unison server may read besides its replica: the programs and libraries,
# and the few files of /etc that the C library reads (/etc/replimesh is not among them).
SYSTEM_READ = ["/usr", "/lib", "/lib64", "/bin", "/etc/ld.so.cache", "/etc/localtime",
               "/etc/passwd", "/etc/group", "/etc/nsswitch.conf", "/dev/urandom"]


def _sandbox(cfg: Config, peer: str, root: str) -> confine.Sandbox | None:
    """The rules of a session of peer on root, or None when confinement is turned off."""
    if not cfg.confine:
        return None
    return confine.Sandbox.build(read=SYSTEM_READ,
                                 write=[root, unison.pair_dir(cfg, peer), "/dev/null"])


# The code of replimesh itself (this package's folder), which the verbs go on importing.
CODE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What the exchange and swarm verbs read besides the system: OpenSSL's settings
# (libtorrent checks an offer's torrent).
VERB_READ = ["/etc/ssl/openssl.cnf"]
VERB_TMP = ".tmp"  # in the mesh folder: signatures being checked


def _confine_verb(cfg: Config, writable: list[str] | None = None) -> None:
    """Before a byte of the peer's request is read, restrict this process to what the
    exchange, the push and the swarm verbs touch: they write the mesh folder (peer list,
    its lock, known_hosts), the replicas' records, the swarm's offers and the logs (and
    writable: the replica a push writes); they read the code, the system, the
    operator's key and the replicas (walked for what was deleted here). The node's keys,
    Unison's archives and /etc/replimesh stay out of reach. Nothing when confinement is
    turned off; Unavailable when it cannot be done."""
    if not cfg.confine:
        return
    mesh = {os.path.dirname(cfg.peers_file), os.path.dirname(cfg.known_hosts)}
    write = [*mesh, cfg.log_dir, cfg.replica_dir, cfg.swarm_dir, "/dev/null", *(writable or [])]
    read = [*SYSTEM_READ, *VERB_READ, sys.prefix, sys.base_prefix, CODE_DIR,
            cfg.operator_signers, *cfg.roots]
    keys = os.path.dirname(cfg.swarm_signing_key)
    for path in (*write, *read):
        if _within(keys, path) or _within(cfg.unison_dir, path):
            raise confine.Unavailable(f"{path} holds the node's key or Unison's archives, "
                                      "which a peer's exchange must not reach: deploy the "
                                      "node with playbooks/site.yml")
    tmp = os.path.join(os.path.dirname(cfg.peers_file), VERB_TMP)
    for folder in (tmp, cfg.replica_dir):  # a rule needs its folder to exist
        os.makedirs(folder, mode=0o700, exist_ok=True)
    tempfile.tempdir = tmp
    confine.restrict(read=read, write=write)


def _within(folder: str, path: str) -> bool:
    """Whether path is folder or lies under it, or holds it (a rule on path would cover
    folder)."""
    folder, path = os.path.abspath(folder), os.path.abspath(path)
    common = os.path.commonpath([folder, path])
    return common in (folder, path)


def _exchange(cfg: Config, peer: str) -> int:
    def histories(sent: dict) -> dict:
        # Read before anything here looks at the replicas: see markers.py.
        changes = {root: markers.read(cfg, root) for root in cfg.roots}
        for root in cfg.roots:  # what was deleted here goes out in the answer
            replica_history.observe_if_free(cfg, root)
        _, problems = replica_history.take(cfg, sent, peer)
        for problem in problems:
            journal.append(cfg, LOG, f"exchange with {peer}: {problem}")
        return {**replica_history.attach(cfg), markers.KEY: changes}
    def answer() -> str:
        what = f"peer list from {peer}"
        sent = peer_input.decode(peer_input.read(sys.stdin.fileno(),
                                                 membership.MAX_EXCHANGE_BYTES, what), what)
        return membership.answer_exchange(cfg, peer, sent, histories)
    return _reply(cfg, answer, f"exchange with {peer} failed",
                  f"accepted {peer}: peer list exchange")


def _push(cfg: Config, peer: str, root: str) -> int:
    return _reply(cfg, lambda: push.answer(cfg, peer, root, sys.stdin.fileno()),
                  f"push from {peer} on {root} refused", f"accepted {peer}: push on {root}")


def _reply(cfg: Config, answer: Callable[[], str], refused: str, accepted: str) -> int:
    """Write a verb's answer (and log accepted), or log and say why it was refused."""
    try:
        said = answer()
    except ConfigError as error:
        journal.append(cfg, LOG, f"{refused}: {error}")
        print(f"replimesh: {journal.one_line(str(error))}", file=sys.stderr)
        return 1
    journal.append(cfg, LOG, accepted)
    sys.stdout.write(said)
    return 0


def _swarm(cfg: Config, peer: str, verb: str) -> int:
    try:
        if verb == swarm_mesh.HAVE:
            answer = swarm_mesh.answer_have(cfg)
        else:
            answer = swarm_mesh.answer_offer(cfg, peer, sys.stdin.fileno())
    except ConfigError as error:
        journal.append(cfg, LOG, f"{verb} from {peer} refused: {error}")
        print(f"replimesh: {error}", file=sys.stderr)
        return 1
    sys.stdout.write(answer)
    return 0
