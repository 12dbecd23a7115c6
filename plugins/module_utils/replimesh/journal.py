"""The node's own logs under log_dir: one line per decision, with time and client address."""

from __future__ import annotations

import os
import sys
from datetime import datetime, timezone

from .config import Config


def append(cfg: Config, name: str, line: str) -> None:
    stamp = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    client = os.environ.get("SSH_CLIENT", "").split(" ")[0] or "-"
    try:
        with open(os.path.join(cfg.log_dir, name), "a", encoding="utf-8") as out:
            out.write(f"{stamp} {client} {line}\n")
    except OSError:
        print(f"replimesh: cannot write {cfg.log_dir}/{name}", file=sys.stderr)
