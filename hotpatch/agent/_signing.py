"""Detached ed25519 signatures of patch files and bundles: keys, signing, verification.

Keys are PEM files made by ``generate_keypair``: ``NAME.key`` (PKCS#8 private
key, mode 0600) and ``NAME.pub`` (SubjectPublicKeyInfo). Trusted keys are a
directory of ``*.pub`` files (OpenSSH ``ssh-ed25519`` lines are accepted too)
or a list of them. A key's id is the first 16 hex digits of the sha256 of its
raw 32-byte public key.

``sign_file(PATH)`` writes the detached signature ``PATH.sig``, a small JSON
object::

    {"hotpatch_signature": 1, "algorithm": "ed25519", "kind": "file",
     "key_id": "3f2a...", "sha256": "<hex of the signed data>",
     "signature": "<base64 of 64 bytes>"}

The key id lets verification tell a signature by an untrusted key apart from
tampered content; ``sha256`` only improves messages. What is signed is
``b"hotpatch-signature-v1\\n" + kind + b"\\n" + sha256(data).hexdigest()``, so
a signature never verifies outside hotpatch, nor a file signature as a bundle's.
For a file ``data`` is its bytes; for a directory bundle it is the manifest
``bundle_digest`` builds: every regular file under the directory by sorted
relative path, with its size and sha256. Symlinks, special files and paths
that resolve outside the directory are refused.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from hotpatch._errors import VerificationFailed

__all__ = [
    "SIGNATURE_SUFFIX",
    "bundle_digest",
    "generate_keypair",
    "key_id",
    "load_trusted_keys",
    "public_key_id",
    "sign_file",
    "signature_path",
    "signed_data",
    "verify_file",
    "verify_signature",
]

SIGNATURE_SUFFIX = ".sig"
FORMAT = 1
Kind = Literal["file", "bundle"]
TrustedKeys = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]

_CONTEXT = b"hotpatch-signature-v1\n"
_BUNDLE_HEADER = "hotpatch-bundle-v1\n"
_MAX_SIGNATURE_BYTES = 4096


# -- keys -----------------------------------------------------------------------------


def key_id(public_key: Ed25519PublicKey) -> str:
    """First 16 hex digits of the sha256 of the raw public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_keypair(
    directory: str | os.PathLike[str], name: str = "hotpatch"
) -> tuple[Path, Path]:
    """Write ``NAME.key`` (private, PEM, mode 0600) and ``NAME.pub`` into ``directory``.

    Returns ``(private, public)``. Existing keys are never overwritten.
    """
    if not name or "/" in name or name.startswith("."):
        msg = f"key name {name!r} must be a plain file name (no '/', not starting with '.')"
        raise ValueError(msg)
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    private_path, public_path = folder / f"{name}.key", folder / f"{name}.pub"
    for path in (private_path, public_path):
        if path.exists() or path.is_symlink():
            msg = (
                f"{path} already exists; refusing to overwrite a key. Choose another "
                "--name or --dir, or move the old key away first"
            )
            raise FileExistsError(msg)
    private = Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_new(private_path, private_pem, 0o600)
    try:
        _write_new(public_path, public_pem, 0o644)
    except BaseException:
        private_path.unlink()
        raise
    return private_path, public_path


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` (never follow or replace anything) with ``mode`` from the start."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits away; set exactly
        os.write(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink()
        raise
    os.close(fd)


def _load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        st = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        msg = f"private key {path} cannot be read: {exc.strerror or exc}"
        raise ValueError(msg) from exc
    if st.st_mode & 0o077:
        msg = (
            f"private key {path} is accessible by other users (mode "
            f"{stat.S_IMODE(st.st_mode):04o}); run `chmod 600 {path}` and check nobody copied it"
        )
        raise PermissionError(msg)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        msg = (
            f"{path} is not an unencrypted PEM private key ({exc}); make one with `hotpatch keygen`"
        )
        raise ValueError(msg) from None
    if not isinstance(key, Ed25519PrivateKey):
        msg = (
            f"{path} is a {type(key).__name__}, not an ed25519 key; make one with `hotpatch keygen`"
        )
        raise ValueError(msg)  # noqa: TRY004 -- a bad key file, like a malformed one
    return key


def _load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        msg = f"trusted key {path} cannot be read: {exc.strerror or exc}"
        raise VerificationFailed(msg) from exc
    try:
        if data.lstrip().startswith(b"ssh-"):
            key: Any = serialization.load_ssh_public_key(data.strip())
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        msg = (
            f"trusted key {path} is not a PEM (or OpenSSH) public key ({exc}); "
            "remove it from the trusted keys or replace it with a `hotpatch keygen` .pub file"
        )
        raise VerificationFailed(msg) from None
    if not isinstance(key, Ed25519PublicKey):
        msg = f"trusted key {path} is a {type(key).__name__}, not an ed25519 key; remove it"
        raise VerificationFailed(msg)
    return key


def public_key_id(path: str | os.PathLike[str]) -> str:
    """The key id of the public key file at ``path``."""
    return key_id(_load_public_key(Path(path)))


def load_trusted_keys(trusted_keys: TrustedKeys | None) -> dict[str, Ed25519PublicKey]:
    """Key id -> key, from a directory of ``*.pub`` files, one ``.pub`` file, or a list.

    A directory (or key file) writable by other users is refused: anyone could
    add a key to it.
    """
    if trusted_keys is None:
        return {}
    if isinstance(trusted_keys, str | os.PathLike):
        root = Path(trusted_keys)
        _refuse_world_writable(root, "trusted keys")
        paths = sorted(root.glob("*.pub")) if root.is_dir() else [root]
    else:
        paths = [Path(p) for p in trusted_keys]
    keys: dict[str, Ed25519PublicKey] = {}
    for path in paths:
        _refuse_world_writable(path, "trusted key")
        key = _load_public_key(path)
        keys[key_id(key)] = key
    return keys


def _refuse_world_writable(path: Path, what: str) -> None:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        msg = f"{what} {path} does not exist; point trusted_keys at a directory of .pub files"
        raise VerificationFailed(msg) from None
    except OSError as exc:
        msg = f"{what} {path} cannot be read: {exc.strerror or exc}"
        raise VerificationFailed(msg) from exc
    if mode & stat.S_IWOTH:
        msg = (
            f"{what} {path} is writable by other users, so anyone could add a key; "
            f"run `chmod o-w {path}`"
        )
        raise VerificationFailed(msg)


# -- what is signed -------------------------------------------------------------------


def signature_path(path: str | os.PathLike[str]) -> Path:
    """``PATH.sig``, beside ``PATH`` (a file or a bundle directory)."""
    p = Path(path)
    return p.with_name(p.name + SIGNATURE_SUFFIX)


def bundle_digest(directory: str | os.PathLike[str]) -> bytes:
    """The canonical manifest of a directory bundle: what its signature covers.

    One line per regular file, sorted by relative POSIX path:
    ``<sha256> <size> <path as a JSON string>``. Raises ``VerificationFailed``
    for a symlink (the root included), a special file, or a path escaping it.
    """
    root = Path(directory)
    if root.is_symlink():
        msg = f"bundle {root} is a symlink; drop the directory itself"
        raise VerificationFailed(msg)
    if not root.is_dir():
        msg = f"bundle {root} is not a directory"
        raise VerificationFailed(msg)
    real_root = root.resolve()
    entries: list[tuple[str, Path]] = []
    for folder, dirnames, filenames in os.walk(root, followlinks=False):
        for name in (*dirnames, *filenames):
            path = Path(folder, name)
            relative = path.relative_to(root).as_posix()
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                msg = (
                    f"bundle {root}: {relative} is a symlink; a bundle holds its files "
                    "itself (replace the link with a copy)"
                )
                raise VerificationFailed(msg)
            if not path.resolve().is_relative_to(real_root):
                msg = f"bundle {root}: {relative} resolves outside the bundle"
                raise VerificationFailed(msg)
            if stat.S_ISREG(st.st_mode):
                entries.append((relative, path))
            elif not stat.S_ISDIR(st.st_mode):
                msg = f"bundle {root}: {relative} is not a regular file or directory"
                raise VerificationFailed(msg)
    lines = [_BUNDLE_HEADER]
    for relative, path in sorted(entries):
        content = path.read_bytes()
        lines.append(
            f"{hashlib.sha256(content).hexdigest()} {len(content)} {json.dumps(relative)}\n"
        )
    return "".join(lines).encode("utf-8", "surrogateescape")


def signed_data(path: str | os.PathLike[str]) -> tuple[bytes, Kind]:
    """The bytes a signature of ``path`` covers, and their kind."""
    p = Path(path)
    if p.is_dir() and not p.is_symlink():
        return bundle_digest(p), "bundle"
    return p.read_bytes(), "file"


def _message(data: bytes, kind: Kind) -> bytes:
    return _CONTEXT + kind.encode() + b"\n" + hashlib.sha256(data).hexdigest().encode()


# -- signing and verifying -----------------------------------------------------------


def sign_file(path: str | os.PathLike[str], private_key: str | os.PathLike[str]) -> Path:
    """Write the detached signature ``PATH.sig`` (a bundle directory: beside it); return it."""
    target = Path(path)
    if target.is_symlink():
        msg = f"{target} is a symlink; sign the file itself"
        raise ValueError(msg)
    key = _load_private_key(Path(private_key))
    data, kind = signed_data(target)
    document = {
        "hotpatch_signature": FORMAT,
        "algorithm": "ed25519",
        "kind": kind,
        "key_id": key_id(key.public_key()),
        "sha256": hashlib.sha256(data).hexdigest(),
        "signature": base64.b64encode(key.sign(_message(data, kind))).decode("ascii"),
    }
    out = signature_path(target)
    # A dotfile ending in .tmp: a watched folder ignores it until the rename.
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, (json.dumps(document, indent=1) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def verify_signature(
    data: bytes,
    signature: bytes | None,
    trusted_keys: TrustedKeys | None,
    *,
    name: str,
    kind: Kind = "file",
) -> str:
    """Return the id of the trusted key that signed ``data``.

    ``signature`` is the content of the ``.sig`` file (``None`` when there is
    none). Raises ``VerificationFailed`` naming ``name`` and the cause: no
    trusted keys configured, no signature, a malformed signature, a signature
    by an untrusted key, or tampered content (no trusted key verifies it).
    """
    keys = load_trusted_keys(trusted_keys)
    if not keys:
        msg = (
            f"{name}: signatures are required but no trusted keys are configured; "
            "put the signers' .pub files into the trusted keys directory"
        )
        raise VerificationFailed(msg)
    if not signature or not signature.strip():
        msg = (
            f"{name} is not signed: signatures are required and {name}{SIGNATURE_SUFFIX} is "
            f"missing or empty; sign it with `hotpatch sign {name} --key KEY` and drop the "
            ".sig first, then the file"
        )
        raise VerificationFailed(msg)
    document = _parse_signature(signature, name)
    raw: bytes = document["signature"]
    claimed: str = document["key_id"]
    signed_sha = document.get("sha256")
    message = _message(data, kind)
    # The claimed key first; then every trusted key, in case only the id was edited.
    candidates = [claimed] if claimed in keys else []
    candidates += [k for k in keys if k != claimed]
    for kid in candidates:
        try:
            keys[kid].verify(raw, message)
        except InvalidSignature:
            continue
        return kid
    if claimed not in keys:
        msg = (
            f"{name} is signed by key {claimed}, which is not trusted (trusted: "
            f"{', '.join(sorted(keys))}); add that key's .pub to the trusted keys if its "
            "owner may patch this service, or re-sign with a trusted key"
        )
        raise VerificationFailed(msg)
    actual = hashlib.sha256(data).hexdigest()
    if isinstance(signed_sha, str) and signed_sha != actual:
        cause = f"the content (sha256 {actual[:16]}) is not what was signed ({signed_sha[:16]})"
    else:
        cause = "the signature does not match the content"
    msg = (
        f"{name} has been tampered with: {cause}; signed by trusted key {claimed}. "
        "Do not apply it; get the file again from its author and re-sign it"
    )
    raise VerificationFailed(msg)


def _parse_signature(signature: bytes, name: str) -> dict[str, Any]:
    bad = (
        f"{name}{SIGNATURE_SUFFIX} is not a hotpatch signature"
        " (expected the JSON `hotpatch sign` writes)"
    )
    if len(signature) > _MAX_SIGNATURE_BYTES:
        raise VerificationFailed(f"{bad}: {len(signature)} bytes is too large")
    try:
        document = json.loads(signature)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise VerificationFailed(bad) from None
    if not isinstance(document, dict) or document.get("hotpatch_signature") != FORMAT:
        raise VerificationFailed(bad)
    if document.get("algorithm") != "ed25519" or not isinstance(document.get("key_id"), str):
        raise VerificationFailed(f"{bad}: algorithm must be ed25519 with a key_id")
    try:
        raw = base64.b64decode(str(document.get("signature")), validate=True)
    except (binascii.Error, ValueError):
        raise VerificationFailed(f"{bad}: the signature is not base64") from None
    if len(raw) != 64:  # noqa: PLR2004 -- an ed25519 signature is 64 bytes
        raise VerificationFailed(f"{bad}: an ed25519 signature is 64 bytes, not {len(raw)}")
    document["signature"] = raw
    return document


def verify_file(path: str | os.PathLike[str], trusted_keys: TrustedKeys | None) -> str:
    """Verify ``PATH`` (a file or bundle directory) against ``PATH.sig``; the signer's key id."""
    target = Path(path)
    try:
        data, kind = signed_data(target)
    except OSError as exc:
        msg = f"{target.name} cannot be read: {exc.strerror or exc}"
        raise VerificationFailed(msg) from exc
    signature: bytes | None = None
    with contextlib.suppress(FileNotFoundError):
        sig = signature_path(target)
        if sig.is_symlink():
            msg = f"{sig.name} is a symlink; drop the signature file itself"
            raise VerificationFailed(msg)
        with sig.open("rb") as f:
            signature = f.read(_MAX_SIGNATURE_BYTES + 1)
    return verify_signature(data, signature, trusted_keys, name=target.name, kind=kind)
