"""A file's text encoding: BOMs, binary files refused, and the messages of a file that
cannot be decoded.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Iterator
from typing import Final

from importer._errors import InputError

_BOMS: Final = (
    # UTF-32 first: its little-endian BOM starts with UTF-16's.
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


_ZIP_MAGIC: Final = b"PK\x03\x04"


_OLE_MAGIC: Final = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


#: Control bytes that never occur in text (tab, LF, FF, CR, ESC and DOS's EOF are allowed).
_BINARY_BYTES: Final = bytes(set(range(32)) - {9, 10, 12, 13, 26, 27})


def _binary_share(head: bytes) -> float:
    """The share of bytes that are control characters text never holds."""
    return (len(head) - len(head.translate(None, _BINARY_BYTES))) / max(len(head), 1)


def _bomless_utf16(head: bytes) -> str | None:
    """UTF-16 without a BOM: mostly-ASCII text has a NUL in every other byte."""
    if len(head) < 4 or len(head) % 2:
        return None
    even, odd = head[0::2], head[1::2]
    if odd.count(0) > 0.9 * len(odd) and even.count(0) < 0.1 * len(even):
        return "utf-16-le"
    if even.count(0) > 0.9 * len(even) and odd.count(0) < 0.1 * len(odd):
        return "utf-16-be"
    return None


class _DecodeFailed(Exception):
    def __init__(self, line: int) -> None:
        super().__init__(line)
        self.line = line


def _decode(
    decoder: codecs.IncrementalDecoder, block: bytes, lines: int, *, final: bool = False
) -> str:
    try:
        return decoder.decode(block, final)
    except UnicodeDecodeError as exc:
        before = bytes(exc.object[: exc.start]).decode(exc.encoding, "replace")
        raise _DecodeFailed(lines + before.count("\n")) from None


def _undecodable(name: str, encoding: str, line: int) -> InputError:
    other = "cp1252" if encoding.startswith("utf") else "utf-8"
    return InputError(
        f'{name}: is not valid {encoding} text (near line {line}); set encoding = "{other}" '
        "in the mapping's [source] section, or remove it to detect the encoding"
    )


def _binary(name: str) -> InputError:
    return InputError(
        f"{name}: does not look like a text CSV (it holds binary data); export it again as "
        "CSV or Excel"
    )


def _ascii_compatible(encoding: str) -> bool:
    """True if ASCII bytes always mean ASCII characters (no multi-byte code units)."""
    codec = codecs.lookup(encoding).name
    return codec in {"utf-8", "utf-8-sig", "ascii", "latin-1"} or codec.startswith(
        ("cp125", "iso8859", "cp437", "cp850", "mac-")
    )


def _transcode(blocks: Iterable[bytes], encoding: str) -> Iterator[bytes]:
    decoder = codecs.getincrementaldecoder(encoding)("replace")
    for block in blocks:
        yield decoder.decode(block).encode("utf-8")
    yield decoder.decode(b"", True).encode("utf-8")
