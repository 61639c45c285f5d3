"""What may wrap a module's ELF data on disk: an appended signature, a compression.

Kbuild's ``modules_install`` (scripts/Makefile.modinst) signs each module,
then compresses it.  ``scripts/sign-file`` appends, after the ELF data, a
PKCS#7 message of ``sig_len`` bytes, a 12-byte ``struct module_signature``
(include/linux/module_signature.h) and the magic ``MODULE_SIG_STRING``;
the kernel finds the signature by that trailing magic alone
(kernel/module/signing.c, ``module_sig_check``) and checks the block with
``mod_check_sig`` (kernel/module_signature.c), as ``appended_signature``
does here.  Compressed modules (``CONFIG_MODULE_COMPRESS_XZ``, ``_GZIP``,
``_ZSTD``) are recognised by their magic bytes, never by their names, and
the decompressed data may carry a signature in its turn.

The decompressors are imported only when a compressed file is met: the
rewrite of a plain object loads none of them.
"""

from __future__ import annotations

import enum
import struct
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

from ftpatch.errors import MalformedElfError, NotElfError
from ftpatch.model import Location

MODULE_SIG_STRING = b"~Module signature appended~\n"
# struct module_signature: algo, hash, id_type, signer_len, key_id_len,
# __pad[3] (u8 each), sig_len (__be32).
MODULE_SIGNATURE = struct.Struct(">BBBBB3sI")
PKEY_ID_PKCS7 = 2
TRAILER_SIZE = MODULE_SIGNATURE.size + len(MODULE_SIG_STRING)  # 12 + 28


class Compression(enum.Enum):
    """A compression a module may be installed with (Kbuild's MODULE_COMPRESS)."""

    XZ = "xz"
    GZIP = "gzip"
    ZSTD = "zstd"


# Each format's magic at the start of the file (xz: the stream header,
# "\xfd7zXZ\0"; gzip: RFC 1952 ID1 ID2; zstd: RFC 8878 frame magic 0xFD2FB528, LE).
_MAGIC = (
    (b"\xfd7zXZ\x00", Compression.XZ),
    (b"\x1f\x8b", Compression.GZIP),
    (b"\x28\xb5\x2f\xfd", Compression.ZSTD),
)
HEAD_SIZE = max(len(magic) for magic, _ in _MAGIC)


def compression_of(head: bytes) -> Compression | None:
    """The compression whose magic ``head`` (the file's first bytes) starts with."""
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    return None


class Signature(NamedTuple):
    """An appended module signature, as ``mod_check_sig`` accepts it."""

    elf_size: int  # the bytes before the PKCS#7 message: the module as linked
    sig_len: int  # the PKCS#7 message


def appended_signature(data: Any, size: int, where: Location) -> Signature | None:
    """The signature ``data`` (``size`` bytes) ends with, or None when it does
    not end with ``MODULE_SIG_STRING``.

    A trailer the kernel would refuse (a ``sig_len`` past the start of the
    file, a signature that is not PKCS#7, non-zero fields ``mod_check_sig``
    wants zero) is an error: the ELF data's end cannot be trusted.
    """
    magic = len(MODULE_SIG_STRING)
    if size < magic or bytes(data[size - magic : size]) != MODULE_SIG_STRING:
        return None
    if size < TRAILER_SIZE:
        raise MalformedElfError(
            where, "module signature: the file ends in its magic but has no struct module_signature"
        )
    algo, hash_, id_type, signer_len, key_id_len, pad, sig_len = MODULE_SIGNATURE.unpack_from(
        data, size - TRAILER_SIZE
    )
    room = size - TRAILER_SIZE
    if sig_len > room:
        raise MalformedElfError(
            where,
            f"module signature: sig_len {sig_len:#x} exceeds the {room:#x} bytes before "
            "struct module_signature (truncated or forged trailer)",
        )
    if id_type != PKEY_ID_PKCS7:
        raise MalformedElfError(
            where, f"module signature: id_type {id_type}, not PKEY_ID_PKCS7 ({PKEY_ID_PKCS7})"
        )
    if algo or hash_ or signer_len or key_id_len or pad != b"\0\0\0":
        raise MalformedElfError(
            where, "module signature: PKCS#7 signature info has unexpected non-zero fields"
        )
    return Signature(room - sig_len, sig_len)


# Decompressed data larger than this many times the compressed file, and
# larger than _MAX_FLOOR, is refused: memory stays in proportion to the file,
# not to what a hostile stream expands to.  Of Debian's 4,349 6.12 modules
# (xz) the largest is 18 MB decompressed and 28 expand more than 10 times,
# one (test_bpf.ko, 4.8 MB) 130 times: the floor, not the ratio, admits it.
_MAX_RATIO = 64
_MAX_FLOOR = 1 << 26


def _decompressor(kind: Compression, where: Location) -> tuple[Callable[[], Any], type[Exception]]:
    """A factory of one-stream decompressors with ``decompress(data,
    max_length)``, ``eof`` and ``unused_data``, and their error type."""
    if kind is Compression.XZ:
        import lzma

        return lzma.LZMADecompressor, lzma.LZMAError
    if kind is Compression.GZIP:
        # gzip's own reader, one member at a time: zlib with the gzip header (wbits 16+).
        import zlib

        def gzip_member() -> Any:
            return zlib.decompressobj(16 + zlib.MAX_WBITS)

        return gzip_member, zlib.error
    try:
        if sys.version_info >= (3, 14):
            from compression import zstd
        else:
            from backports import zstd
    except ImportError:
        raise NotElfError(
            where,
            "zstd-compressed module: reading it needs Python 3.14's compression.zstd "
            "or the backports.zstd package (or decompress it first: unzstd)",
        ) from None
    return zstd.ZstdDecompressor, zstd.ZstdError


def decompress(raw: Any, kind: Compression, where: Location) -> bytes:
    """The data of every stream (member, frame) in ``raw``, one after another."""
    make, error = _decompressor(kind, where)
    limit = max(_MAX_FLOOR, len(raw) * _MAX_RATIO)
    parts: list[bytes] = []
    total = 0
    rest: Any = raw
    try:
        while True:
            d = make()
            chunk = d.decompress(rest, limit + 1 - total)
            total += len(chunk)
            parts.append(chunk)
            if total > limit:
                raise MalformedElfError(
                    where,
                    f"{kind.value} data expands past {limit:#x} bytes (the larger of "
                    f"{_MAX_FLOOR >> 20} MiB and {_MAX_RATIO} times the file): refused",
                )
            if not d.eof:
                raise MalformedElfError(where, f"{kind.value} data: truncated stream")
            rest = d.unused_data
            if not rest:
                break
    except error as exc:
        raise MalformedElfError(where, f"{kind.value} data: {exc}") from None
    return parts[0] if len(parts) == 1 else b"".join(parts)
