"""Bencoding and torrent building (s3fuse.torrent): known vectors, hypothesis round trips, hostile input."""

from __future__ import annotations

import hashlib
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3fuse.torrent import (
    MAX_DEPTH,
    MAX_PIECE_LENGTH,
    MIN_PIECE_LENGTH,
    TorrentBuilder,
    bdecode,
    bencode,
    is_torrent,
    piece_length_for,
)

URL = "https://s3.example.com/bucket/dir/file.bin"

# What bdecode returns: bytes keys, bytes strings; bencode of these must round-trip exactly
decoded_values = st.recursive(
    st.integers() | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.binary(max_size=8), children, max_size=5),
    max_leaves=25,
)
# What callers hand to bencode: str too, tuples, str keys
encodable_values = st.recursive(
    st.integers() | st.binary(max_size=40) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5)
        | st.lists(children, max_size=5).map(tuple)
        | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=25,
)


def normalized(value: object) -> object:
    """``value`` as bdecode returns it: str to UTF-8 bytes, tuples to lists."""
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, list | tuple):
        return [normalized(v) for v in value]
    if isinstance(value, dict):
        return {(k.encode() if isinstance(k, str) else k): normalized(v) for k, v in value.items()}
    return value


def reference_pieces(data: bytes, piece_length: int) -> bytes:
    return b"".join(hashlib.sha1(data[i : i + piece_length]).digest() for i in range(0, len(data), piece_length))


def build(data: bytes, piece_length: int | None = None, chunks: list[int] | None = None, **kwargs) -> bytes:
    builder = TorrentBuilder("file.bin", len(data), URL, piece_length=piece_length, **kwargs)
    pos = 0
    for size in chunks or []:
        builder.feed(data[pos : pos + size])
        pos += size
    builder.feed(data[pos:])
    return builder.finish()


# --- bencode / bdecode ---


@pytest.mark.parametrize(
    "value, encoded",
    [
        ({"cow": "moo", "spam": "eggs"}, b"d3:cow3:moo4:spam4:eggse"),
        ({"spam": ["a", "b"]}, b"d4:spaml1:a1:bee"),
        (-3, b"i-3e"),
        (0, b"i0e"),
        (3, b"i3e"),
        (2**80, b"i1208925819614629174706176e"),
        ("spam", b"4:spam"),
        ("", b"0:"),
        ("é", b"2:\xc3\xa9"),
        (b"\x00\xff", b"2:\x00\xff"),
        (["spam", "eggs"], b"l4:spam4:eggse"),
        ([], b"le"),
        ({}, b"de"),
        ([[1], {"a": []}], b"lli1eed1:aleee"),
    ],
)
def test_known_vectors(value, encoded):
    assert bencode(value) == encoded
    assert bdecode(encoded) == normalized(value)


def test_dict_keys_are_sorted_by_raw_bytes():
    # Uppercase sorts before lowercase, high bytes last, str and bytes keys together
    assert bencode({"b": 1, "a": 2, "B": 3}) == b"d1:Bi3e1:ai2e1:bi1ee"
    assert bencode({b"\xff": 1, "z": 2, b"a": 3}) == b"d1:ai3e1:zi2e1:\xffi1ee"


def test_bencode_rejects_what_it_cannot_represent():
    for value in (None, 1.5, True, {1: 2}, {"a": {None: 1}}, [object()]):
        with pytest.raises(TypeError):
            bencode(value)
    with pytest.raises(ValueError, match="two dict keys"):
        bencode({"a": 1, b"a": 2})


def test_bdecode_accepts_unsorted_keys():
    assert bdecode(b"d1:bi1e1:ai2ee") == {b"a": 2, b"b": 1}


def test_bdecode_nesting_limit():
    assert bdecode(b"l" * MAX_DEPTH + b"e" * MAX_DEPTH) is not None
    with pytest.raises(ValueError, match="nested deeper"):
        bdecode(b"l" * (MAX_DEPTH + 1) + b"e" * (MAX_DEPTH + 1))
    # Far beyond the interpreter's recursion limit: still a ValueError, not RecursionError
    with pytest.raises(ValueError):
        bdecode(b"d1:a" * 100_000)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"i03e",
        b"i-0e",
        b"i00e",
        b"ie",
        b"i-e",
        b"i1",
        b"i+1e",
        b"i 1e",
        b"i1 e",
        b"i1.5e",
        b"i1_0e",
        "i\u0661e".encode(),  # an Arabic-Indic digit one: int() would take it
        b"03:abc",
        b"l03:abc10:0123456789e",  # enough bytes left that only the leading zero is wrong
        b"-1:a",
        b"+1:a",
        b"1a:x",
        b"4:abc",
        b"5:spam",
        b"99999999999999999999999:a",
        b"4spam",
        b"l",
        b"li1e",
        b"d",
        b"d1:a",
        b"d1:ae",
        b"di1ei2ee",
        b"dlei1ee",
        b"d1:ai1e1:ai2ee",
        b"i1ei2e",
        b"4:spamx",
        b"lee",
        b"e",
        b"x",
        b"\x00",
    ],
)
def test_bdecode_rejects_malformed(data):
    with pytest.raises(ValueError, match="bencode: "):
        bdecode(data)


def test_bdecode_error_names_the_problem():
    with pytest.raises(ValueError, match=r"invalid string length b'03' at offset 1"):
        bdecode(b"l03:abc10:0123456789e")
    with pytest.raises(ValueError, match=r"invalid integer b'-0' at offset 0"):
        bdecode(b"i-0e")
    with pytest.raises(ValueError, match="trailing"):
        bdecode(b"i1ei2e")


def test_bdecode_needs_bytes():
    with pytest.raises(TypeError):
        bdecode("i1e")  # type: ignore[arg-type]


@given(decoded_values)
def test_round_trip(value):
    encoded = bencode(value)
    assert bdecode(encoded) == value
    assert bencode(bdecode(encoded)) == encoded


@given(encodable_values)
def test_round_trip_of_str_and_tuples(value):
    assert bdecode(bencode(value)) == normalized(value)


def check_only_value_error(data: bytes) -> None:
    try:
        value = bdecode(data)
    except ValueError:
        return
    # Accepted input is canonical up to dict key order: re-encoding keeps every byte
    assert len(bencode(value)) == len(data)


@given(st.binary(max_size=200))
def test_bdecode_arbitrary_bytes_only_raise_value_error(data):
    check_only_value_error(data)


@settings(max_examples=300)
@given(decoded_values, st.data())
def test_bdecode_mutated_encodings_only_raise_value_error(value, data):
    encoded = bytearray(bencode(value))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(encoded)))
        action = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        byte = data.draw(st.sampled_from(b"ield:-0123456789x"))
        if action == "insert":
            encoded.insert(at, byte)
        elif action == "truncate":
            del encoded[at:]
        elif at < len(encoded):
            if action == "flip":
                encoded[at] = byte
            else:
                del encoded[at]
    check_only_value_error(bytes(encoded))


# --- piece_length_for ---


@pytest.mark.parametrize(
    "size, expected",
    [
        (0, MIN_PIECE_LENGTH),
        (1, MIN_PIECE_LENGTH),
        (2000 * MIN_PIECE_LENGTH, MIN_PIECE_LENGTH),
        (2000 * MIN_PIECE_LENGTH + 1, 2 * MIN_PIECE_LENGTH),
        (1 << 30, 1 << 20),
        (100 << 30, 64 << 20),
        (5 << 40, MAX_PIECE_LENGTH),
    ],
)
def test_piece_length_for_vectors(size, expected):
    assert piece_length_for(size) == expected


@given(st.integers(0, 1 << 45))
def test_piece_length_for_properties(size):
    length = piece_length_for(size)
    assert length & (length - 1) == 0
    assert MIN_PIECE_LENGTH <= length <= MAX_PIECE_LENGTH
    pieces = -(-size // length)
    if length < MAX_PIECE_LENGTH:
        assert pieces <= 2000
    if length > MIN_PIECE_LENGTH:  # the smallest that fits: half would give too many pieces
        assert -(-size // (length // 2)) > 2000


def test_piece_length_for_negative():
    with pytest.raises(ValueError):
        piece_length_for(-1)


# --- TorrentBuilder ---


def test_builder_output():
    data = bytes(range(40))
    meta = bdecode(build(data, piece_length=16))
    assert meta == {
        b"created by": b"s3fuse",
        b"info": {
            b"length": 40,
            b"name": b"file.bin",
            b"piece length": 16,
            b"pieces": hashlib.sha1(data[:16]).digest()
            + hashlib.sha1(data[16:32]).digest()
            + hashlib.sha1(data[32:]).digest(),  # the last piece is shorter
        },
        b"url-list": [URL.encode()],
    }


def test_builder_exact_multiple_has_no_empty_last_piece():
    data = b"x" * 32
    info = bdecode(build(data, piece_length=16))[b"info"]
    assert info[b"pieces"] == hashlib.sha1(b"x" * 16).digest() * 2


def test_builder_announce_only_when_given():
    assert b"announce" not in bdecode(build(b"abc"))
    meta = bdecode(build(b"abc", announce="udp://tracker.example:6969"))
    assert meta[b"announce"] == b"udp://tracker.example:6969"


def test_builder_default_piece_length():
    info = bdecode(build(b"abc"))[b"info"]
    assert info[b"piece length"] == piece_length_for(3) == MIN_PIECE_LENGTH
    assert TorrentBuilder("big", 10 << 30, URL).piece_length == piece_length_for(10 << 30)


def test_builder_zero_length():
    builder = TorrentBuilder("empty", 0, URL)
    builder.feed(b"")
    torrent = builder.finish()
    assert bdecode(torrent)[b"info"][b"pieces"] == b""
    assert bdecode(torrent)[b"info"][b"length"] == 0
    assert is_torrent(torrent, length=0)


def test_builder_name_is_utf8():
    builder = TorrentBuilder("naïve ✓.txt", 1, URL)
    builder.feed(b"a")
    assert bdecode(builder.finish())[b"info"][b"name"] == "naïve ✓.txt".encode()


def test_builder_too_few_bytes():
    builder = TorrentBuilder("f", 10, URL)
    builder.feed(b"123456789")
    with pytest.raises(ValueError, match="fed 9 bytes"):
        builder.finish()


def test_builder_too_many_bytes():
    builder = TorrentBuilder("f", 10, URL, piece_length=4)
    builder.feed(b"123456789")
    with pytest.raises(ValueError, match="fed 11 bytes"):
        builder.feed(b"ab")
    # The refused chunk left no trace: the right last byte still completes the object
    builder.feed(b"0")
    assert bdecode(builder.finish())[b"info"][b"pieces"] == reference_pieces(b"1234567890", 4)


def test_builder_rejects_bad_arguments():
    with pytest.raises(ValueError):
        TorrentBuilder("f", -1, URL)
    with pytest.raises(ValueError):
        TorrentBuilder("f", 1, URL, piece_length=0)


def test_builder_accepts_bytearray_and_memoryview():
    data = bytes(range(256)) * 3
    builder = TorrentBuilder("file.bin", len(data), URL, piece_length=100)
    builder.feed(bytearray(data[:150]))
    builder.feed(memoryview(data)[150:])
    assert builder.finish() == build(data, piece_length=100)


@settings(max_examples=200)
@given(st.binary(max_size=2000), st.integers(1, 300), st.data())
def test_builder_chunking_does_not_matter(data, piece_length, draw):
    chunks = draw.draw(st.lists(st.integers(0, 400), max_size=12))
    whole = build(data, piece_length=piece_length)
    assert build(data, piece_length=piece_length, chunks=chunks) == whole
    info = bdecode(whole)[b"info"]
    assert info[b"pieces"] == reference_pieces(data, piece_length)
    assert info[b"length"] == len(data)
    assert is_torrent(whole, length=len(data))


def test_builder_memory_is_bounded():
    size = 32 * (1 << 20)
    chunk = bytes(range(256)) * 3907  # 1000192 bytes: pieces straddle chunks
    builder = TorrentBuilder("big", size, URL)
    tracemalloc.start()
    try:
        fed = 0
        while fed < size:
            part = chunk[: size - fed] if size - fed < len(chunk) else chunk
            builder.feed(part)
            fed += len(part)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert builder.piece_length == MIN_PIECE_LENGTH
    # The partial piece and the hashes; the last short slice of chunk is the only copy
    assert peak < 2 * len(chunk)
    assert is_torrent(builder.finish(), length=size)


# --- is_torrent ---


def test_is_torrent_accepts_builder_output():
    assert is_torrent(build(b"hello world", piece_length=4))
    assert is_torrent(build(b"hello world", piece_length=4), length=11)


def test_is_torrent_accepts_a_server_torrent_with_extra_keys():
    server = {
        "announce": "http://torrent.amazonaws.com:6969/announce",
        "info": {"length": 5, "name": "k", "piece length": 262144, "pieces": b"\x01" * 20, "x-amz-key": "k"},
        "x-amz-bucket": "b",
    }
    assert is_torrent(bencode(server), length=5)


def test_is_torrent_accepts_a_multi_file_torrent_without_a_length():
    multi = {"info": {"files": [{"length": 1, "path": ["a"]}], "name": "d", "piece length": 16, "pieces": b"\x02" * 20}}
    assert is_torrent(bencode(multi))
    assert not is_torrent(bencode(multi), length=1)


def info_with(**changes: object) -> bytes:
    info: dict[str, object] = {"length": 40, "name": "f", "piece length": 16, "pieces": b"\x00" * 60}
    for key, value in changes.items():
        key = key.replace("_", " ")
        if value is None:
            del info[key]
        else:
            info[key] = value
    return bencode({"info": info})


def test_is_torrent_control():
    assert is_torrent(info_with())  # the base of the rejections below is itself accepted
    assert is_torrent(info_with(), length=40)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello",
        b"\x00" * 40,
        bencode(b"hello"),
        bencode(["info"]),
        bencode({"announce": "http://tracker"}),
        bencode({"info": "x"}),
        bencode({"info": []}),
        info_with(pieces=b"\x00" * 59),
        info_with(pieces=b"\x00" * 61),
        info_with(pieces=0),
        info_with(pieces=None),
        info_with(piece_length=0),
        info_with(piece_length=-16),
        info_with(piece_length=b"16"),
        info_with(piece_length=None),
        info_with(pieces=b"\x00" * 40),  # 40 bytes need 3 pieces of 16
        info_with(pieces=b"\x00" * 80),
        info_with(length=-1),
        info_with(length=b"40"),
        info_with() + b"x",
    ],
)
def test_is_torrent_rejects(data):
    assert not is_torrent(data)


def test_is_torrent_length_must_match():
    assert not is_torrent(info_with(), length=41)
    assert not is_torrent(info_with(), length=0)
