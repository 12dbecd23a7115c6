"""`replimesh swarm firewall` (root): only active peers' addresses reach the swarm port.

libtorrent checks its IP filter on an SSL listen socket only after the TLS handshake, so
any address could start one. This keeps everyone else out before: one iptables chain
(REPLIMESH-SWARM, ip6tables too where present, first in INPUT) that drops the swarm
port from every address but the active peers'. It only ever drops: a peer's packets go
on through INPUT as before (RETURN), so the host's own rules still apply to them. It is
made from the keys user's copy of the peer list (only checked entries, never rolled
back: the sync user's own list could be), and rewritten only when it differs. Cron runs
it every minute (role replimesh_swarm), so a node's removal closes the port to it within
a minute of reaching the keys user's copy (at the next login of any peer, or deploy).
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess

from . import authorized_keys, swarm_engine
from .config import Config
from .errors import ConfigError

CHAIN = "REPLIMESH-SWARM"
TOOLS = {4: "iptables", 6: "ip6tables"}


def signed_peer_hosts(cfg: Config) -> list[str]:
    """The addresses of the other active nodes, from the keys user's copy of the list
    (authorized_keys.py): entries whose operator signature was checked, and never rolled
    back, as a list the sync user writes could be."""
    peers = authorized_keys.load_copy(cfg)
    return [address for name, entry in sorted(peers.items())
            if name != cfg.node and entry.active for address in entry.addresses]


def chain_rules(port: int, allowed: set[str], family: int) -> list[str]:
    """The chain's rules (as `iptables -S CHAIN` prints them) for one address family."""
    own = sorted(a for a in allowed if ipaddress.ip_address(a).version == family)
    width = 32 if family == 4 else 128
    return ([f"-N {CHAIN}", f"-A {CHAIN} -i lo -j RETURN"]
            + [f"-A {CHAIN} -s {a}/{width} -p tcp -m tcp --dport {port} -j RETURN"
               for a in own]
            + [f"-A {CHAIN} -p tcp -m tcp --dport {port} -j DROP"])


def restore_input(rules: list[str]) -> str:
    """rules as iptables-restore --noflush input: the chain declared (which empties it)
    and filled in one commit, so no packet meets a half-written chain."""
    return "\n".join(["*filter", f":{CHAIN} - [0:0]", *rules[1:], "COMMIT", ""])


def apply(cfg: Config) -> list[str]:
    """Bring the chain of each address family in line with the peer list; what changed,
    one line per family (empty: nothing)."""
    allowed = swarm_engine.addresses(signed_peer_hosts(cfg))
    changed = []
    for family, tool in TOOLS.items():
        if shutil.which(tool) is None:
            if family == 4:
                raise ConfigError("iptables is not installed: deploy with playbooks/site.yml "
                                  "(role replimesh_swarm) or set replimesh_swarm_firewall")
            continue
        wanted = chain_rules(cfg.swarm_port, allowed, family)
        held = _run([tool, "-w", "-S", CHAIN], check=False).stdout.split("\n")
        if [line for line in held if line] != wanted:
            _run([f"{tool}-restore", "-w", "--noflush"], stdin=restore_input(wanted))
            count = len(wanted) - 3
            changed.append(f"{tool}: swarm port {cfg.swarm_port} open to {count} peer "
                           f"address(es), closed to every other")
        jump = ["INPUT", "-p", "tcp", "-j", CHAIN]
        if _run([tool, "-w", "-C", *jump], check=False).returncode != 0:
            _run([tool, "-w", "-I", *jump])
            changed.append(f"{tool}: INPUT sends TCP through {CHAIN}")
    return changed


def _run(argv: list[str], stdin: str | None = None, check: bool = True):
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False,
                          timeout=60)
    if check and done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        raise ConfigError(f"{' '.join(argv[:3])} failed: {why}")
    return done
