"""Located YAML: read typed values from PyYAML's composed nodes, with errors at file:line:column.

A document is *composed* (not constructed) into nodes that keep their ``start_mark``;
:class:`Reader` then reads typed values from them through small converter functions,
collecting every problem as a :class:`~gateway.errors.ConfigError` that points at the
offending key or value (1-based line and column).  Duplicate keys, merge keys
(``<<: *defaults``) and syntax errors are handled here; what a value *means* is the
caller's business (see :mod:`gateway.config`).

A converter is any ``Callable[[Node], T]`` that returns the value or raises
:class:`Invalid` with a message (and, optionally, the inner node to blame).
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import time
from typing import Any, TypeVar, cast, overload

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from gateway.errors import ConfigError

__all__ = [
    "REQUIRED",
    "Invalid",
    "MapReader",
    "Reader",
    "boolean",
    "choice",
    "describe",
    "hhmm",
    "identifier",
    "integer",
    "number",
    "optional",
    "read_file",
    "string",
    "suggest",
]

T = TypeVar("T")
D = TypeVar("D")

_TAG = "tag:yaml.org,2002:"
_MERGE = _TAG + "merge"
_TYPE_NAMES = {
    _TAG + "str": "a string",
    _TAG + "int": "an integer",
    _TAG + "float": "a number with a fraction",
    _TAG + "bool": "a boolean",
    _TAG + "null": "null",
    _TAG + "timestamp": "a timestamp",
    _TAG + "seq": "a list",
    _TAG + "map": "a mapping",
}


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
"""Default meaning "this key must be present"."""


class Invalid(Exception):
    """Raised by a converter: the value is wrong.  ``node`` narrows the blame."""

    def __init__(self, message: str, node: Node | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.node = node


def describe(node: Node) -> str:
    """What a node is, for messages: ``a string 'x'``, ``a list``."""
    kind = _TYPE_NAMES.get(node.tag, f"a value tagged {node.tag}")
    if isinstance(node, ScalarNode) and node.tag != _TAG + "null":
        text = node.value if len(node.value) <= 40 else node.value[:37] + "..."
        return f"{kind} {text!r}"
    return kind


def suggest(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest choice, or ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


class _Loader(yaml.SafeLoader):
    """SafeLoader that records duplicate mapping keys while composing."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[ScalarNode, ScalarNode]] = []

    def compose_mapping_node(self, anchor: Any) -> MappingNode:
        node = super().compose_mapping_node(anchor)
        seen: dict[str, ScalarNode] = {}
        for key, _ in node.value:
            if isinstance(key, ScalarNode) and key.tag != _MERGE:
                if key.value in seen:
                    self.duplicates.append((key, seen[key.value]))
                else:
                    seen[key.value] = key
        return node


class Reader:
    """Collects located errors for one file; :meth:`check` raises them all at once."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.errors: list[ConfigError] = []

    def error(self, node: Node | None, message: str) -> None:
        """Record ``message`` at ``node``'s start (or at the top of the file)."""
        if node is None:
            self.errors.append(ConfigError(message, file=self.filename, line=1, column=1))
            return
        mark = node.start_mark
        self.errors.append(
            ConfigError(message, file=self.filename, line=mark.line + 1, column=mark.column + 1)
        )

    def check(self) -> None:
        """Raise the first error (sorted by place) carrying all of them in ``errors``."""
        if not self.errors:
            return
        unique: dict[tuple[int, int, str], ConfigError] = {}
        for e in self.errors:
            unique.setdefault((e.line or 0, e.column or 0, e.message), e)
        found = [unique[k] for k in sorted(unique)]
        first = found[0]
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise ConfigError(
            first.message + more,
            file=first.file,
            line=first.line,
            column=first.column,
            errors=found,
        )

    def compose(self, text: str) -> Node | None:
        """Compose one YAML document; syntax and duplicate-key errors are recorded."""
        loader: _Loader | None = None
        try:
            loader = _Loader(text)
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            problem = exc.problem or exc.context or "invalid YAML"
            if exc.context and exc.problem:
                problem = f"{exc.problem} ({exc.context})"
            self.errors.append(
                ConfigError(
                    f"YAML syntax error: {problem}",
                    file=self.filename,
                    line=mark.line + 1 if mark else None,
                    column=mark.column + 1 if mark else None,
                )
            )
            return None
        except yaml.reader.ReaderError as exc:
            line = text.count("\n", 0, exc.position) + 1
            column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
            self.errors.append(
                ConfigError(
                    f"YAML syntax error: unacceptable character #x{exc.character:04x}"
                    if isinstance(exc.character, int)
                    else f"YAML syntax error: {exc.reason}",
                    file=self.filename,
                    line=line,
                    column=column,
                )
            )
            return None
        except RecursionError:
            self.errors.append(
                ConfigError("YAML nested too deeply", file=self.filename, line=1, column=1)
            )
            return None
        finally:
            if loader is not None:
                loader.dispose()
        for key, first in loader.duplicates:
            self.error(
                key, f"duplicate key {key.value!r} (first at line {first.start_mark.line + 1})"
            )
        if node is None:
            self.error(None, "the file is empty")
        return node

    def sequence(self, node: Node | None, what: str) -> list[Node]:
        """The items of a list; ``null`` or absent is empty; anything else is an error."""
        if node is None or node.tag == _TAG + "null":
            return []
        if not isinstance(node, SequenceNode):
            self.error(node, f"{what} must be a list, not {describe(node)}")
            return []
        return list(node.value)


class MapReader:
    """Typed access to one YAML mapping; every problem is recorded on the :class:`Reader`."""

    def __init__(self, reader: Reader, node: Node, what: str) -> None:
        self.reader = reader
        self.node = node
        self.what = what
        self._errors_at_start = len(reader.errors)
        self._pairs: dict[str, tuple[ScalarNode, Node]] = {}
        if not isinstance(node, MappingNode):
            reader.error(node, f"{what} must be a mapping (key: value), not {describe(node)}")
            return
        for key, value in _flatten(node, reader, depth=0):
            if not isinstance(key, ScalarNode):
                reader.error(key, f"keys in {what} must be plain names, not {describe(key)}")
                continue
            self._pairs[key.value] = (key, value)

    @property
    def ok(self) -> bool:
        """No error was recorded since this mapping was opened."""
        return len(self.reader.errors) == self._errors_at_start

    def present(self) -> list[str]:
        """The keys written in this mapping."""
        return list(self._pairs)

    def expect(self, known: Iterable[str]) -> None:
        """Record an error (with a suggestion) for every key not in ``known``."""
        known = list(known)
        for name, (key, _) in self._pairs.items():
            if name not in known:
                self.reader.error(key, f"unknown key {name!r} in {self.what}{suggest(name, known)}")

    def key_node(self, key: str) -> Node | None:
        pair = self._pairs.get(key)
        return pair[0] if pair else None

    def value_node(self, key: str) -> Node | None:
        pair = self._pairs.get(key)
        return pair[1] if pair else None

    def missing(self, key: str, hint: str = "") -> None:
        """Record that ``key`` is required here."""
        self.reader.error(self.node, f"{self.what} is missing required key {key!r}{hint}")

    def blame(self, key: str, message: str) -> None:
        """Record ``message`` at ``key``'s value (or at the mapping when absent)."""
        self.reader.error(self.value_node(key) or self.node, message)

    @overload
    def get(self, key: str, conv: Callable[[Node], T]) -> T: ...
    @overload
    def get(self, key: str, conv: Callable[[Node], T], default: D) -> T | D: ...

    def get(self, key: str, conv: Callable[[Node], Any], default: Any = REQUIRED) -> Any:
        """The converted value of ``key``, or ``default`` when absent.

        On an error (recorded) the result is ``None`` and :attr:`ok` turns false:
        callers build their object only when :attr:`ok`.
        """
        pair = self._pairs.get(key)
        if pair is None:
            if default is REQUIRED:
                self.missing(key)
                return None
            return default
        try:
            return conv(pair[1])
        except Invalid as exc:
            self.reader.error(exc.node or pair[1], f"{key}: {exc.message}")
            return None


def _flatten(node: MappingNode, reader: Reader, depth: int) -> list[tuple[Node, Node]]:
    """The pairs of a mapping with merge keys (``<<``) applied; own keys win."""
    merged: list[tuple[Node, Node]] = []
    own: list[tuple[Node, Node]] = []
    for key, value in node.value:
        if key.tag != _MERGE:
            own.append((key, value))
            continue
        sources = value.value if isinstance(value, SequenceNode) else [value]
        for source in sources:
            if not isinstance(source, MappingNode) or depth > 20:
                reader.error(source, "a merge key (<<) takes a mapping or a list of mappings")
                continue
            merged.extend(_flatten(source, reader, depth + 1))
    return merged + own


# -- converters ---------------------------------------------------------------------------


def _scalar(node: Node, tags: Sequence[str], expected: str) -> str:
    if not isinstance(node, ScalarNode) or node.tag not in [_TAG + t for t in tags]:
        raise Invalid(f"must be {expected}, not {describe(node)}")
    return str(node.value)


def _construct_int(node: ScalarNode) -> int:
    try:
        value = _CONSTRUCTOR.construct_yaml_int(node)
    except (ValueError, TypeError):
        raise Invalid(f"must be an integer, not {describe(node)}") from None
    return int(value)


_CONSTRUCTOR = yaml.constructor.SafeConstructor()


def _bounds(value: int | float, low: int | float | None, high: int | float | None) -> None:
    if low is not None and high is not None and not low <= value <= high:
        raise Invalid(f"must be between {low} and {high}, not {value}")
    if low is not None and value < low:
        raise Invalid(f"must be at least {low}, not {value}")
    if high is not None and value > high:
        raise Invalid(f"must be at most {high}, not {value}")


def integer(low: int | None = None, high: int | None = None) -> Callable[[Node], int]:
    """An integer within ``low..high`` (inclusive; either may be open)."""

    def conv(node: Node) -> int:
        _scalar(node, ["int"], "an integer")
        value = _construct_int(cast(ScalarNode, node))
        _bounds(value, low, high)
        return value

    return conv


def number(low: float, high: float) -> Callable[[Node], float]:
    """A finite number within ``low..high`` (a physical quantity, never money)."""

    def conv(node: Node) -> float:
        text = _scalar(node, ["int", "float"], "a number")
        if node.tag == _TAG + "int":
            value: float = _construct_int(cast(ScalarNode, node))
        else:
            try:
                value = float(_CONSTRUCTOR.construct_yaml_float(cast(ScalarNode, node)))
            except ValueError:  # an explicit !!float tag on text that is not one
                raise Invalid(f"must be a number, not {text!r}") from None
        if not math.isfinite(value):
            raise Invalid(f"must be a finite number, not {text!r}")
        _bounds(value, low, high)
        return float(value)

    return conv


def boolean(node: Node) -> bool:
    """``true`` or ``false`` (YAML 1.1 spellings such as ``yes``/``no`` included)."""
    _scalar(node, ["bool"], "true or false")
    return bool(_CONSTRUCTOR.construct_yaml_bool(cast(ScalarNode, node)))


def string(node: Node) -> str:
    """A non-empty string."""
    text = _scalar(node, ["str"], "a string")
    if not text.strip():
        raise Invalid("must not be empty")
    return text


def identifier(node: Node) -> str:
    """A name: a string or a bare number (kept as written), no spaces."""
    text = _scalar(node, ["str", "int"], "a name (string)")
    if not text or text != text.strip() or any(c.isspace() for c in text):
        raise Invalid(f"must be a name without spaces, not {text!r}")
    return text


def choice(*values: str) -> Callable[[Node], str]:
    """One of ``values`` exactly."""

    def conv(node: Node) -> str:
        text = _scalar(node, ["str"], "one of " + ", ".join(values))
        if text not in values:
            raise Invalid(
                f"must be one of {', '.join(values)}, not {text!r}{suggest(text, values)}"
            )
        return text

    return conv


def optional(conv: Callable[[Node], T]) -> Callable[[Node], T | None]:
    """``null`` (or ``~``) gives ``None``; anything else goes through ``conv``."""

    def wrapped(node: Node) -> T | None:
        if node.tag == _TAG + "null":
            return None
        return conv(node)

    return wrapped


_HHMM = re.compile(r"(\d{1,2}):(\d{2})")


def hhmm(node: Node) -> time:
    """A local time of day written ``"HH:MM"`` (an unquoted 10:30 is read as written)."""
    # unquoted 10:30 is a YAML 1.1 base-60 integer: the text as written is what counts
    if not isinstance(node, ScalarNode) or node.tag not in (_TAG + "str", _TAG + "int"):
        raise Invalid(f'must be a time "HH:MM", not {describe(node)}')
    match = _HHMM.fullmatch(node.value)
    if not match or int(match[1]) > 23 or int(match[2]) > 59:
        raise Invalid(f'must be a time "HH:MM" from 00:00 to 23:59, not {node.value!r}')
    return time(int(match[1]), int(match[2]))


def read_file(path: str | os.PathLike[str]) -> tuple[str, str]:
    """``(text, name)`` of a UTF-8 configuration file; a located ConfigError otherwise."""
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as f:
            return f.read(), name
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text: {exc.reason}", file=name) from exc
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", file=name) from exc
