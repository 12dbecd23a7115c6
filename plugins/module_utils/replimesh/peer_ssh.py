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

The watcher keeps its connections in a fixed folder of the sync user (kept_folder), and
the node's other processes (cron rounds, `replimesh sync`, the swarm daemon) run their
calls and sessions over them too, so a full round pays no handshake while the watcher
runs. Rounds of one node never overlap (the round lock); an idle connection is closed
with `ssh -O stop`, which lets a session under way end. When the watcher stops, its
connections end with it, and so do sessions over them (a round then fails for that peer,
and the next one syncs it).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import stat
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
_draining: list[Master] = []        # stopped, ending with their last session
_folder: list[str] = []             # the sockets' private folder, within sharing()
_kept: list[bool] = []              # within sharing(): whether it is kept_folder
# The one thread that starts the masters, within sharing(): a child is tied to the thread
# that started it (children.tied), and a round's connect() calls come from pool threads
# that end with the round, while its connections may be kept for the next.
_starter: list[ThreadPoolExecutor] = []
# One connect() at a time per address: the watcher's warm-up (round.open_connections) and
# its round may both connect to a peer; the second waits for the first and takes its
# connection. _guard: _shared changes as one step (connect's threads, close_idle).
_connecting: dict[str, threading.Lock] = {}
_guard = threading.Lock()
MASTER_WAIT_S = 5.0                 # beyond the connect timeout, for the login
# A socket's path, with the random suffix ssh adds while it binds, must fit in sun_path
# (108 bytes on Linux).
MAX_SOCKET_PATH = 90
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
    ssh: str
    used: float = field(default_factory=time.monotonic)   # when a call last ran over it


def options(cfg: Config, address: str | None = None) -> list[str]:
    """The options of every SSH connection to a peer (besides the sync user's SSH client
    config): the known_hosts the node writes from the signed peer list, pinned here so
    that code and config always agree on it; the shared connection to address, if open
    or the watcher's (when it is gone, ssh connects by itself)."""
    argv = ["-o", f"ConnectTimeout={cfg.connect_timeout}", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={cfg.known_hosts}", "-p", str(cfg.ssh_port)]
    if not address:
        return argv
    master = _shared.get(address)
    if master is not None and master.process.poll() is None:
        master.used = time.monotonic()
        shared = master.socket
    else:
        shared = None if _kept else _watchers(cfg, address)
    if shared is not None:
        argv += ["-o", "ControlMaster=no", "-o", f"ControlPath={shared}"]
    return argv


def kept_folder(cfg: Config) -> str:
    """Where the watcher keeps its connections for the node's other processes."""
    return os.path.join(os.path.dirname(cfg.state_file), "connections")


def _socket_path(folder: str, address: str) -> str:
    # Named after the address: rounds connect to their peers side by side (threads).
    return os.path.join(folder, hashlib.sha256(address.encode()).hexdigest()[:16])


def _watchers(cfg: Config, address: str) -> str | None:
    """The socket of the watcher's connection to address, if up, in a folder that only
    this user reaches (another user's socket there could be a man in the middle)."""
    folder = kept_folder(cfg)
    if not _private(folder):
        return None
    path = _socket_path(folder, address)
    return path if _answers(path) else None   # not one left by a watcher killed


def _private(folder: str) -> bool:
    """Whether folder is a folder (not a symbolic link) of this user's, mode 0700."""
    try:
        found = os.lstat(folder)
    except OSError:
        return False
    return stat.S_ISDIR(found.st_mode) and found.st_uid == os.geteuid() \
        and not found.st_mode & 0o077


def _answers(path: str) -> bool:
    """Whether a master listens on the socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


@contextlib.contextmanager
def sharing(cfg: Config | None = None, keep: bool = False) -> Iterator[None]:
    """Connections opened by connect() within are shared, and closed at the end. keep
    (the watcher's): in kept_folder(cfg), for the node's other processes too."""
    if _folder:   # already within: the outer block closes them
        yield
        return
    kept = keep and cfg is not None and _make_kept_folder(cfg)
    try:
        _folder.append(kept_folder(cfg) if kept else tempfile.mkdtemp(prefix="replimesh-ssh-"))
    except OSError:   # no writable temporary folder: every call connects by itself
        yield
        return
    if kept:
        _kept.append(True)
    _starter.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="ssh-masters"))
    try:
        yield
    finally:
        close_idle(-1.0)
        _starter.pop().shutdown()
        if _kept:
            _kept.pop()
            _clear(_folder.pop())
        else:
            shutil.rmtree(_folder.pop(), ignore_errors=True)


def _make_kept_folder(cfg: Config) -> bool:
    """Whether kept_folder(cfg) is ready for the watcher's sockets: this user's, mode
    0700, emptied of a watcher's that ended, its sockets' paths short enough."""
    folder = kept_folder(cfg)
    if len(_socket_path(folder, "")) > MAX_SOCKET_PATH:
        return False
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        if stat.S_ISDIR(os.lstat(folder).st_mode):   # not through a symbolic link
            os.chmod(folder, 0o700)
    except OSError:   # another user's, say
        return False
    if not _private(folder):
        return False
    _clear(folder)
    return True


def _clear(folder: str) -> None:
    with contextlib.suppress(OSError):
        for name in os.listdir(folder):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(folder, name))


def close_idle(seconds: float) -> None:
    """Close the shared connections unused for more than seconds (and those gone); all
    of them, at once, when seconds < 0. The watcher's are stopped (`ssh -O stop`) and
    reaped later: a session of another process under way over one ends first."""
    now = time.monotonic()
    with _guard:
        idle = [a for a, m in _shared.items()
                if m.process.poll() is not None or now - m.used > seconds]
        closing = [_shared.pop(address) for address in idle]
    if _kept and seconds >= 0:
        for master in closing:
            if master.process.poll() is None:
                _stop(master)
        _draining.extend(closing)
        closing = [m for m in _draining if m.process.poll() is not None]
    else:
        closing += _draining
    _draining[:] = [m for m in _draining if m not in closing]
    for master in closing:
        if master.process.poll() is None:
            master.process.terminate()
    for master in closing:
        try:
            master.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            master.process.kill()
            master.process.wait()


def _stop(master: Master) -> None:
    """Ask the master to take no new session and to end after its last; it removes its
    socket."""
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        subprocess.run([master.ssh, "-o", f"ControlPath={master.socket}", "-O", "stop",
                        "peer"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=5, check=False)


def is_open(address: str) -> bool:
    """Whether this process's shared connection to address is up."""
    master = _shared.get(address)
    return master is not None and master.process.poll() is None


def connect(cfg: Config, address: str) -> str:
    """Open the shared connection to address (within sharing(); once): "" when it is up
    (or not within sharing(), or the watcher's is up), else ssh's reason; the calls
    then connect by themselves."""
    if not _folder:
        return ""
    with _connecting.setdefault(address, threading.Lock()):
        return _connect(cfg, address)


def _connect(cfg: Config, address: str) -> str:
    with _guard:
        master = _shared.get(address)
        if master is not None:
            if master.process.poll() is None:
                return ""
            del _shared[address]   # it ended (the peer restarted?): connect again
    if not _kept and _watchers(cfg, address) is not None:
        return ""
    path = _socket_path(_folder[0], address)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)   # an ended master's
    argv = [cfg.ssh, *options(cfg), "-N", "-o", "ControlMaster=yes",
            "-o", f"ControlPath={path}", "-o", "ControlPersist=no",
            f"{cfg.user}@{address}"]
    process = _starter[0].submit(
        subprocess.Popen, argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, preexec_fn=children.tied()).result()
    deadline = time.monotonic() + cfg.connect_timeout + MASTER_WAIT_S
    while not os.path.exists(path):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            said = process.communicate()[1].decode(errors="replace").strip().splitlines()
            return said[-1] if said else f"ssh exited with status {process.returncode}"
        time.sleep(0.01)
    process.stderr.close()
    with _guard:
        _shared[address] = Master(process, path, cfg.ssh)
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
