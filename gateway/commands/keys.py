"""Ed25519 keys of the master's commands: make, save, load, sign, verify.

The master holds the private key (a PKCS#8 PEM file, mode 0600); each gateway holds
only the public key, as the 32 raw bytes (``commands.public_key`` in its
configuration: base64 of them, or a PEM file).  What is signed is
:func:`~gateway.protocols.command.signing_payload`: the canonical CBOR of the
command without its signature.  ``cryptography`` errors never leave this module:
a bad key file is :class:`~gateway.errors.ConfigError`, a bad signature is just
``False``.
"""

from __future__ import annotations

import base64
import dataclasses
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.errors import ConfigError, LocalProtocolError
from gateway.protocols.command import Command, signing_payload

__all__ = [
    "PRIVATE_NAME",
    "PUBLIC_KEY_LEN",
    "PUBLIC_NAME",
    "KeyPair",
    "load_private_key",
    "public_key_base64",
    "public_key_bytes",
    "sign",
    "verify",
    "write_key_pair",
]

PUBLIC_KEY_LEN = 32
PRIVATE_NAME = "master-command.key"
"""The private key's file name in the directory ``gateway master keys --out`` writes."""
PUBLIC_NAME = "master-command.pub"


@dataclasses.dataclass(frozen=True, slots=True)
class KeyPair:
    """Where :func:`write_key_pair` put the keys, and the public key's raw bytes."""

    private_path: Path
    public_path: Path
    public_key: bytes

    @property
    def public_base64(self) -> str:
        return public_key_base64(self.public_key)


def public_key_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of a key's public half."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_base64(raw: bytes) -> str:
    """What goes into ``commands.public_key``."""
    return base64.b64encode(raw).decode("ascii")


def write_key_pair(directory: str | Path, *, overwrite: bool = False) -> KeyPair:
    """A new key pair in ``directory``: the private key (PKCS#8 PEM, mode 0600, created
    so from the start) and the public key (SubjectPublicKeyInfo PEM).

    An existing private key is never replaced unless ``overwrite``
    (:class:`FileExistsError`): losing it locks the master out of every gateway.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    private_path, public_path = folder / PRIVATE_NAME, folder / PUBLIC_NAME
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    fd = os.open(private_path, flags, 0o600)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), 0o600)  # an overwritten file keeps its old mode otherwise
        out.write(pem)
        out.flush()
        os.fsync(out.fileno())
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    public_path.write_bytes(public_pem)
    return KeyPair(private_path, public_path, public_key_bytes(key))


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """The master's private key from a PEM file (ConfigError if it is not one)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the private key: {exc}", file=str(path)) from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"not an unencrypted PEM private key: {exc}", file=str(path)) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError("the private key is not an Ed25519 key", file=str(path))
    return key


def sign(cmd: Command, key: Ed25519PrivateKey) -> Command:
    """``cmd`` with its Ed25519 signature of :func:`signing_payload`."""
    return dataclasses.replace(cmd, signature=key.sign(signing_payload(cmd)))


def verify(cmd: Command, public_key: bytes) -> bool:
    """Whether ``cmd`` carries a valid signature by ``public_key`` (32 raw bytes)."""
    if cmd.signature is None:
        return False
    if len(public_key) != PUBLIC_KEY_LEN:
        raise ValueError(f"an Ed25519 public key is {PUBLIC_KEY_LEN} bytes, not {len(public_key)}")
    try:
        payload = signing_payload(cmd)
    except LocalProtocolError:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(cmd.signature, payload)
    except InvalidSignature:
        return False
    return True
