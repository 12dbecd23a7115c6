"""What a peer sends, read as hostile data: bounded in bytes and in time, strict UTF-8,
JSON without the shapes that cost more than their size (numbers of thousands of digits,
infinities, nesting past the parser's stack). Anything else is a ConfigError of one line,
never a traceback.
"""

from __future__ import annotations

import json
import math
import os
import select
import time
from typing import Any

from .errors import ConfigError

# A request must start within GRACE_S and then keep up MIN_RATE bytes a second: a peer
# that sends nothing or dribbles is cut off within seconds, while a large honest request
# on a slow link (a long history) still arrives.
GRACE_S = 5.0
MIN_RATE = 64 << 10
# Numbers in replimesh's messages are versions, sizes and times: a few digits.
MAX_NUMBER_CHARS = 40


def read(fd: int, limit: int, what: str, grace_s: float | None = None,
         min_rate: float | None = None) -> bytes:
    """Everything until end of file on fd, at most limit bytes; ConfigError if more
    come, or if they come slower than grace_s plus one second per min_rate bytes
    (GRACE_S and MIN_RATE unless told)."""
    grace_s = GRACE_S if grace_s is None else grace_s
    min_rate = MIN_RATE if min_rate is None else min_rate
    start, chunks, got = time.monotonic(), [], 0
    while True:
        left = start + grace_s + got / min_rate - time.monotonic()
        if left <= 0:
            raise ConfigError(f"{what}: {got} bytes in {time.monotonic() - start:.0f} s, too "
                              f"slow (a request must start within {grace_s:g} s, then keep "
                              f"up {min_rate / 1024:g} KiB/s): cut off")
        if not select.select([fd], [], [], left)[0]:
            continue
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        got += len(chunk)
        if got > limit:
            raise ConfigError(f"{what} is larger than {limit} bytes")
        chunks.append(chunk)


def decode(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{what} is not UTF-8 (byte {error.start})") from None


def loads(text: str, what: str) -> Any:
    """text as JSON; ConfigError saying why not."""
    try:
        return json.loads(text, parse_int=_integer, parse_float=_real,
                          parse_constant=_constant)
    except RecursionError:
        raise ConfigError(f"{what} is nested too deeply") from None
    except ValueError as error:
        raise ConfigError(f"{what} is not JSON: {error}") from None


def preview(value: Any) -> str:
    """A short, flat picture of a peer's value for a message: never its repr (which may
    be megabytes, or nested past the stack)."""
    if isinstance(value, str):
        return repr(value[:80])
    small = isinstance(value, int) and abs(value) < 10**MAX_NUMBER_CHARS
    return repr(value) if value is None or isinstance(value, float) or small else \
        type(value).__name__


def _integer(digits: str) -> int:
    if len(digits) > MAX_NUMBER_CHARS:
        raise ValueError(f"a number of {len(digits)} digits")
    return int(digits)


def _real(digits: str) -> float:
    if len(digits) > MAX_NUMBER_CHARS or not math.isfinite(float(digits)):
        raise ValueError(f"a number out of range ({digits[:20]})")
    return float(digits)


def _constant(name: str) -> float:
    raise ValueError(f"{name} is not a number")
