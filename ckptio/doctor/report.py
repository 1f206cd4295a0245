"""What doctor found: findings (problems and notes) and the diagnosis that collects them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..bundle.entry import Entry
from ..errors import CkptioError


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing wrong (or odd but harmless, for notes), in a word and a sentence."""

    kind: str
    message: str
    path: str | None = None
    key: str | None = None
    offset: int | None = None

    def __str__(self) -> str:
        return f"{self.kind}: {CkptioError(self.message, path=self.path, key=self.key, offset=self.offset)}"

    def as_dict(self) -> dict:
        return {"kind": self.kind, "message": self.message, "path": self.path, "key": self.key, "offset": self.offset}


@dataclass(frozen=True, slots=True)
class Piece:
    """Stored bytes of one tensor or of one slice of it (label names the slice)."""

    label: str
    shard: int
    entry: Entry


@dataclass(slots=True)
class Diagnosis:
    """What diagnose() found. healthy means every checked byte is as written (as verify says), so
    TensorFlow reads every tensor."""

    path: str
    format: str | None = None
    prefix: str | None = None
    num_shards: int | None = None
    big_endian: bool = False
    problems: list[Finding] = field(default_factory=list)
    notes: list[Finding] = field(default_factory=list)
    intact: list[str] = field(default_factory=list)
    damaged: dict[str, str] = field(default_factory=dict)
    # For salvage: V2 entries and pieces, or V1 decoded arrays.
    _entries: dict[str, Entry] = field(default_factory=dict, repr=False)
    _pieces: dict[str, list[tuple[bytes, Piece]]] = field(default_factory=dict, repr=False)
    _shard_paths: dict[int, str] = field(default_factory=dict, repr=False)
    _arrays: dict[str, object] = field(default_factory=dict, repr=False)
    _located: object = field(default=None, repr=False)
    _input: str | None = field(default=None, repr=False)  # the path or URL the files were read from
    _graph_bytes: bytes | None = field(default=None, repr=False)  # the object graph, when its bytes check out

    @property
    def healthy(self) -> bool:
        return not self.problems and not self.damaged

    def problem(self, kind: str, message: str, *, path=None, key=None, offset=None) -> None:
        self.problems.append(Finding(kind, message, _str(path), key, offset))

    def note(self, kind: str, message: str, *, path=None, key=None, offset=None) -> None:
        self.notes.append(Finding(kind, message, _str(path), key, offset))

    def damage(self, name: str, reason: str) -> None:
        self.damaged.setdefault(name, reason)

    def as_dict(self) -> dict:
        return {
            "path": self.path,
            "format": self.format,
            "prefix": self.prefix,
            "num_shards": self.num_shards,
            "healthy": self.healthy,
            "problems": [p.as_dict() for p in self.problems],
            "notes": [n.as_dict() for n in self.notes],
            "intact": list(self.intact),
            "damaged": dict(self.damaged),
        }


def _str(path) -> str | None:
    return None if path is None else os.fspath(path)
