"""File names of a V2 bundle (P.index and P.data-SSSSS-of-NNNNN) and of V1 shards (B-SSSSS-of-NNNNN)."""

from __future__ import annotations

import re

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
_DATA_RE = re.compile(r"^(?P<prefix>.+)\.data-(?P<shard>\d{5})-of-(?P<count>\d{5})$")
# A V1 checkpoint saved in shards: base-SSSSS-of-NNNNN (groups base, shard, count).
V1_SHARD_RE = re.compile(r"^(?P<base>.+)-(?P<shard>\d{5})-of-(?P<count>\d{5})$")


def index_path(prefix: str) -> str:
    return f"{prefix}.index"


def data_path(prefix: str, shard: int, num_shards: int) -> str:
    return f"{prefix}.data-{shard:05d}-of-{num_shards:05d}"


def split_data_path(path: str) -> tuple[str, int, int] | None:
    """(prefix, shard, num_shards) if path names a data shard, else None."""
    m = _DATA_RE.match(path)
    return (m["prefix"], int(m["shard"]), int(m["count"])) if m else None


def decode_key(key: bytes) -> str:
    """Bundle keys are bytes; names are str (undecodable bytes survive a round trip)."""
    return key.decode("utf-8", "surrogateescape")


def encode_key(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")
