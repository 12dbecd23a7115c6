"""Fuzz of what a peer can send to `replimesh serve`: the command it asks for, and the
exchange it sends (JSON of any shape, deep nesting, huge numbers, invalid UTF-8). The
property: a refusal is a ConfigError or Refused, never another exception, and every log
line written is one line, bounded. Derandomized and with a fixed number of examples, so
it is fast and the same on every run."""

import contextlib
import io
import json
import os
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plugins.module_utils.replimesh import (
    journal,
    membership,
    replica_history,
    serve,
    swarm_mesh,
    unison,
)
from plugins.module_utils.replimesh.errors import ConfigError
from plugins.module_utils.replimesh.serve import Refused

from .support import script, write_node

FUZZ = settings(max_examples=150, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PEERS = [{"name": "node1"}, {"name": "node2"}, {"name": "node3", "state": "removed"}]
# A log line: time (25), client address (at most 64), the message (journal.MAX_LINE and
# what says it was cut).
MAX_LOG_LINE = 25 + 1 + 64 + 1 + journal.MAX_LINE + 60


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    folder = tmp_path_factory.mktemp("node")
    program = script(folder, "unison", "exit 0\n")  # a session that ends at once
    return write_node(folder, PEERS, unison=program)[0]


@contextlib.contextmanager
def logs_checked(cfg):
    """Counts journal.append calls meanwhile; then each log grew by exactly that many
    lines, each valid UTF-8, printable and bounded."""
    before = {name: _size(cfg, name) for name in os.listdir(cfg.log_dir)}
    calls = []
    real = journal.append
    journal.append = lambda c, name, line: calls.append(name) or real(c, name, line)
    try:
        yield
    finally:
        journal.append = real
    for name in set(calls) | set(os.listdir(cfg.log_dir)):
        with open(os.path.join(cfg.log_dir, name), "rb") as handle:
            handle.seek(before.get(name, 0))
            lines = handle.read().decode("utf-8").split("\n")
        assert lines.pop() == ""
        assert len(lines) == calls.count(name), lines
        for line in lines:
            assert len(line) <= MAX_LOG_LINE and line.isprintable(), line


def _size(cfg, name):
    return os.path.getsize(os.path.join(cfg.log_dir, name))


# What a peer may send: JSON of any shape, shapes close to a peer list and a history (so
# that the fuzz reaches past the first check), and raw text JSON never produces.
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
           | st.text(max_size=30))
ANY_JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                        max_leaves=12)
NAMES = st.sampled_from(["node1", "node2", "node4", "a\nb", "x" * 70, "", "node\x1b[2J"])
ENTRY = st.fixed_dictionaries(
    {"name": NAMES | ANY_JSON, "state": st.sampled_from(["active", "removed", "x"]),
     "version": st.integers(-1, 2**70) | ANY_JSON, "addresses": st.lists(st.text(max_size=9)),
     "ssh_key": st.sampled_from(["", "ssh-ed25519 AAAA"]) | ANY_JSON,
     "host_keys": st.lists(st.sampled_from(["ssh-ed25519 AAAA", "x"])),
     "signature": st.sampled_from(["", "-----BEGIN SSH SIGNATURE-----\nx"]) | ANY_JSON},
    optional={"extra": ANY_JSON})
RECORD = st.tuples(st.text(max_size=20) | ANY_JSON, st.sampled_from(["dir", "0" * 64, "x"]),
                   st.integers(-1, 2**41), st.sampled_from(["deleted", "replaced", "?"]),
                   NAMES, st.integers(-1, 2**41)).map(list) | ANY_JSON
EXCHANGE = st.fixed_dictionaries(
    {"format": st.just(2) | ANY_JSON, "peers": st.lists(ENTRY, max_size=4) | ANY_JSON},
    optional={"history": st.dictionaries(st.sampled_from(["ROOT", "/etc"]),
                                         st.lists(RECORD, max_size=4) | ANY_JSON)
              | ANY_JSON})


def raw(cfg):
    """Bytes on the exchange's stdin."""
    as_json = (EXCHANGE | ANY_JSON).map(
        lambda data: json.dumps(data).replace('"ROOT"', json.dumps(cfg.roots[0])).encode())
    return st.one_of(
        as_json,
        st.integers(1, 50_000).map(lambda depth: b"[" * depth + b"]" * depth),
        st.integers(4000, 100_000).map(lambda digits: b'{"format": 2, "peers": [], "n": '
                                       + b"7" * digits + b"}"),
        st.sampled_from([b"1e999", b"-Infinity", b"NaN", b'"\\ud800"', b"\xff\xfe", b""]),
        st.binary(max_size=200),
        st.text(max_size=200).map(lambda text: text.encode("utf-8", "surrogatepass")))


def commands(cfg):
    verbs = [membership.EXCHANGE, f"{unison.REPLICA_SERVER} {cfg.roots[0]} -server",
             "unison -server", "replimesh-replica", *swarm_mesh.VERBS]
    return st.one_of(st.none(), st.text(max_size=80),
                     st.tuples(st.sampled_from(verbs), st.text(max_size=40)).map(" ".join),
                     st.text(max_size=40).map(
                         lambda root: f"{unison.REPLICA_SERVER} {root} -server"))


def test_check_only_refuses(cfg):
    @FUZZ
    @given(peer=NAMES | st.text(max_size=20), command=commands(cfg))
    def check(peer, command):
        with contextlib.suppress(Refused, ConfigError):
            argv = serve.check(cfg, peer, command)
            assert argv[0] in (cfg.unison, membership.EXCHANGE, *swarm_mesh.VERBS)
    check()


def test_the_exchange_parsers_only_refuse(cfg):
    @FUZZ
    @given(data=raw(cfg))
    def parse(data):
        with logs_checked(cfg), contextlib.suppress(ConfigError):
            text = data.decode("utf-8", "surrogateescape")
            membership.parse_sent(text, "node2")
            sent = membership.read_sent(text, "node2")
            if isinstance(sent, dict):
                replica_history.take(cfg, sent, "node2")
            membership.answer_exchange(cfg, "node2", text)
    parse()


def test_serve_answers_any_request_with_an_answer_or_a_one_line_refusal(cfg, tmp_path):
    @FUZZ
    @given(command=commands(cfg), data=raw(cfg), client=st.text(max_size=30))
    def request(command, data, client):
        if command and command.split(" ", 1)[0] in {v.split()[0] for v in swarm_mesh.VERBS}:
            command = membership.EXCHANGE  # the swarm's verbs are fuzzed with swarm mode
        (tmp_path / "stdin").write_bytes(data)
        out, err = io.StringIO(), io.StringIO()
        environ = {"SSH_ORIGINAL_COMMAND": command, "SSH_CLIENT": client}
        with open(tmp_path / "stdin", encoding="utf-8") as stdin, logs_checked(cfg), \
                _environment(environ), contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(err):
            saved, sys.stdin = sys.stdin, stdin
            try:
                code = serve.serve(cfg, "node2")
            finally:
                sys.stdin = saved
        if code != 0:
            assert err.getvalue().count("\n") == 1 and err.getvalue().endswith("\n")
            assert len(err.getvalue()) <= journal.MAX_LINE + 100
    request()


@contextlib.contextmanager
def _environment(values):
    saved = {name: os.environ.get(name) for name in values}
    for name, value in values.items():
        if value is None or "\0" in value:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value.encode("utf-8", "surrogateescape").decode(
                "utf-8", "replace")
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
