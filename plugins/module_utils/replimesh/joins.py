"""Maps merged key by key through a join (the winner of two values), the way both the
peer list and the mesh-wide history merge: commutative, associative and idempotent as
long as the join is, so every node ends with the same map whatever the order of arrival.
"""

from __future__ import annotations

from typing import Callable, TypeVar

K = TypeVar("K")
V = TypeVar("V")


def merge(mine: dict[K, V], theirs: dict[K, V], join: Callable[[V, V], V]) -> dict[K, V]:
    """Every key of both, the join of its values."""
    merged = dict(mine)
    for key, value in theirs.items():
        merged[key] = join(merged[key], value) if key in merged else value
    return merged


def newer(mine: dict[K, V], theirs: dict[K, V], join: Callable[[V, V], V]) -> dict[K, V]:
    """Their entries that would change mine if merged in."""
    return {key: value for key, value in theirs.items()
            if key not in mine or join(mine[key], value) != mine[key]}
