"""Whether an offer's manifest (a bencoded BitTorrent v2 torrent) is what swarm mode makes,
read before libtorrent sees it.

libtorrent sizes its hash trees from the size a manifest claims: a manifest without piece
layers for a file of 1 TiB made a daemon allocate hundreds of MB for hashes it would fetch
from peers. So a manifest must carry the piece layer of its one file, exactly as long as
the file's size says, in pieces of a size publish() chooses. Standard library only.
"""

from __future__ import annotations

MIN_PIECE = 16 << 10     # BEP 52's smallest piece
MAX_PIECE = 16 << 20     # the largest swarm_offers.piece_size chooses
HASH = 32                # SHA-256
_MAX_DEPTH = 8           # a v2 torrent of one file nests 5 deep


def decode(data: bytes):
    """The bencoded value in data (dict keys as bytes); ValueError when it is not exactly
    one well-formed value, or nests deeper than a one-file torrent does."""
    value, end = _value(data, 0, 0)
    if end != len(data):
        raise ValueError("trailing bytes after the manifest")
    return value


def _value(data: bytes, at: int, depth: int):
    if depth > _MAX_DEPTH:
        raise ValueError("nested too deep")
    if at >= len(data):
        raise ValueError("truncated")
    lead = data[at:at + 1]
    if lead == b"i":
        end = data.index(b"e", at)
        digits = data[at + 1:end]
        if len(digits) > 20 or not digits.lstrip(b"-").isdigit():
            raise ValueError("bad integer")
        return int(digits), end + 1
    if lead in (b"l", b"d"):
        items, at = [], at + 1
        while data[at:at + 1] != b"e":
            item, at = _value(data, at, depth + 1)
            items.append(item)
        if lead == b"l":
            return items, at + 1
        keys = items[0::2]
        if len(items) % 2 or not all(isinstance(k, bytes) for k in keys):
            raise ValueError("bad dictionary")
        return dict(zip(keys, items[1::2])), at + 1
    if lead.isdigit():
        colon = data.index(b":", at)
        if colon - at > 10:
            raise ValueError("bad string length")
        start = colon + 1
        end = start + int(data[at:colon])
        if end > len(data):
            raise ValueError("truncated")
        return data[start:end], end
    raise ValueError(f"unexpected byte {lead!r}")


def problem(torrent: bytes, name: str, size: int) -> str | None:
    """What is wrong with torrent as the manifest of one file called name of size bytes
    (None: nothing)."""
    try:
        meta = decode(torrent)
    except (ValueError, IndexError) as error:
        return f"the manifest does not parse: {error}"
    info = meta.get(b"info") if isinstance(meta, dict) else None
    if not isinstance(info, dict):
        return "the manifest does not parse: no info dictionary"
    tree = info.get(b"file tree")
    node = tree.get(name.encode()) if isinstance(tree, dict) else None
    entry = node.get(b"") if isinstance(node, dict) else None
    if (info.get(b"name") != name.encode() or len(tree or {}) != 1 or len(node or {}) != 1
            or not isinstance(entry, dict)):
        return f"it must hold the one file {name}"
    if entry.get(b"length") != size:
        return "its size is not the one named"
    if info.get(b"private") != 1:
        return "it is not a private torrent"
    piece = info.get(b"piece length")
    if (not isinstance(piece, int) or not MIN_PIECE <= piece <= MAX_PIECE
            or piece & (piece - 1)):
        return f"its piece size {piece!r} is not a power of two from 16 KiB to 16 MiB"
    if size == 0:
        return None
    root = entry.get(b"pieces root")
    if not isinstance(root, bytes) or len(root) != HASH:
        return "its file has no pieces root"
    layers = meta.get(b"piece layers", {})
    if not isinstance(layers, dict):
        return "its piece layers do not parse"
    if size <= piece:  # one piece: the root is that piece's hash, no layer
        return None if not layers else "it has piece layers a one-piece file has not"
    pieces = -(-size // piece)
    layer = layers.get(root)
    if len(layers) != 1 or not isinstance(layer, bytes) or len(layer) != pieces * HASH:
        return (f"its piece layer does not match its size ({size} bytes in {piece}-byte "
                f"pieces need {pieces * HASH} bytes of hashes)")
    return None
