"""A reader for PostgreSQL's built-in logical decoding output plugin, ``pgoutput`` (protocol 1).

The origin reads its replication slot over plain SQL
(``pg_logical_slot_peek_binary_changes``), one binary message per row; this module turns
those messages into typed records. Format: "Logical Replication Message Formats" in the
PostgreSQL manual. Column values arrive in their text form; :mod:`origin.capture.text_values`
turns them into Python values.
"""

from __future__ import annotations

import datetime as dt
import struct
from dataclasses import dataclass, field

__all__ = [
    "UNCHANGED",
    "Begin",
    "Column",
    "Commit",
    "Delete",
    "Insert",
    "Message",
    "Relation",
    "Truncate",
    "Tuple",
    "Update",
    "format_lsn",
    "parse_lsn",
    "parse_message",
]

_PG_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")
_U64 = struct.Struct(">Q")


class _Unchanged:
    """A TOASTed value the update did not touch: PostgreSQL does not resend it."""

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED = _Unchanged()

# A tuple's columns in their text form: None is SQL NULL, UNCHANGED an untouched TOAST value.
Tuple = tuple[str | _Unchanged | None, ...]


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type_oid: int
    key: bool  # part of the replica identity (the primary key by default)


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int
    commit_time: dt.datetime
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    commit_lsn: int
    end_lsn: int  # where decoding resumes after this transaction
    commit_time: dt.datetime


@dataclass(frozen=True, slots=True)
class Relation:
    oid: int
    schema: str
    name: str
    columns: tuple[Column, ...] = field(default=())

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True, slots=True)
class Insert:
    relation_oid: int
    new: Tuple


@dataclass(frozen=True, slots=True)
class Update:
    relation_oid: int
    new: Tuple
    old: Tuple | None = None  # the old key ('K') or whole old row ('O'), when sent
    old_is_key: bool = False


@dataclass(frozen=True, slots=True)
class Delete:
    relation_oid: int
    old: Tuple
    old_is_key: bool


@dataclass(frozen=True, slots=True)
class Truncate:
    relation_oids: tuple[int, ...]


Message = Begin | Commit | Relation | Insert | Update | Delete | Truncate | None


class _Reader:
    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def byte(self) -> int:
        value = self._data[self._pos]
        self._pos += 1
        return value

    def _unpack(self, fmt: struct.Struct) -> int:
        (value,) = fmt.unpack_from(self._data, self._pos)
        self._pos += fmt.size
        return int(value)

    def i16(self) -> int:
        return self._unpack(_I16)

    def i32(self) -> int:
        return self._unpack(_I32)

    def u32(self) -> int:
        return self._unpack(_U32)

    def i64(self) -> int:
        return self._unpack(_I64)

    def u64(self) -> int:
        return self._unpack(_U64)

    def string(self) -> str:
        end = self._data.index(0, self._pos)
        value = self._data[self._pos : end].decode()
        self._pos = end + 1
        return value

    def timestamp(self) -> dt.datetime:
        return _PG_EPOCH + dt.timedelta(microseconds=self.i64())

    def tuple(self) -> Tuple:
        values: list[str | _Unchanged | None] = []
        for _ in range(self.i16()):
            kind = self.byte()
            if kind == 0x6E:  # 'n'
                values.append(None)
            elif kind == 0x75:  # 'u'
                values.append(UNCHANGED)
            elif kind == 0x74:  # 't'
                length = self.i32()
                values.append(self._data[self._pos : self._pos + length].decode())
                self._pos += length
            else:
                raise ValueError(f"unsupported tuple column kind {kind!r} (binary mode is off)")
        return tuple(values)


def parse_message(data: bytes) -> Message:
    """One pgoutput message; None for kinds the origin has no use for (Origin, Type)."""
    r = _Reader(data)
    kind = chr(r.byte())
    if kind == "B":
        return Begin(r.u64(), r.timestamp(), r.u32())
    if kind == "C":
        r.byte()  # flags, unused
        return Commit(r.u64(), r.u64(), r.timestamp())
    if kind == "R":
        oid = r.u32()
        schema = r.string() or "pg_catalog"  # the protocol sends "" for pg_catalog
        name = r.string()
        r.byte()  # replica identity setting
        columns = []
        for _ in range(r.i16()):
            flags = r.byte()
            col_name = r.string()
            type_oid = r.u32()
            r.i32()  # type modifier
            columns.append(Column(col_name, type_oid, bool(flags & 1)))
        return Relation(oid, schema, name, tuple(columns))
    if kind == "I":
        oid = r.u32()
        r.byte()  # 'N'
        return Insert(oid, r.tuple())
    if kind == "U":
        oid = r.u32()
        marker = chr(r.byte())
        old: Tuple | None = None
        if marker in "KO":
            old = r.tuple()
            r.byte()  # 'N'
        return Update(oid, r.tuple(), old, marker == "K")
    if kind == "D":
        oid = r.u32()
        marker = chr(r.byte())
        return Delete(oid, r.tuple(), marker == "K")
    if kind == "T":
        count = r.i32()
        r.byte()  # options (CASCADE, RESTART IDENTITY)
        return Truncate(tuple(r.u32() for _ in range(count)))
    if kind in "OYM":
        return None
    raise ValueError(f"unknown pgoutput message {kind!r}")


def parse_lsn(text: str) -> int:
    """``'16/B374D848'`` -> 64-bit position."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"
