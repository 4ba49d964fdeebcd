"""A built manifest (server/manifest_pb.Built) as bytes and back, to store it where every
server finds it (storage.orm.catalog.ManifestSnapshot).

Decoding gives a Built equal to the one encoded: the same etag, page bytes and
generate_time, and what a later build reuses (per name the rows its entry came from, the
variants' tails with their frameworks and digests). So a server without the caller's
manifest in memory either serves it as it is (the stamp it was stored under is still the
caller's) or passes it to manifest_pb.build as the previous build, which rebuilds only the
entries whose rows changed since.

Layout (little-endian): MAGIC, then four uint32 (the entries' format,
manifest_pb.ENTRY_FORMAT; entries; metadata length; generate_time length); the metadata,
marshalled (not pickled: loading it runs nothing): the etag and, per entry, its name, the
Model's (framework, enabled) or None, the variant key or None and the tail's framework;
generate_time; per entry three uint32 (map-entry prefix, tail, etag part lengths); per
entry the tail's sha256; the etag parts; the entries' bytes, in name order. Data of
another layout (another MAGIC), or metadata this Python cannot read, or entries of another
format (written by a release that serializes them otherwise), decodes to None: the caller
builds without it.
"""

from __future__ import annotations

import marshal
import struct
import sys
from array import array
from typing import Any

from domain import manifest
from server.manifest_pb import ENTRY_FORMAT, NO_TAIL_DIGEST, Built, Entry, Tail

MAGIC = b"MRM\x02"  # a new layout takes a new one (\x01 had no entry format)
_HEADER = struct.Struct("<IIII")
_MARSHAL_VERSION = 4  # readable by every Python 3 since 3.4


def encode(built: Built) -> bytes:
    names = built.names
    models: list[Any] = []
    keys: list[Any] = []
    frameworks: list[str] = []
    lengths = array("I")
    digests: list[bytes] = []
    parts: list[bytes] = []  # etag parts
    body: list[bytes] = []
    for e in built.order:
        model, key, prefix, tail_bytes, etag_part = e
        models.append(model)
        if key is None:
            keys.append(None)
            frameworks.append("")
            tail_digest = NO_TAIL_DIGEST
        else:
            t = built.tails[key]
            keys.append(key)
            frameworks.append(t[1])
            tail_digest = t[2]
        lengths.append(len(prefix))
        lengths.append(len(tail_bytes))
        lengths.append(len(etag_part))
        digests.append(tail_digest)
        parts.append(etag_part)
        body.append(prefix)
        body.append(tail_bytes)
    meta = marshal.dumps(
        (built.etag, tuple(names), tuple(models), tuple(keys), tuple(frameworks)),
        _MARSHAL_VERSION,
    )
    if sys.byteorder == "big":
        lengths.byteswap()
    return b"".join(
        [
            MAGIC,
            _HEADER.pack(ENTRY_FORMAT, len(names), len(meta), len(built.generate_time)),
            meta,
            built.generate_time,
            lengths.tobytes(),
            *digests,
            *parts,
            *body,
        ]
    )


def decode(data: bytes) -> Built | None:
    """The Built `data` encodes, or None when it is of another layout or entry format (or
    unreadable)."""
    if data[: len(MAGIC)] != MAGIC:
        return None
    try:
        entry_format, count, meta_size, time_size = _HEADER.unpack_from(data, len(MAGIC))
        if entry_format != ENTRY_FORMAT:
            return None
        pos = len(MAGIC) + _HEADER.size
        etag, names, models, keys, frameworks = marshal.loads(data[pos : pos + meta_size])
    except (ValueError, EOFError, TypeError, struct.error):
        return None
    pos += meta_size
    generate_time = data[pos : pos + time_size]
    pos += time_size
    lengths = array("I")
    lengths.frombytes(data[pos : pos + 12 * count])
    if sys.byteorder == "big":
        lengths.byteswap()
    pos += 12 * count
    digest = pos  # the tails' digests

    part = pos + 32 * count  # the etag parts
    body = part + sum(lengths[2::3])  # the entries' bytes
    order: list[Entry] = []
    append = order.append
    tails: dict[manifest.VariantKey, Tail] = {}
    i = 0
    for model, key, framework in zip(models, keys, frameworks, strict=True):
        prefix_end = body + lengths[i]
        end = prefix_end + lengths[i + 1]
        part_end = part + lengths[i + 2]
        tail_bytes = data[prefix_end:end]
        if key is not None:
            tails[key] = (tail_bytes, framework, data[digest : digest + 32])
        append((model, key, data[body:prefix_end], tail_bytes, data[part:part_end]))
        body, part, digest, i = end, part_end, digest + 32, i + 3
    return Built(etag, tuple(names), tuple(order), dict(zip(names, order, strict=True)), tails,
                 generate_time, {}, {})  # fmt: skip
