"""One exception tree: every error the package raises descends from GatewayError."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import pytest

import gateway
from gateway import errors
from gateway.protocols import errors as protocol_errors


def test_every_exported_error_is_in_the_tree() -> None:
    for name in errors.__all__:
        obj = getattr(errors, name)
        assert inspect.isclass(obj) and issubclass(obj, errors.GatewayError), name


def test_protocol_errors_are_the_same_classes() -> None:
    assert errors.RemoteProtocolError is protocol_errors.RemoteProtocolError
    assert issubclass(errors.RemoteProtocolError, errors.ProtocolError)


def drawn_tree() -> dict[str, tuple[str | None, str | None]]:
    """The docstring's drawing: class name -> (drawn parent, drawn path or None)."""
    doc = errors.__doc__ or ""
    block = doc.split("::\n\n", 1)[1].split("\n\n", 1)[0]
    drawn: dict[str, tuple[str | None, str | None]] = {}
    stack: list[str] = []  # stack[d]: the last class drawn at depth d
    root_column: int | None = None
    for line in block.splitlines():
        match = re.match(r"^([\s│├└─]*)([A-Z]\w+)\s*(.*)$", line)
        assert match, f"cannot read drawn line {line!r}"
        prefix, name, rest = match.groups()
        column = len(prefix)
        if root_column is None:
            root_column = column
        depth, odd = divmod(column - root_column, 4)
        assert odd == 0 and depth <= len(stack), f"misaligned drawn line {line!r}"
        del stack[depth:]
        parent = stack[-1] if stack else None
        path = re.search(r"\((gateway/[\w/]+\.py)\)\s*$", rest)
        assert name not in drawn, f"{name} drawn twice"
        drawn[name] = (parent, path.group(1) if path else None)
        stack.append(name)
    return drawn


def every_gateway_error() -> list[type[errors.GatewayError]]:
    """Every GatewayError subclass the package defines, all its modules imported."""
    for info in pkgutil.walk_packages(gateway.__path__, "gateway."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
    found: list[type[errors.GatewayError]] = []
    todo: list[type[errors.GatewayError]] = [errors.GatewayError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(c for c in cls.__subclasses__() if c.__module__.startswith("gateway."))
    return found


def test_tree_in_docstring_names_every_class() -> None:
    drawn = drawn_tree()
    for name in errors.__all__:
        assert name in drawn, f"{name} missing from the drawn tree"


def test_drawn_parents_are_the_real_parents() -> None:
    drawn = drawn_tree()
    classes = every_gateway_error()
    assert len(classes) >= 19  # the tree as drawn today: the walk found the modules
    assert sorted(c.__name__ for c in classes) == sorted(drawn)
    for cls in classes:
        parent, path = drawn[cls.__name__]
        if cls is errors.GatewayError:
            assert parent is None
            continue
        (base,) = cls.__bases__
        assert base.__name__ == parent, f"{cls.__name__} drawn under {parent}, is a {base}"
        module = cls.__module__.replace(".", "/") + ".py"
        if path is not None:
            assert path == module, f"{cls.__name__} drawn in {path}, defined in {module}"
        else:
            assert getattr(errors, cls.__name__) is cls, f"{cls.__name__}: say where it lives"


def test_drawing_parser_sees_a_wrong_parent(monkeypatch: pytest.MonkeyPatch) -> None:
    # The drawing with StoreCorrupt moved from under StoreError to the root: read back,
    # its parent is GatewayError, which the class is not a direct subclass of.
    doc = errors.__doc__ or ""
    wrong = doc.replace("│   └── StoreCorrupt ", "├── StoreCorrupt     ")
    assert wrong != doc
    monkeypatch.setattr(errors, "__doc__", wrong)
    assert drawn_tree()["StoreCorrupt"][0] == "GatewayError"
    with pytest.raises(AssertionError, match="StoreCorrupt drawn under GatewayError"):
        test_drawn_parents_are_the_real_parents()


def test_config_error_names_its_place() -> None:
    exc = errors.ConfigError("expected an integer", file="gw.yaml", line=3, column=7)
    assert str(exc) == "gw.yaml:3:7: expected an integer"
    assert str(errors.ConfigError("no such file", file="x.yaml")) == "x.yaml: no such file"


def test_foreign_cause_is_kept() -> None:
    try:
        try:
            raise OSError(2, "No such file or directory")
        except OSError as exc:
            raise errors.PortError("/dev/ttyUSB9 cannot be opened") from exc
    except errors.TransportError as caught:
        assert isinstance(caught.__cause__, OSError)
