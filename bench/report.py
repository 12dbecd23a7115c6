"""Where a benchmark's results go: the raw numbers in results/<name>.json, and its
table in README.md between the markers <!-- <name>:begin --> and <!-- <name>:end -->."""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def save(name: str, data, table: str, folder: Path = HERE) -> None:
    (folder / "results").mkdir(exist_ok=True)
    (folder / "results" / f"{name}.json").write_text(json.dumps(data, indent=1) + "\n")
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    readme = (folder / "README.md").read_text()
    head, rest = readme.split(begin)
    _, tail = rest.split(end)
    (folder / "README.md").write_text(f"{head}{begin}\n{table}\n{end}{tail}")
