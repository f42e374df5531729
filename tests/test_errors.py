"""One exception tree: every error the package raises descends from GatewayError."""

from __future__ import annotations

import inspect

from gateway import errors
from gateway.protocols import errors as protocol_errors


def test_every_exported_error_is_in_the_tree() -> None:
    for name in errors.__all__:
        obj = getattr(errors, name)
        assert inspect.isclass(obj) and issubclass(obj, errors.GatewayError), name


def test_protocol_errors_are_the_same_classes() -> None:
    assert errors.RemoteProtocolError is protocol_errors.RemoteProtocolError
    assert issubclass(errors.RemoteProtocolError, errors.ProtocolError)


def test_tree_in_docstring_names_every_class() -> None:
    doc = errors.__doc__ or ""
    for name in errors.__all__:
        assert name in doc, f"{name} missing from the drawn tree"


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
