"""The signed peer list as the operator sees it: each node's copy side by side (`fab
mesh.peers`) and each node's answer to the controller's copy (`fab mesh.propagate`).

Pure functions over what the nodes printed; the tasks live in mesh.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# `fab` puts only fabfile/ on sys.path; the core (standard library only) is at the root.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.append(_ROOT)

from plugins.module_utils.replimesh import peers  # noqa: E402
from plugins.module_utils.replimesh.errors import ConfigError  # noqa: E402

CONTROLLER = "controller"
DIFFERS = ("* = differs from the newest signed entry: that node has not heard of the change "
           "yet (it will at its next round touching a peer that has, or run fab "
           "mesh.propagate)")
AGREE = "all nodes agree"
AGREE_READ = "all lists read agree"


def node_list(code: int | None, output: str, origin: str) -> peers.Peers | str:
    """A node's `replimesh peers list --json` outcome: its list, or why there is none."""
    if code != 0:
        return _first_line(output) or f"exit {code}"
    try:
        return peers.parse(json.loads(output), origin)
    except ValueError as error:
        return f"not JSON: {error}"
    except ConfigError as error:
        return str(error)


def read_list(path: Path) -> tuple[str, peers.Peers]:
    """The controller's signed list, as text and parsed; a ConfigError names the file and
    the problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from None
    try:
        data = json.loads(text)
    except ValueError as error:
        raise ConfigError(f"{path} is not JSON: {error}") from None
    return text, peers.parse(data, str(path))


def render_peers(nodes: dict[str, peers.Peers | str],
                 controller: peers.Peers | str | None = None) -> str:
    """One row per entry name, one column per node (in the given order) and one for the
    controller's copy if there is one. A cell is "v<version> <state>", "-" when that list
    lacks the entry, "?" when the list could not be read (why: in the notes below); a
    trailing "*" marks a cell that differs from the winning entry over all lists read."""
    columns = list(nodes.items()) + ([(CONTROLLER, controller)] if controller is not None
                                     else [])
    newest: peers.Peers = {}
    for _, listed in columns:
        if not isinstance(listed, str):
            newest = peers.merge(newest, listed)
    rows, differs = [["ENTRY \\ LIST OF", *(label for label, _ in columns)]], False
    for name in sorted(newest):
        row = [name]
        for _, listed in columns:
            if isinstance(listed, str):
                row.append("?")
                continue
            entry = listed.get(name)
            mark = "" if entry == newest[name] else "*"
            differs = differs or bool(mark)
            row.append((f"v{entry.version} {entry.state}" if entry else "-") + mark)
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    notes = [f"{label}: list not read ({listed[:120]})"
             for label, listed in columns if isinstance(listed, str)]
    if any(not isinstance(listed, str) for _, listed in columns):
        unread = any(isinstance(listed, str) for _, listed in columns)
        notes.append(DIFFERS if differs else AGREE_READ if unread else AGREE)
    return "\n".join(lines + notes)


def accept_outcome(code: int | None, output: str) -> tuple[str, str, bool]:
    """A node's answer to `replimesh peers accept -`: (status, detail, failed).

    Unreachable is not a failure: that node learns from its peers at its next round."""
    if code is None:
        return "UNREACHABLE", _first_line(output), False
    try:
        reply = json.loads(output.strip().splitlines()[-1])
        changed, ignored = list(reply["changed"]), list(reply["ignored"])
    except (ValueError, IndexError, KeyError, TypeError):
        return "FAILED", _first_line(output) or f"exit {code}", True
    detail = f"changed: {', '.join(changed)}" if changed else "unchanged"
    if ignored:
        why = f"ignored (not signed by the operator key): {', '.join(ignored)}"
        return "FAILED", f"{why}; {detail}", True
    if code != 0:
        return "FAILED", f"exit {code}; {detail}", True
    return "ok", detail, False


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0][:200] if lines else ""
