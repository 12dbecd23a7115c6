"""One call of a peer's `replimesh serve` verb over SSH (the exchange, the swarm's offers),
with what comes back read as hostile input: at most `limit` bytes of answer, within the
time limits of peer_input, and only the last line of its error output kept. (Unison
sessions make their own SSH connection: unison.py.)
"""

from __future__ import annotations

import contextlib
import subprocess
import threading

from . import peer_input
from .config import Config
from .errors import ConfigError

MAX_ERROR_BYTES = 64 << 10   # of the peer's stderr; the rest is read and dropped
# Beyond the connect timeout, what a peer may take to start answering (a minute of work).
ANSWER_WAIT_S = 60.0


def options(cfg: Config) -> list[str]:
    """The options of every SSH connection to a peer (besides the sync user's SSH client
    config): the known_hosts the node writes from the signed peer list, pinned here so
    that code and config always agree on it."""
    return ["-o", f"ConnectTimeout={cfg.connect_timeout}", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={cfg.known_hosts}", "-p", str(cfg.ssh_port)]


def call(cfg: Config, address: str, verb: str, sent: bytes, limit: int, answer: str,
         failed: str) -> bytes:
    """The peer's answer to verb, given sent on its standard input. ConfigError saying
    why not: "<answer>: ..." when the answer is too large or too slow, "<failed>: ..."
    with the peer's own last words when the call failed."""
    argv = [cfg.ssh, *options(cfg), f"{cfg.user}@{address}", verb]
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
        raise ConfigError(f"{failed}: {said[-1] if said else f'exit {process.returncode}'}")
    return got


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
