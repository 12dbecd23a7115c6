"""The `replimesh` command on every node: parses arguments and dispatches, nothing more."""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import config as node_config
from . import confine, daemons, membership, state, swarm_cli, watch_daemon
from . import peers as peer_list
from .errors import ConfigError, ReplimeshError
from .round import exit_code, now, run_round
from .serve import serve

EXIT_OK = 0
EXIT_PEER_FAILED = 1
EXIT_BAD_CONFIG = 2


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = node_config.load(args.config)
        return args.handler(cfg, args)
    except ReplimeshError as error:
        print(f"replimesh: {error}", file=sys.stderr)
        return EXIT_BAD_CONFIG


def _sync(cfg, args) -> int:
    def show(result):
        if not args.json:
            print(_peer_line(result.as_dict()), flush=True)
    if not args.json:
        print(f"== {now()} {cfg.node}: sync round", flush=True)
    results = run_round(cfg, progress=show, second_pass=not args.one_pass,
                        allow_deletions=args.allow_deletions,
                        scope=scope_of(cfg, args.path) if args.path else None)
    if args.json:
        print(json.dumps({"node": cfg.node, "peers": [r.as_dict() for r in results]}, indent=2))
    return exit_code(results)


def scope_of(cfg, paths: list[str]) -> dict[str, list[str] | None]:
    """{root: paths relative to it} of absolute paths in the roots; a root itself means
    all of it."""
    scope: dict[str, list[str] | None] = {}
    for path in paths:
        normal = os.path.normpath(path)
        root = next((r for r in cfg.roots if normal == r or normal.startswith(r + "/")), None)
        if not path.startswith("/") or root is None:
            raise ConfigError(f"--path {path}: not in a replica ({', '.join(cfg.roots)})")
        relative = normal[len(root) + 1:]
        if not relative or scope.get(root, []) is None:
            scope[root] = None
        else:
            scope.setdefault(root, []).append(relative)
    return scope


def _watch(cfg, args) -> int:
    return watch_daemon.run(cfg, detach=args.detach, replace=args.replace, stop=args.stop)


def _serve(cfg, args) -> int:
    return serve(cfg, args.peer)


def _status(cfg, args) -> int:
    recorded = state.load(cfg.state_file)
    if args.json:
        print(json.dumps(recorded, indent=2, sort_keys=True))
        return EXIT_OK
    print(f"{cfg.node}: last round {recorded.get('last_round', 'never')}")
    for name in sorted(recorded["peers"]):
        entry = recorded["peers"][name]
        print(f"{_peer_line(entry)}  (at {entry.get('at')}, last ok {entry.get('last_ok')})")
        for settled in entry.get("settled") or []:
            print(f"  conflict {settled}")
    return EXIT_OK


def _confinement(cfg, args) -> int:
    """Whether this node can confine its peers' sessions (the deploy asks)."""
    why = confine.available()
    if why:
        print(f"replimesh: {why}", file=sys.stderr)
        return EXIT_PEER_FAILED
    state = "on" if cfg.confine else "off (replimesh_agent_confine: false)"
    print(f"{cfg.node}: Landlock ABI {confine.abi()}; confinement of peers' sessions {state}")
    return EXIT_OK


def _peers_list(cfg, args) -> int:
    peers = membership.load(cfg)
    if args.json:
        print(json.dumps(peer_list.to_json(peers), indent=2))
        return EXIT_OK
    for name in sorted(peers):
        entry, me = peers[name], "  (this node)" if name == cfg.node else ""
        print(f"{name:<16} v{entry.version:<12} {entry.state:<8} "
              f"{','.join(entry.addresses) or '-'}{me}")
    return EXIT_OK


def _peers_accept(cfg, args) -> int:
    """Take in a signed list (the controller's, from `fab mesh.propagate`)."""
    source = "stdin" if args.file == "-" else args.file
    text = sys.stdin.read() if args.file == "-" else _read(args.file)
    outcome = membership.accept(cfg, membership.parse_sent(text, source), source)
    print(json.dumps({"node": cfg.node, "changed": outcome.changed,
                      "ignored": outcome.ignored}))
    return EXIT_PEER_FAILED if outcome.ignored else EXIT_OK


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as error:
        raise ReplimeshError(f"cannot read {path}: {error.strerror}") from None


def _peer_line(result: dict) -> str:
    line = (f"{result['peer']:<16} {result['result']:<12} {result['duration']:>7.2f}s "
            f"{result['files']:>6} files {result['bytes']:>12} bytes")
    if result.get("deleted"):
        line += f" {result['deleted']} deleted"
    if result.get("conflicts"):
        line += f" {result['conflicts']} conflicts"
    if result.get("unchanged"):
        line += f" {len(result['unchanged'])} root(s) unchanged"
    if result.get("learned"):
        line += f" learned {','.join(result['learned'])}"
    return line + (f"  {result['message']}" if result.get("message") else "")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="replimesh", description=(
        "Keep directories identical on every node of a full mesh, with Unison over SSH."))
    parser.add_argument("--config", help=f"node config (default {node_config.DEFAULT_PATH} "
                                          "or $REPLIMESH_CONFIG)")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="COMMAND")

    sync = verbs.add_parser("sync", help="one round against every active peer")
    sync.add_argument("--json", action="store_true", help="print the results as JSON")
    sync.add_argument("--allow-deletions", action="store_true",
                      help="take every root as it is now as intended, past the deletion "
                           "guard (after a large deletion you made on purpose)")
    sync.add_argument("--one-pass", action="store_true",
                      help="no second pass to the peers that missed a change in this round "
                           "(the mesh then needs a round on every node to converge)")
    sync.add_argument("--path", action="append", metavar="PATH",
                      help="sync only this file or folder of a replica (absolute; may be "
                           "given again), as the watcher's rounds do")
    sync.set_defaults(handler=_sync)

    watch = verbs.add_parser("watch", help="the watcher: a round for what changes here, "
                                           "within seconds")
    daemons.add_arguments(watch)
    watch.set_defaults(handler=_watch)

    serve_verb = verbs.add_parser("serve", help="the forced command of peers' SSH keys")
    serve_verb.add_argument("--peer", required=True, help="the peer whose key this is")
    serve_verb.set_defaults(handler=_serve)

    status = verbs.add_parser("status", help="the last result of every peer")
    status.add_argument("--json", action="store_true", help="print the state as JSON")
    status.set_defaults(handler=_status)

    confinement = verbs.add_parser(
        "confinement", help="whether this node can confine its peers' sessions (Landlock)")
    confinement.set_defaults(handler=_confinement)

    peers = verbs.add_parser("peers", help="the peer list")
    peers_verbs = peers.add_subparsers(dest="peers_verb", required=True, metavar="COMMAND")
    peers_list = peers_verbs.add_parser("list", help="list every peer and its state")
    peers_list.add_argument("--json", action="store_true", help="print the list as JSON")
    peers_list.set_defaults(handler=_peers_list)
    peers_accept = peers_verbs.add_parser(
        "accept", help="take in the operator-signed entries of a peer list and apply it")
    peers_accept.add_argument("file", help="the list as JSON, or - for standard input")
    peers_accept.set_defaults(handler=_peers_accept)
    swarm_cli.add_parser(verbs)
    return parser
