"""SSH to peers: the options of every connection (the calls here, Unison's sessions), the
one connection a round shares per peer, and one call of a peer's `replimesh serve` verb
(the exchange, the swarm's offers), with what comes back read as hostile input: at most
`limit` bytes of answer, within the time limits of peer_input, and only the last line of
its error output kept.

Within sharing(), connect() opens one SSH connection to a peer (OpenSSH's connection
sharing: a master process, its socket in a private folder); every later call and Unison
session to that address runs as a session of it, so a round pays one handshake (and
one login's key lookup on the peer) per peer instead of one per call. The peer's sshd
still forces `replimesh serve` on every session of it. A round's connections close at
its end; the watcher's stay open between its rounds while in use (close_idle).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from . import children, peer_input
from .config import Config
from .errors import ConfigError, Unreachable

MAX_ERROR_BYTES = 64 << 10   # of the peer's stderr; the rest is read and dropped
# Beyond the connect timeout, what a peer may take to start answering (a minute of work).
ANSWER_WAIT_S = 60.0


_shared: dict[str, Master] = {}   # address -> its master, within sharing()
_folder: list[str] = []             # the sockets' private folder, within sharing()
# The one thread that starts the masters, within sharing(): a child is tied to the thread
# that started it (children.tied), and a round's connect() calls come from pool threads
# that end with the round, while its connections may be kept for the next.
_starter: list[ThreadPoolExecutor] = []
MASTER_WAIT_S = 5.0                 # beyond the connect timeout, for the login
SSH_FAILED = 255   # ssh's own exit status (a remote command's is its own)
# What ssh says when it never reached the peer's sshd: the peer is unreachable, not
# failing (a host key or a login refused is a failure).
_NETWORK = ("Connection refused", "Connection timed out", "No route to host",
            "Network is unreachable", "Connection reset by peer",
            "timed out during banner exchange", "Operation timed out")


@dataclass
class Master:
    process: subprocess.Popen
    socket: str
    used: float = field(default_factory=time.monotonic)   # when a call last ran over it


def options(cfg: Config, address: str | None = None) -> list[str]:
    """The options of every SSH connection to a peer (besides the sync user's SSH client
    config): the known_hosts the node writes from the signed peer list, pinned here so
    that code and config always agree on it; the shared connection to address, if open
    (when it is gone, ssh connects by itself)."""
    argv = ["-o", f"ConnectTimeout={cfg.connect_timeout}", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={cfg.known_hosts}", "-p", str(cfg.ssh_port)]
    master = _shared.get(address or "")
    if master is not None and master.process.poll() is None:
        master.used = time.monotonic()
        argv += ["-o", "ControlMaster=no", "-o", f"ControlPath={master.socket}"]
    return argv


@contextlib.contextmanager
def sharing() -> Iterator[None]:
    """Connections opened by connect() within are shared, and closed at the end."""
    if _folder:   # already within: the outer block closes them
        yield
        return
    try:
        _folder.append(tempfile.mkdtemp(prefix="replimesh-ssh-"))
    except OSError:   # no writable temporary folder: every call connects by itself
        yield
        return
    _starter.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="ssh-masters"))
    try:
        yield
    finally:
        close_idle(-1.0)
        _starter.pop().shutdown()
        shutil.rmtree(_folder.pop(), ignore_errors=True)


def close_idle(seconds: float) -> None:
    """Close the shared connections unused for more than seconds (and those gone)."""
    now = time.monotonic()
    idle = [a for a, m in _shared.items()
            if m.process.poll() is not None or now - m.used > seconds]
    for address in idle:
        _shared[address].process.terminate()
    for address in idle:
        master = _shared.pop(address)
        try:
            master.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            master.process.kill()
            master.process.wait()


def connect(cfg: Config, address: str) -> str:
    """Open the shared connection to address (within sharing(); once): "" when it is up
    (or not within sharing()), else ssh's reason; the calls then connect by themselves."""
    if not _folder:
        return ""
    master = _shared.get(address)
    if master is not None:
        if master.process.poll() is None:
            return ""
        del _shared[address]   # it ended (the peer restarted?): connect again
    # Named after the address: rounds connect to their peers side by side (threads).
    socket = os.path.join(_folder[0], hashlib.sha256(address.encode()).hexdigest()[:16])
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket)   # an ended master's
    argv = [cfg.ssh, *options(cfg), "-N", "-o", "ControlMaster=yes",
            "-o", f"ControlPath={socket}", "-o", "ControlPersist=no",
            f"{cfg.user}@{address}"]
    process = _starter[0].submit(
        subprocess.Popen, argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, preexec_fn=children.tied()).result()
    deadline = time.monotonic() + cfg.connect_timeout + MASTER_WAIT_S
    while not os.path.exists(socket):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            said = process.communicate()[1].decode(errors="replace").strip().splitlines()
            return said[-1] if said else f"ssh exited with status {process.returncode}"
        time.sleep(0.01)
    process.stderr.close()
    _shared[address] = Master(process, socket)
    return ""


def call(cfg: Config, address: str, verb: str, sent: bytes, limit: int, answer: str,
         failed: str) -> bytes:
    """The peer's answer to verb, given sent on its standard input. ConfigError saying
    why not: "<answer>: ..." when the answer is too large or too slow, "<failed>: ..."
    with the peer's own last words when the call failed."""
    argv = [cfg.ssh, *options(cfg, address), f"{cfg.user}@{address}", verb]
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    errors: list[bytes] = []
    helpers = [threading.Thread(target=_send, args=(process.stdin, sent), daemon=True),
               threading.Thread(target=_tail, args=(process.stderr, errors), daemon=True)]
    for helper in helpers:
        helper.start()
    try:
        got = peer_input.read(process.stdout.fileno(), limit, answer,
                              grace_s=cfg.connect_timeout + ANSWER_WAIT_S)
    except ConfigError:
        process.kill()
        raise
    finally:
        process.stdout.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for helper in helpers:
            helper.join(timeout=5)
    if process.returncode != 0:
        said = b"".join(errors).decode(errors="replace").strip().splitlines()
        last = said[-1] if said else f"exit {process.returncode}"
        if process.returncode == SSH_FAILED and unreachable(last):
            raise Unreachable(f"{failed}: {last}")
        raise ConfigError(f"{failed}: {last}")
    return got


def unreachable(said: str) -> bool:
    """Whether ssh's last words say it never reached the peer."""
    return any(words in said for words in _NETWORK)


def _send(stream, data: bytes) -> None:
    # A BrokenPipeError means the peer stopped reading (it refused): its reason comes on
    # stderr.
    with contextlib.suppress(OSError):
        stream.write(data)
    with contextlib.suppress(OSError):
        stream.close()


def _tail(stream, kept: list[bytes]) -> None:
    """Read the stream to its end, keeping its last MAX_ERROR_BYTES."""
    tail = b""
    for chunk in iter(lambda: stream.read1(1 << 16), b""):
        tail = (tail + chunk)[-MAX_ERROR_BYTES:]
    stream.close()
    kept.append(tail)
