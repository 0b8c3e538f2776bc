"""BitTorrent metainfo for objects: the value of the ``s3.torrent`` xattr.

Owns bencoding (BEP 3), the validation of what a server answers to GetObjectTorrent,
and the building of a torrent from an object's bytes when the server's answer is not a
torrent: a BEP 3 single-file metainfo plus a BEP 19 web seed (``url-list``) pointing at
the object's URL, so a BitTorrent client can download the pieces from S3 itself.
The builder is fed the object in chunks and keeps only the current partial piece and
the 20-byte piece hashes, so objects of many GiB cost little memory.
"""

from __future__ import annotations

import hashlib
import re

KiB = 1 << 10
MiB = 1 << 20

MIN_PIECE_LENGTH = 256 * KiB
# Pieces grow up to 4 GiB so that even a 5 TiB object's torrent (about 25 KB of hashes)
# fits in one xattr value, which Linux caps at 64 KiB.
MAX_PIECE_LENGTH = 4096 * MiB
TARGET_PIECES = 2000
# Torrents nest two or three levels deep; the limit keeps hostile input from exhausting the stack.
MAX_DEPTH = 64

_HASH_LEN = 20  # SHA-1
_INTEGER = re.compile(rb"0|-?[1-9][0-9]*")
_LENGTH = re.compile(rb"0|[1-9][0-9]*")


def bencode(value: object) -> bytes:
    """Encode int, bytes, str (as UTF-8), list and dict (str or bytes keys, sorted by raw bytes).

    Raises TypeError for any other type (bool and float included) and ValueError when two
    keys of a dict encode to the same bytes ("a" and b"a").
    """
    out: list[bytes] = []
    _encode(value, out)
    return b"".join(out)


def _encode(value: object, out: list[bytes]) -> None:
    # bool is an int subclass, but True -> i1e would silently lose the type
    if isinstance(value, bool):
        raise TypeError("cannot bencode a bool")
    if isinstance(value, int):
        out.append(b"i%de" % value)
    elif isinstance(value, bytes | bytearray | memoryview | str):
        raw = value.encode() if isinstance(value, str) else bytes(value)
        out.append(b"%d:" % len(raw))
        out.append(raw)
    elif isinstance(value, list | tuple):
        out.append(b"l")
        for item in value:
            _encode(item, out)
        out.append(b"e")
    elif isinstance(value, dict):
        items: dict[bytes, object] = {}
        for key, item in value.items():
            if isinstance(key, str):
                raw_key = key.encode()
            elif isinstance(key, bytes):
                raw_key = key
            else:
                raise TypeError(f"cannot bencode a dict key of type {type(key).__name__}")
            if raw_key in items:
                raise ValueError(f"two dict keys encode to {raw_key!r}")
            items[raw_key] = item
        out.append(b"d")
        for raw_key in sorted(items):
            out.append(b"%d:" % len(raw_key))
            out.append(raw_key)
            _encode(items[raw_key], out)
        out.append(b"e")
    else:
        raise TypeError(f"cannot bencode a value of type {type(value).__name__}")


def bdecode(data: bytes) -> object:
    """Decode one bencoded value that spans all of ``data``.

    Returns ints, bytes, lists and dicts with bytes keys. Any malformed input raises
    ValueError: truncation, trailing bytes, non-canonical integers or lengths (i03e,
    i-0e, 03:abc), non-string or duplicate dict keys, nesting deeper than MAX_DEPTH.
    Dict keys out of order are accepted: some encoders do not sort them.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"bdecode needs bytes, not {type(data).__name__}")
    data = bytes(data)
    value, end = _decode(data, 0, 0)
    if end != len(data):
        raise ValueError(f"bencode: {len(data) - end} trailing bytes after the value, at offset {end}")
    return value


def _decode(data: bytes, pos: int, depth: int) -> tuple[object, int]:
    if pos >= len(data):
        raise ValueError(f"bencode: truncated, a value was expected at offset {pos}")
    lead = data[pos]
    if lead == ord("i"):
        end = data.find(b"e", pos + 1)
        if end < 0:
            raise ValueError(f"bencode: truncated integer at offset {pos}")
        digits = data[pos + 1 : end]
        if not _INTEGER.fullmatch(digits):
            raise ValueError(f"bencode: invalid integer {_excerpt(digits)} at offset {pos}")
        try:
            return int(digits), end + 1
        except ValueError:  # longer than sys.get_int_max_str_digits()
            raise ValueError(f"bencode: integer at offset {pos} has too many digits") from None
    if lead in b"0123456789":
        return _decode_string(data, pos)
    if lead == ord("l") or lead == ord("d"):
        if depth >= MAX_DEPTH:
            raise ValueError(f"bencode: nested deeper than {MAX_DEPTH} levels at offset {pos}")
        start, pos = pos, pos + 1
        if lead == ord("l"):
            items: list[object] = []
            while pos < len(data) and data[pos] != ord("e"):
                item, pos = _decode(data, pos, depth + 1)
                items.append(item)
        else:
            items_d: dict[bytes, object] = {}
            while pos < len(data) and data[pos] != ord("e"):
                if data[pos] not in b"0123456789":
                    raise ValueError(f"bencode: dict key at offset {pos} is not a byte string")
                key, key_pos = _decode_string(data, pos)
                if key in items_d:
                    raise ValueError(f"bencode: duplicate dict key {_excerpt(key)} at offset {pos}")
                items_d[key], pos = _decode(data, key_pos, depth + 1)
        if pos >= len(data):
            kind = "list" if lead == ord("l") else "dict"
            raise ValueError(f"bencode: truncated {kind} that starts at offset {start}")
        return (items if lead == ord("l") else items_d), pos + 1
    raise ValueError(f"bencode: unexpected byte {bytes([lead])!r} at offset {pos}")


def _decode_string(data: bytes, pos: int) -> tuple[bytes, int]:
    colon = data.find(b":", pos)
    if colon < 0:
        raise ValueError(f"bencode: truncated string length at offset {pos}")
    digits = data[pos:colon]
    if not _LENGTH.fullmatch(digits):
        raise ValueError(f"bencode: invalid string length {_excerpt(digits)} at offset {pos}")
    # Compare digit counts first: int() of an absurd length would be slow or refused
    remaining = len(data) - colon - 1
    if len(digits) > len(str(remaining)) or int(digits) > remaining:
        raise ValueError(f"bencode: string at offset {pos} is longer than the {remaining} bytes left")
    end = colon + 1 + int(digits)
    return data[colon + 1 : end], end


def _excerpt(raw: bytes) -> str:
    return repr(raw) if len(raw) <= 24 else f"{raw[:24]!r}... ({len(raw)} bytes)"


def is_torrent(data: bytes, *, length: int | None = None) -> bool:
    """Whether ``data`` is a usable metainfo file: a bencoded dict whose ``info`` dict has
    ``pieces`` (a multiple of 20 bytes) and a positive ``piece length``.

    When ``info`` gives a ``length`` (a single-file torrent), the number of pieces must
    match it. With ``length``, the torrent must also be a single-file torrent of exactly
    that many bytes: a server that answers GetObjectTorrent with the object's own bytes
    would otherwise pass off a stored .torrent of some other file as the object's.
    """
    try:
        meta = bdecode(data)
    except ValueError:
        return False
    if not isinstance(meta, dict) or not isinstance(info := meta.get(b"info"), dict):
        return False
    pieces, piece_length = info.get(b"pieces"), info.get(b"piece length")
    if not isinstance(pieces, bytes) or len(pieces) % _HASH_LEN:
        return False
    if not isinstance(piece_length, int) or piece_length <= 0:
        return False
    info_length = info.get(b"length")
    if info_length is None:
        return length is None
    if not isinstance(info_length, int) or info_length < 0:
        return False
    if length is not None and info_length != length:
        return False
    return len(pieces) // _HASH_LEN == -(-info_length // piece_length)


def piece_length_for(size: int) -> int:
    """The piece length for an object of ``size`` bytes: the smallest power of two from
    256 KiB to 4 GiB that keeps the torrent at no more than 2000 pieces."""
    if size < 0:
        raise ValueError(f"negative object size {size}")
    piece_length = MIN_PIECE_LENGTH
    while piece_length < MAX_PIECE_LENGTH and piece_length * TARGET_PIECES < size:
        piece_length *= 2
    return piece_length


class TorrentBuilder:
    """Builds the metainfo of one object from its bytes, fed in chunks of any size and in order.

    ``url`` is the BEP 19 web seed: for a single-file torrent clients fetch ranges of that
    URL itself, so it must name the object and not end in "/".
    """

    def __init__(
        self, name: str, length: int, url: str, piece_length: int | None = None, announce: str | None = None
    ) -> None:
        if length < 0:
            raise ValueError(f"negative object length {length}")
        if piece_length is None:
            piece_length = piece_length_for(length)
        elif piece_length <= 0:
            raise ValueError(f"piece length must be positive, not {piece_length}")
        self.name = name
        self.length = length
        self.url = url
        self.piece_length = piece_length
        self.announce = announce
        self._fed = 0
        self._piece = hashlib.sha1()  # the current piece, hashed as it arrives: memory stays small
        self._piece_fill = 0
        self._pieces = bytearray()

    def feed(self, chunk: bytes) -> None:
        """Hash the next bytes of the object. Raises ValueError past ``length`` bytes."""
        view = memoryview(chunk).cast("B")
        if self._fed + len(view) > self.length:
            raise ValueError(f"fed {self._fed + len(view)} bytes to the torrent of a {self.length}-byte object")
        self._fed += len(view)
        while len(view):
            take = min(len(view), self.piece_length - self._piece_fill)
            self._piece.update(view[:take])
            self._piece_fill += take
            view = view[take:]
            if self._piece_fill == self.piece_length:
                self._pieces += self._piece.digest()
                self._piece, self._piece_fill = hashlib.sha1(), 0

    def finish(self) -> bytes:
        """The bencoded metainfo. Raises ValueError unless exactly ``length`` bytes were fed."""
        if self._fed != self.length:
            raise ValueError(f"fed {self._fed} bytes to the torrent of a {self.length}-byte object")
        pieces = bytes(self._pieces)
        if self._piece_fill:
            pieces += self._piece.digest()
        meta: dict[str, object] = {
            "created by": "s3fuse",
            "info": {"length": self.length, "name": self.name, "piece length": self.piece_length, "pieces": pieces},
            "url-list": [self.url],
        }
        if self.announce is not None:
            meta["announce"] = self.announce
        return bencode(meta)
