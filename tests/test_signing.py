"""Signing: ed25519 key pairs, detached signatures of files and bundles, verification."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hotpatch import VerificationFailed
from hotpatch.agent._signing import (
    bundle_digest,
    generate_keypair,
    key_id,
    load_trusted_keys,
    sign_file,
    signature_path,
    verify_file,
    verify_signature,
)

PATCH = b'from hotpatch import Patch\npatch = Patch(version="1.0.1", baseline="1.0")\n'


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(private key, public key, trusted keys directory holding the public key)."""
    private, public = generate_keypair(tmp_path / "keys", "alice")
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    (trusted / "alice.pub").write_bytes(public.read_bytes())
    return private, public, trusted


@pytest.fixture
def patch_file(tmp_path: Path) -> Path:
    path = tmp_path / "1.0.1.py"
    path.write_bytes(PATCH)
    return path


def _id_of(public: Path) -> str:
    key = serialization.load_pem_public_key(public.read_bytes())
    assert not isinstance(key, bytes)
    return key_id(key)  # type: ignore[arg-type]


# -- keys ------------------------------------------------------------------------------


def test_keygen_writes_a_private_key_only_its_owner_can_read(tmp_path: Path) -> None:
    private, public = generate_keypair(tmp_path / "new" / "dir", "ops")
    assert (private.name, public.name) == ("ops.key", "ops.pub")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert b"PRIVATE KEY" in private.read_bytes()
    assert b"PUBLIC KEY" in public.read_bytes()
    assert len(_id_of(public)) == 16


def test_keygen_ignores_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        private, _ = generate_keypair(tmp_path, "k")
    finally:
        os.umask(old)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_keygen_never_overwrites_a_key(tmp_path: Path) -> None:
    private, public = generate_keypair(tmp_path)
    before = private.read_bytes()
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        generate_keypair(tmp_path)
    assert private.read_bytes() == before
    public.unlink()
    with pytest.raises(FileExistsError, match=r"hotpatch\.key"):
        generate_keypair(tmp_path)


@pytest.mark.parametrize("name", ["", "a/b", ".hidden"])
def test_keygen_refuses_names_that_are_not_plain_file_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="plain file name"):
        generate_keypair(tmp_path, name)


def test_sign_refuses_a_private_key_others_can_read(keys, patch_file: Path) -> None:
    private, _, _ = keys
    private.chmod(0o640)
    with pytest.raises(PermissionError, match="chmod 600"):
        sign_file(patch_file, private)
    assert not signature_path(patch_file).exists()


def test_sign_refuses_a_file_that_is_not_a_key(tmp_path: Path, patch_file: Path) -> None:
    bogus = tmp_path / "bogus.key"
    bogus.write_text("not a key")
    bogus.chmod(0o600)
    with pytest.raises(ValueError, match="not an unencrypted PEM private key"):
        sign_file(patch_file, bogus)


# -- files -----------------------------------------------------------------------------


def test_sign_then_verify_returns_the_signers_key_id(keys, patch_file: Path) -> None:
    private, public, trusted = keys
    sig = sign_file(patch_file, private)
    assert sig == patch_file.with_name("1.0.1.py.sig")
    document = json.loads(sig.read_text())
    assert document["key_id"] == _id_of(public)
    assert document["algorithm"] == "ed25519"
    assert document["kind"] == "file"
    assert verify_signature(PATCH, sig.read_bytes(), trusted, name="1.0.1.py") == _id_of(public)
    assert verify_file(patch_file, trusted) == _id_of(public)
    # A list of .pub paths, or a single .pub path, works like a directory.
    assert verify_file(patch_file, [public]) == _id_of(public)
    assert verify_file(patch_file, public) == _id_of(public)
    assert not list(patch_file.parent.glob(".*.tmp"))


def test_unsigned_tampered_and_untrusted_are_told_apart(
    keys, patch_file: Path, tmp_path: Path
) -> None:
    private, _, trusted = keys
    with pytest.raises(VerificationFailed, match=r"1\.0\.1\.py is not signed") as unsigned:
        verify_file(patch_file, trusted)
    assert "hotpatch sign" in str(unsigned.value)

    sig = sign_file(patch_file, private).read_bytes()
    with pytest.raises(VerificationFailed, match="has been tampered with") as tampered:
        verify_signature(PATCH + b"import os\n", sig, trusted, name="1.0.1.py")
    assert "is not what was signed" in str(tampered.value)

    mallory, _ = generate_keypair(tmp_path / "mallory", "mallory")
    forged = sign_file(patch_file, mallory).read_bytes()
    with pytest.raises(VerificationFailed, match="which is not trusted") as untrusted:
        verify_signature(PATCH, forged, trusted, name="1.0.1.py")
    assert json.loads(forged)["key_id"] in str(untrusted.value)

    with pytest.raises(VerificationFailed, match="no trusted keys are configured"):
        verify_signature(PATCH, sig, None, name="1.0.1.py")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VerificationFailed, match="no trusted keys are configured"):
        verify_signature(PATCH, sig, empty, name="1.0.1.py")


def test_a_signature_whose_bytes_were_altered_is_tampered(keys, patch_file: Path) -> None:
    private, _, trusted = keys
    document = json.loads(sign_file(patch_file, private).read_text())
    raw = bytearray(base64.b64decode(document["signature"]))
    raw[0] ^= 1
    document["signature"] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(VerificationFailed, match="signature does not match the content"):
        verify_signature(PATCH, json.dumps(document).encode(), trusted, name="p.py")


def test_an_edited_key_id_does_not_hide_a_valid_trusted_signature(keys, patch_file: Path) -> None:
    private, public, trusted = keys
    document = json.loads(sign_file(patch_file, private).read_text())
    document["key_id"] = "0" * 16
    assert verify_signature(PATCH, json.dumps(document).encode(), trusted, name="p.py") == _id_of(
        public
    )


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"\xff\xfe", "not a hotpatch signature"),
        (b"[1, 2]", "not a hotpatch signature"),
        (b'{"hotpatch_signature": 2}', "not a hotpatch signature"),
        (
            b'{"hotpatch_signature": 1, "algorithm": "rsa", "key_id": "x"}',
            "algorithm must be ed25519",
        ),
        (
            b'{"hotpatch_signature": 1, "algorithm": "ed25519", "key_id": "x", "signature": "!!"}',
            "not base64",
        ),
        (
            b'{"hotpatch_signature": 1, "algorithm": "ed25519", "key_id": "x", '
            b'"signature": "AAAA"}',
            "64 bytes, not 3",
        ),
        (b" " * 10 + b"x" * 5000, "too large"),
    ],
)
def test_malformed_signature_files_are_refused_with_a_reason(
    keys, content: bytes, why: str
) -> None:
    _, _, trusted = keys
    with pytest.raises(VerificationFailed, match=why):
        verify_signature(PATCH, content, trusted, name="p.py")


def test_an_empty_signature_counts_as_none(keys) -> None:
    _, _, trusted = keys
    with pytest.raises(VerificationFailed, match="is not signed"):
        verify_signature(PATCH, b"  \n", trusted, name="p.py")


def test_a_file_signature_does_not_verify_as_a_bundle(keys, patch_file: Path) -> None:
    private, _, trusted = keys
    sig = sign_file(patch_file, private).read_bytes()
    with pytest.raises(VerificationFailed, match="tampered"):
        verify_signature(PATCH, sig, trusted, name="p.py", kind="bundle")


def test_signature_file_that_is_a_symlink_is_refused(keys, patch_file: Path) -> None:
    private, _, trusted = keys
    sig = sign_file(patch_file, private)
    real = sig.with_name("elsewhere.sig")
    sig.rename(real)
    sig.symlink_to(real)
    with pytest.raises(VerificationFailed, match="is a symlink"):
        verify_file(patch_file, trusted)


def test_signing_a_symlink_is_refused(keys, patch_file: Path) -> None:
    private, _, _ = keys
    link = patch_file.with_name("link.py")
    link.symlink_to(patch_file)
    with pytest.raises(ValueError, match="is a symlink"):
        sign_file(link, private)


# -- trusted keys ------------------------------------------------------------------------


def test_trusted_keys_accept_openssh_public_keys(tmp_path: Path, patch_file: Path) -> None:
    private_key = Ed25519PrivateKey.generate()
    private = tmp_path / "ssh.key"
    private.write_bytes(
        private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    private.chmod(0o600)
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    (trusted / "ops.pub").write_bytes(
        private_key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        + b" ops@example\n"
    )
    sign_file(patch_file, private)
    assert verify_file(patch_file, trusted) == key_id(private_key.public_key())


def test_a_bad_public_key_file_names_itself(keys, tmp_path: Path) -> None:
    _, _, trusted = keys
    (trusted / "junk.pub").write_text("hello")
    (trusted / "notes.txt").write_text("ignored: not a .pub")
    with pytest.raises(VerificationFailed, match=r"junk\.pub is not a PEM"):
        load_trusted_keys(trusted)


def test_a_trusted_keys_directory_writable_by_others_is_refused(keys) -> None:
    _, _, trusted = keys
    trusted.chmod(0o777)
    with pytest.raises(VerificationFailed, match="writable by other users"):
        load_trusted_keys(trusted)
    trusted.chmod(0o755)
    assert len(load_trusted_keys(trusted)) == 1


def test_a_missing_trusted_keys_path_is_reported(tmp_path: Path) -> None:
    with pytest.raises(VerificationFailed, match="does not exist"):
        load_trusted_keys(tmp_path / "nope")


# -- bundles -----------------------------------------------------------------------------


def _bundle(root: Path) -> Path:
    (root / "src" / "shop").mkdir(parents=True)
    (root / "patch.toml").write_text('[patch]\nversion = "2.4"\n')
    (root / "src" / "shop" / "__init__.py").write_text("")
    (root / "src" / "shop" / "pricing.py").write_text("def price(x):\n    return x\n")
    return root


def test_a_bundle_directory_is_signed_beside_it_and_verifies(keys, tmp_path: Path) -> None:
    private, public, trusted = keys
    bundle = _bundle(tmp_path / "2.4")
    sig = sign_file(bundle, private)
    assert sig == tmp_path / "2.4.sig"
    assert json.loads(sig.read_text())["kind"] == "bundle"
    assert verify_file(bundle, trusted) == _id_of(public)


@pytest.mark.parametrize("change", ["edit", "add", "rename", "remove", "empty dir"])
def test_any_change_to_a_signed_bundle_is_tampering(keys, tmp_path: Path, change: str) -> None:
    private, _, trusted = keys
    bundle = _bundle(tmp_path / "2.4")
    sign_file(bundle, private)
    pricing = bundle / "src" / "shop" / "pricing.py"
    if change == "edit":
        pricing.write_text("def price(x):\n    return 0\n")
    elif change == "add":
        (bundle / "src" / "shop" / "evil.py").write_text("")
    elif change == "rename":
        pricing.rename(pricing.with_name("pricing2.py"))
    elif change == "remove":
        pricing.unlink()
    else:
        (bundle / "src" / "shop" / "__pycache__").mkdir()
        (bundle / "src" / "shop" / "__pycache__" / "pricing.cpython-312.pyc").write_bytes(b"x")
    with pytest.raises(VerificationFailed, match="tampered"):
        verify_file(bundle, trusted)


def test_bundle_digest_is_canonical(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for root, order in ((a, ["z.py", "m/x.py", "a.py"]), (b, ["a.py", "m/x.py", "z.py"])):
        for name in order:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(f"# {name}\n")
    assert bundle_digest(a) == bundle_digest(b)
    lines = bundle_digest(a).decode().splitlines()
    assert lines[0] == "hotpatch-bundle-v1"
    assert [json.loads(line.split(" ", 2)[2]) for line in lines[1:]] == ["a.py", "m/x.py", "z.py"]
    # Moving content from one name to another changes the digest.
    (b / "a.py").write_text("# z.py\n")
    (b / "z.py").write_text("# a.py\n")
    assert bundle_digest(a) != bundle_digest(b)


def test_bundles_with_symlinks_are_refused(keys, tmp_path: Path) -> None:
    private, _, trusted = keys
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    bundle = _bundle(tmp_path / "2.4")
    (bundle / "src" / "leak.txt").symlink_to(outside)
    with pytest.raises(VerificationFailed, match=r"src/leak\.txt is a symlink"):
        sign_file(bundle, private)
    (bundle / "src" / "leak.txt").unlink()
    sign_file(bundle, private)
    (bundle / "src" / "escape").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(VerificationFailed, match="is a symlink"):
        verify_file(bundle, trusted)


def test_a_bundle_that_is_itself_a_symlink_is_refused(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path / "real")
    link = tmp_path / "2.4"
    link.symlink_to(bundle, target_is_directory=True)
    with pytest.raises(VerificationFailed, match="is a symlink"):
        bundle_digest(link)


def test_a_bundle_with_a_special_file_is_refused(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path / "2.4")
    os.mkfifo(bundle / "pipe")
    with pytest.raises(VerificationFailed, match="not a regular file"):
        bundle_digest(bundle)
