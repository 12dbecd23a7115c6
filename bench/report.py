"""Where a benchmark's results go: the raw numbers in results/<name>.json, and its
table in README.md between the markers <!-- <name>:begin --> and <!-- <name>:end -->."""

from __future__ import annotations

import importlib.util
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


def require_plotting() -> None:
    """Stop before a run of minutes or hours whose plot could not be drawn at its end."""
    if importlib.util.find_spec("matplotlib") is None:
        raise SystemExit("the benchmarks draw their plots with matplotlib: "
                         "pip install -r bench/requirements.txt (make bench does)")


def plot_area(rows: int = 1, columns: int = 1, size: tuple[float, float] = (7, 3.5)):
    """(figure, axes) of a PNG plot (matplotlib from bench/requirements.txt, no display)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt.subplots(rows, columns, figsize=size)


def label(axis, xlabel: str, ylabel: str, legend: bool = True) -> None:
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3)
    if legend:
        axis.legend(fontsize=7)


def save_plot(figure, title: str, path: Path) -> None:
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
