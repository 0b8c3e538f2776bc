"""Mapping between S3 keys and file-system paths.

A path is relative to the mount root ('' is the root, 'a/b' a nested entry); the
mount's key prefix ('' or 'some/prefix/') is prepended to form keys. Keys whose
components cannot be POSIX names are reported here, so every caller skips them
the same way.
"""

from __future__ import annotations

NAME_MAX = 255


def invalid_reason(name: str) -> str | None:
    """Why a key component cannot be a file name, or None when it can."""
    if name == "":
        return "empty path component (as in 'a//b')"
    if name in (".", ".."):
        return f"'{name}' path component"
    if "\0" in name:
        return "NUL character"
    if len(name.encode("utf-8", "surrogatepass")) > NAME_MAX:
        return f"component longer than {NAME_MAX} bytes"
    return None


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def at_or_below(path: str, top: str) -> bool:
    """Whether path is top or lies in the tree below it ('a/b' is below 'a', 'ab' is not)."""
    return path == top or path.startswith(top + "/")


def split(path: str) -> tuple[str, str]:
    """('a/b', 'c') for 'a/b/c'; ('', 'c') for 'c'."""
    parent, _, name = path.rpartition("/")
    return parent, name


def dir_prefix(root_prefix: str, path: str) -> str:
    """The key prefix under which a directory's entries live."""
    return f"{root_prefix}{path}/" if path else root_prefix


def file_key(root_prefix: str, path: str) -> str:
    return root_prefix + path


def decode_name(raw: bytes) -> str | None:
    """A kernel-supplied name as str; None if it cannot be part of an S3 key."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def start_after_for(key: str) -> str:
    """A string sorting just before ``key``, for a ListObjectsV2 StartAfter that includes ``key``.

    S3 orders keys by UTF-8 bytes, which is code point order. Decrementing the last
    code point and padding with the highest one leaves no realistic key in between.
    """
    last = ord(key[-1])
    if last <= 1:
        return key[:-1]
    below = 0xD7FF if last == 0xE000 else last - 1  # skip the surrogates, which no key holds
    return key[:-1] + chr(below) + "\U0010ffff"
