"""Signed lineage: an ed25519 signature over the lineage record, which holds the sha256 of every
weights file, so neither the record nor the weights can change unnoticed.

    signed = sign(record, load_signing_key())      # the record gains a `signature` field
    verify_lineage(student_dir, public_key=None)   # offline: signature, then weights

The signing key is a PEM file named by `POLYDISTILL_LINEAGE_KEY` (`polydistill lineage keygen`
writes one); without it a run signs with a fresh key whose private half is discarded, so the
record can still not be re-signed by the run, but only a pinned public key
(`verify --public-key`) tells a forger's re-signed record from the real one.
"""

import base64
import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from polydistill.errors import UserError
from polydistill.lineage.record import LINEAGE_FILE, weights_digests

KEY_ENV = "POLYDISTILL_LINEAGE_KEY"


def canonical(record: dict[str, Any]) -> bytes:
    """The signed bytes: the record without its signature, keys sorted, no spaces."""
    unsigned = {k: v for k, v in record.items() if k != "signature"}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":")).encode()


def public_key_text(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def load_signing_key(path: Path | None = None) -> tuple[Ed25519PrivateKey, bool]:
    """The run's signing key (from `path` or `$POLYDISTILL_LINEAGE_KEY`), and whether it is a
    kept one (False: a fresh key, discarded after signing)."""
    path = path or (Path(os.environ[KEY_ENV]) if os.environ.get(KEY_ENV) else None)
    if path is None:
        return Ed25519PrivateKey.generate(), False
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError as error:
        raise UserError(f"lineage signing key {path}: not found") from error
    except (ValueError, TypeError) as error:  # never print the key's bytes
        raise UserError(
            f"lineage signing key {path}: not an unencrypted PEM private key"
        ) from error
    if not isinstance(key, Ed25519PrivateKey):
        raise UserError(f"lineage signing key {path}: not an ed25519 key")
    return key, True


def sign(record: dict[str, Any], key: Ed25519PrivateKey, kept: bool) -> dict[str, Any]:
    signature = key.sign(canonical(record))
    record["signature"] = {
        "algorithm": "ed25519",
        "public_key": public_key_text(key.public_key()),
        "key": "kept" if kept else "ephemeral",
        "value": base64.b64encode(signature).decode(),
    }
    return record


def write_keypair(out: Path) -> Path:
    """A new signing key at `out` (PEM, owner-only) and its public half at `out`.pub.pem."""
    if out.exists():
        raise UserError(f"{out} exists; not overwriting a key")
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(private)
    public = out.with_name(out.name + ".pub.pem")
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return public


def _pinned(public_key: Path) -> str:
    try:
        key = serialization.load_pem_public_key(public_key.read_bytes())
    except FileNotFoundError as error:
        raise UserError(f"public key {public_key}: not found") from error
    except ValueError as error:
        raise UserError(f"public key {public_key}: not a PEM public key") from error
    if not isinstance(key, Ed25519PublicKey):
        raise UserError(f"public key {public_key}: not an ed25519 key")
    return public_key_text(key)


def read_lineage(model_dir: Path) -> dict[str, Any]:
    path = model_dir / LINEAGE_FILE
    if not path.is_file():
        raise UserError(f"{model_dir}: no {LINEAGE_FILE}")
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(record, dict):
        raise UserError(f"{path}: not a lineage record")
    return record


def verify_lineage(model_dir: Path, public_key: Path | None = None) -> dict[str, Any]:
    """Check the signature of `model_dir/lineage.json` and that the weights are the signed ones;
    returns the record, or raises a one-line `UserError` naming what does not match."""
    record = read_lineage(model_dir)
    path = model_dir / LINEAGE_FILE
    signed = record.get("signature")
    if not isinstance(signed, dict) or signed.get("algorithm") != "ed25519":
        raise UserError(f"{path}: not signed (no ed25519 signature)")
    if public_key is not None and _pinned(public_key) != signed.get("public_key"):
        raise UserError(f"{path}: signed by another key than {public_key}")
    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(signed["public_key"]))
        key.verify(base64.b64decode(signed["value"]), canonical(record))
    except (InvalidSignature, ValueError, KeyError) as error:
        raise UserError(f"{path}: the signature does not match the record (tampered)") from error
    actual, expected = weights_digests(model_dir), record.get("weights", {})
    if actual != expected:
        changed = sorted(
            set(actual) ^ set(expected) | {n for n in actual if actual[n] != expected.get(n)}
        )
        raise UserError(
            f"{model_dir}: the weights are not the ones the lineage signs ({', '.join(changed)})"
        )
    return record
