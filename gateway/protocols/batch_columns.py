"""Columns of integers, presence bitmaps and the front-coded meter dictionary.

These are the building blocks of the CBOR batch schema v1 (``docs/batch-schema.md``).
A *column* is the CBOR array ``[mode, values]`` or ``[mode, values, presence]``:

- ``mode`` (:class:`Mode`) says what ``values`` hold: the values themselves, the
  difference from the previous row, or the difference from the previous row of the
  same group (meter, account);
- ``values`` is either a CBOR array of integers or a byte string of zigzag varints
  (the encoder picks whichever is shorter);
- ``presence``, when there, is a bitmap of the rows that have a value (bit ``i % 8``
  of byte ``i // 8`` for row ``i``); ``values`` then lists only those rows.

Decoding functions take what ``cbor2`` produced and raise
:class:`~gateway.protocols.errors.RemoteProtocolError` for anything else.  The strict
CBOR loader and the type checks here are shared with the command envelope.
"""

from __future__ import annotations

import io
from collections.abc import Hashable, Sequence
from enum import IntEnum

import cbor2

from gateway.protocols.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "DELTA_MAX",
    "INT_MAX",
    "INT_MIN",
    "MAX_METER_ID_LEN",
    "Mode",
    "check_int",
    "column_length",
    "decode_column",
    "decode_dictionary",
    "decode_full_column",
    "dumps",
    "encode_column",
    "encode_dictionary",
    "expect_int",
    "expect_list",
    "expect_map",
    "expect_str",
    "loads_strict",
    "pack_varints",
    "unpack_varints",
    "unzigzag",
    "zigzag",
]

INT_MIN = -(2**63)
INT_MAX = 2**63 - 1
"""Every integer a batch carries fits a signed 64-bit integer (an SQLite INTEGER)."""
DELTA_MAX = 2**64 - 1
"""Largest magnitude of a difference between two such integers (a native CBOR int)."""
MAX_METER_ID_LEN = 255
"""Longest meter id (characters); bounds what a front-coded dictionary can expand to."""
_MAX_VARINT_BYTES = 10


class Mode(IntEnum):
    """How a column's ``values`` relate to the rows' values (wire codes, append only)."""

    RAW = 0
    """The values themselves."""
    ROW_DELTA = 1
    """Each value minus the previous present value of the column (the first minus 0)."""
    GROUP_DELTA = 2
    """Each value minus the previous present value of the same group (meter, account);
    a group's first value minus the previous present value of the column (or 0)."""


# -- checks on decoded CBOR -----------------------------------------------------------


def expect_int(obj: object, what: str, lo: int = INT_MIN, hi: int = INT_MAX) -> int:
    """``obj`` as an int in ``[lo, hi]`` (bools refused), else RemoteProtocolError."""
    if type(obj) is not int:
        raise RemoteProtocolError(f"{what}: expected an integer, got {type(obj).__name__}")
    if not lo <= obj <= hi:
        raise RemoteProtocolError(f"{what}: {obj} out of range [{lo}, {hi}]")
    return obj


def expect_str(obj: object, what: str) -> str:
    """``obj`` as a text string, else RemoteProtocolError."""
    if type(obj) is not str:
        raise RemoteProtocolError(f"{what}: expected text, got {type(obj).__name__}")
    return obj


def expect_list(obj: object, what: str) -> list[object]:
    """``obj`` as a CBOR array, else RemoteProtocolError."""
    if type(obj) is not list:
        raise RemoteProtocolError(f"{what}: expected an array, got {type(obj).__name__}")
    return obj


def expect_map(obj: object, what: str, allowed: range) -> dict[int, object]:
    """``obj`` as a map whose keys are integers in ``allowed``, else RemoteProtocolError."""
    if type(obj) is not dict:
        raise RemoteProtocolError(f"{what}: expected a map, got {type(obj).__name__}")
    for key in obj:
        if type(key) is not int or key not in allowed:
            raise RemoteProtocolError(f"{what}: unknown key {key!r}")
    return obj


def check_int(value: object, what: str) -> int:
    """``value`` as a signed 64-bit int for encoding, else LocalProtocolError."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise LocalProtocolError(f"{what}: expected an integer, got {type(value).__name__}")
    if not INT_MIN <= value <= INT_MAX:
        raise LocalProtocolError(f"{what}: {value} does not fit a signed 64-bit integer")
    return int(value)


def loads_strict(data: object, what: str, max_depth: int) -> object:
    """One CBOR item filling all of ``data``; indefinite lengths and duplicate keys refused.

    Every failure, whatever ``cbor2`` raised, becomes RemoteProtocolError.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise RemoteProtocolError(f"{what}: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    stream = io.BytesIO(data)
    decoder = cbor2.CBORDecoder(
        stream, max_depth=max_depth, allow_indefinite=False, allow_duplicate_keys=False
    )
    try:
        obj: object = decoder.decode()
    except Exception as exc:  # cbor2 raises more than CBORDecodeError on hostile input
        raise RemoteProtocolError(f"{what}: not valid CBOR ({exc})") from exc
    if stream.tell() != len(data):
        raise RemoteProtocolError(f"{what}: {len(data) - stream.tell()} bytes after the CBOR item")
    return obj


def dumps(obj: object, what: str, canonical: bool = False) -> bytes:
    """``cbor2.dumps``; what it cannot encode (lone surrogates ...) is LocalProtocolError."""
    try:
        return bytes(cbor2.dumps(obj, canonical=canonical))
    except (ValueError, TypeError, cbor2.CBOREncodeError) as exc:
        raise LocalProtocolError(f"{what}: cannot encode ({exc})") from exc


# -- zigzag varints ---------------------------------------------------------------------


def zigzag(value: int) -> int:
    """Map a signed int to an unsigned one: 0, -1, 1, -2 ... -> 0, 1, 2, 3 ..."""
    return value << 1 if value >= 0 else ((-value) << 1) - 1


def unzigzag(value: int) -> int:
    """Inverse of :func:`zigzag`."""
    return -((value + 1) >> 1) if value & 1 else value >> 1


def pack_varints(values: Sequence[int]) -> bytes:
    """Zigzag LEB128 varints (7 bits a byte, low group first, high bit = more follow)."""
    out = bytearray()
    for value in values:
        unsigned = zigzag(value)
        while unsigned >= 0x80:
            out.append(0x80 | (unsigned & 0x7F))
            unsigned >>= 7
        out.append(unsigned)
    return bytes(out)


def unpack_varints(data: bytes) -> list[int]:
    """Inverse of :func:`pack_varints`; RemoteProtocolError if truncated or too long."""
    values: list[int] = []
    unsigned = shift = length = 0
    for byte in data:
        unsigned |= (byte & 0x7F) << shift
        shift += 7
        length += 1
        if length > _MAX_VARINT_BYTES:
            raise RemoteProtocolError("varint longer than 10 bytes")
        if not byte & 0x80:
            if length > 1 and byte == 0:
                raise RemoteProtocolError("varint not in its shortest form")
            values.append(unzigzag(unsigned))
            unsigned = shift = length = 0
    if length:
        raise RemoteProtocolError("truncated varint")
    return values


def _varint_size(value: int) -> int:
    return max(1, (zigzag(value).bit_length() + 6) // 7)


def _head_size(argument: int) -> int:
    """Bytes of a CBOR initial byte plus argument."""
    if argument < 24:
        return 1
    if argument < 0x100:
        return 2
    if argument < 0x10000:
        return 3
    if argument < 0x100000000:
        return 5
    return 9


def _cbor_int_size(value: int) -> int:
    return _head_size(value if value >= 0 else -1 - value)


# -- deltas -------------------------------------------------------------------------------


def _to_deltas(values: Sequence[int], groups: Sequence[Hashable] | None, mode: Mode) -> list[int]:
    if mode is Mode.RAW:
        return list(values)
    out: list[int] = []
    previous = 0
    if mode is Mode.ROW_DELTA:
        for value in values:
            out.append(value - previous)
            previous = value
        return out
    assert groups is not None
    last: dict[Hashable, int] = {}
    for value, group in zip(values, groups, strict=True):
        out.append(value - last.get(group, previous))
        last[group] = previous = value
    return out


def _from_deltas(deltas: Sequence[int], groups: Sequence[Hashable] | None, mode: Mode) -> list[int]:
    if mode is Mode.RAW:
        values = list(deltas)
    elif mode is Mode.ROW_DELTA:
        values = []
        previous = 0
        for delta in deltas:
            previous += delta
            values.append(previous)
    else:
        assert groups is not None
        values = []
        previous = 0
        last: dict[Hashable, int] = {}
        for delta, group in zip(deltas, groups, strict=True):
            previous = last.get(group, previous) + delta
            last[group] = previous
            values.append(previous)
    for value in values:
        if not INT_MIN <= value <= INT_MAX:
            raise RemoteProtocolError(f"column value {value} out of the signed 64-bit range")
    return values


# -- columns ------------------------------------------------------------------------------


def encode_column(
    values: Sequence[int | None],
    groups: Sequence[Hashable] | None = None,
) -> list[object]:
    """The shortest column for ``values`` (``None`` = row has no value).

    ``groups`` (one per row) enables :attr:`Mode.GROUP_DELTA`.  The mode and the form
    (array or packed varints) are chosen by encoded size; ties go to the lower mode
    and to the array.
    """
    present = [value is not None for value in values]
    kept = [value for value in values if value is not None]
    kept_groups = None
    if groups is not None:
        kept_groups = [group for group, here in zip(groups, present, strict=True) if here]
    modes = [Mode.RAW, Mode.ROW_DELTA] + ([Mode.GROUP_DELTA] if groups is not None else [])
    best: tuple[int, Mode, list[int], bool] | None = None
    for mode in modes:
        deltas = _to_deltas(kept, kept_groups, mode)
        array_size = _head_size(len(deltas)) + sum(_cbor_int_size(d) for d in deltas)
        packed_len = sum(_varint_size(d) for d in deltas)
        packed_size = _head_size(packed_len) + packed_len
        for size, packed in ((array_size, False), (packed_size, True)):
            if best is None or size < best[0]:
                best = (size, mode, deltas, packed)
    assert best is not None
    _, mode, deltas, packed = best
    column: list[object] = [int(mode), pack_varints(deltas) if packed else deltas]
    if not all(present):
        column.append(_pack_presence(present))
    return column


def decode_column(
    obj: object,
    rows: int | None,
    what: str,
    groups: Sequence[Hashable] | None = None,
) -> list[int | None]:
    """Values of a column, ``None`` where a row has none.

    ``rows`` is the section's row count, or ``None`` for the column that defines it
    (which then must not have a presence bitmap).  Without ``groups``,
    :attr:`Mode.GROUP_DELTA` is refused.
    """
    items = expect_list(obj, what)
    if len(items) not in (2, 3) or (rows is None and len(items) == 3):
        raise RemoteProtocolError(f"{what}: a column is [mode, values] or [mode, values, presence]")
    code = expect_int(items[0], f"{what} mode", 0, len(Mode) - 1)
    mode = Mode(code)
    if mode is Mode.GROUP_DELTA and groups is None:
        raise RemoteProtocolError(f"{what}: per-group deltas are not allowed here")
    raw = items[1]
    if type(raw) is bytes:
        deltas = unpack_varints(raw)
    else:
        deltas = [expect_int(d, what, -DELTA_MAX, DELTA_MAX) for d in expect_list(raw, what)]
    if rows is None:
        rows = len(deltas)
    present = _unpack_presence(items[2], rows, what) if len(items) == 3 else [True] * rows
    if sum(present) != len(deltas):
        raise RemoteProtocolError(f"{what}: {len(deltas)} values for {sum(present)} rows")
    kept_groups = None
    if groups is not None:
        if len(groups) != rows:
            raise RemoteProtocolError(f"{what}: {rows} rows but {len(groups)} group keys")
        kept_groups = [group for group, here in zip(groups, present, strict=True) if here]
    values = iter(_from_deltas(deltas, kept_groups, mode))
    return [next(values) if here else None for here in present]


def column_length(obj: object, what: str) -> int:
    """Number of values in a column that has no presence bitmap (its row count)."""
    items = expect_list(obj, what)
    if len(items) != 2:
        raise RemoteProtocolError(f"{what}: expected [mode, values]")
    raw = items[1]
    if type(raw) is bytes:
        return sum(1 for byte in raw if not byte & 0x80)
    return len(expect_list(raw, what))


def decode_full_column(
    obj: object, rows: int | None, what: str, groups: Sequence[Hashable] | None = None
) -> list[int]:
    """:func:`decode_column` for a column every row must have."""
    values = decode_column(obj, rows, what, groups)
    full = [value for value in values if value is not None]
    if len(full) != len(values):
        raise RemoteProtocolError(f"{what}: every row needs a value")
    return full


def _pack_presence(present: Sequence[bool]) -> bytes:
    out = bytearray((len(present) + 7) // 8)
    for row, here in enumerate(present):
        if here:
            out[row >> 3] |= 1 << (row & 7)
    return bytes(out)


def _unpack_presence(obj: object, rows: int, what: str) -> list[bool]:
    if type(obj) is not bytes or len(obj) != (rows + 7) // 8:
        raise RemoteProtocolError(f"{what}: presence must be {(rows + 7) // 8} bytes")
    present = [bool(obj[row >> 3] >> (row & 7) & 1) for row in range(rows)]
    if rows % 8 and obj[-1] >> (rows % 8):
        raise RemoteProtocolError(f"{what}: presence bits set past the last row")
    return present


# -- meter dictionary -----------------------------------------------------------------------


def encode_dictionary(names: Sequence[str]) -> list[int | str]:
    """Front coding: ``[shared prefix length, rest]`` per name, flattened into one array.

    The shared prefix is counted in characters with the previous name.
    """
    out: list[int | str] = []
    previous = ""
    for name in names:
        if type(name) is not str or len(name) > MAX_METER_ID_LEN:
            raise LocalProtocolError(f"meter id must be text of <= {MAX_METER_ID_LEN} characters")
        shared = 0
        limit = min(len(name), len(previous))
        while shared < limit and name[shared] == previous[shared]:
            shared += 1
        out += [shared, name[shared:]]
        previous = name
    return out


def decode_dictionary(obj: object) -> list[str]:
    """Inverse of :func:`encode_dictionary`."""
    items = expect_list(obj, "meter dictionary")
    if len(items) % 2:
        raise RemoteProtocolError("meter dictionary: odd number of items")
    names: list[str] = []
    previous = ""
    for index in range(0, len(items), 2):
        shared = expect_int(items[index], "meter dictionary prefix", 0, len(previous))
        name = previous[:shared] + expect_str(items[index + 1], "meter dictionary suffix")
        if len(name) > MAX_METER_ID_LEN:
            raise RemoteProtocolError("meter dictionary: meter id too long")
        names.append(name)
        previous = name
    return names
