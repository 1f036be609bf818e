"""Built-in plugins: the JSON-lines audit log and the signature check, on a real Registry."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

import hotpatch
from hotpatch.agent._signing import generate_keypair, sign_file
from hotpatch_plugins.audit import AuditLog
from hotpatch_plugins.signature import SignatureCheck


@pytest.fixture
def registries() -> Iterator[Callable[..., hotpatch.Registry]]:
    """``make(plugins=..., journal=...)`` -> a Registry on 1.0, rolled back at teardown."""
    made: list[hotpatch.Registry] = []

    def make(**kwargs: Any) -> hotpatch.Registry:
        reg = hotpatch.Registry("1.0", **kwargs)
        made.append(reg)
        return reg

    yield make
    for reg in made:
        if reg.level:
            reg.rollback(to="1.0")


@pytest.fixture
def target(make_module):
    return make_module("def price(x):\n    return x\n")


def _patch(write_patch, mod, version: str, factor: int, **extra: str) -> Path:
    options = "".join(f", {k}={v}" for k, v in extra.items())
    return write_patch(
        f"""
        from hotpatch import Patch
        patch = Patch(version="{version}", baseline="1.0"{options})

        @patch.replace("{mod.__name__}:price")
        def price(x):
            return x * {factor}
        """,
        name=f"{version}.py",
    )


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- audit log -----------------------------------------------------------------------------


def test_audit_log_records_apply_rollback_and_rejection(
    registries, target, write_patch, tmp_path: Path
) -> None:
    log_path = tmp_path / "audit.jsonl"
    reg = registries(plugins=[AuditLog(log_path)])
    p1, p2 = _patch(write_patch, target, "1.0.1", 2), _patch(write_patch, target, "1.0.2", 3)
    reg.apply(hotpatch.load_patch(p1), who="uid:1000")
    reg.apply(hotpatch.load_patch(p2), who="folder:/srv/patches")
    stale = _patch(write_patch, target, "1.0.0.5", 4)
    with pytest.raises(hotpatch.VersionConflict):
        reg.apply(hotpatch.load_patch(stale), who="uid:0")
    reg.rollback(to="1.0", who="uid:1000")
    assert target.price(5) == 5

    lines = _lines(log_path)
    assert [(x["action"], x["version"], x["outcome"], x["who"]) for x in lines] == [
        ("apply", "1.0.1", "applied", "uid:1000"),
        ("apply", "1.0.2", "applied", "folder:/srv/patches"),
        ("reject", "1.0.0.5", "rejected", "uid:0"),
        ("rollback", "1.0.2", "rolled-back", "uid:1000"),
        ("rollback", "1.0.1", "rolled-back", "uid:1000"),
    ]
    assert [x["sha256"] for x in lines] == [_sha(p1), _sha(p2), _sha(stale), _sha(p2), _sha(p1)]
    assert "not newer than the current level 1.0.2" in lines[2]["reason"]
    assert lines[0]["targets"] == [f"{target.__name__}:price"]
    assert lines[-1]["level"] == []
    for line in lines:
        assert line["time"].endswith("Z")
        assert datetime.fromisoformat(line["time"].replace("Z", "+00:00")).utcoffset() is not None
    assert stat.S_IMODE(log_path.stat().st_mode) == 0o600


def test_audit_log_records_journal_replay(registries, target, write_patch, tmp_path: Path) -> None:
    journal = tmp_path / "journal.json"
    reg = registries(journal=journal)
    path = _patch(write_patch, target, "1.0.1", 2)
    reg.apply(hotpatch.load_patch(path))
    reg.rollback()
    reg.apply(hotpatch.load_patch(path))  # the journal now holds 1.0.1
    log_path = tmp_path / "audit.jsonl"
    reg.detach_journal()  # forget it here, the journal kept, so that a second registry
    reg.rollback(to="1.0")  # can replay it (a restart)
    replayed = registries(journal=journal, plugins=[AuditLog(log_path)])
    assert replayed.level == ("1.0.1",)
    (line,) = _lines(log_path)
    assert (line["action"], line["who"], line["sha256"]) == ("replay", "journal", _sha(path))


def test_audit_log_appends_and_survives_rotation(tmp_path: Path) -> None:
    log_path = tmp_path / "audit.jsonl"
    log_path.write_text('{"existing": true}\n')
    audit = AuditLog(log_path)
    audit.write(action="apply", version="1")
    log_path.rename(tmp_path / "audit.jsonl.1")  # logrotate
    audit.write(action="apply", version="2")
    assert _lines(tmp_path / "audit.jsonl.1")[0] == {"existing": True}
    assert _lines(tmp_path / "audit.jsonl.1")[1]["version"] == "1"
    assert [x["version"] for x in _lines(log_path)] == ["2"]


def test_concurrent_writers_never_interleave_lines(tmp_path: Path) -> None:
    log_path = tmp_path / "audit.jsonl"
    audits = [AuditLog(log_path) for _ in range(2)]  # two instances: O_APPEND keeps lines whole

    def writer(n: int) -> None:
        for i in range(100):
            audits[n % 2].write(action="apply", version=f"{n}.{i}", pad="x" * 2000)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = _lines(log_path)
    assert len(lines) == 400
    assert {x["version"] for x in lines} == {f"{n}.{i}" for n in range(4) for i in range(100)}


def test_rejection_of_a_file_that_is_not_regular_has_no_sha(tmp_path: Path) -> None:
    log_path = tmp_path / "audit.jsonl"
    fifo = tmp_path / "fifo.py"
    os.mkfifo(fifo)  # opening it for reading must not block the service
    link = tmp_path / "link.py"
    link.symlink_to(log_path)
    audit = AuditLog(log_path)
    for source in (str(fifo), str(link), str(tmp_path / "gone.py"), "<api>"):
        audit.hotpatch_rejected(version=None, source=source, reason="bad", who="uid:0")
    assert [x["sha256"] for x in _lines(log_path)] == [None] * 4
    assert [x["source"] for x in _lines(log_path)][-1] == "<api>"


class Exploding:
    """A plugin that raises from every notification hook."""

    @hotpatch.hookimpl
    def hotpatch_after_apply(self, patch: Any, registry: Any, result: Any) -> None:
        raise RuntimeError("after_apply exploded")

    @hotpatch.hookimpl
    def hotpatch_after_rollback(self, registry: Any, result: Any) -> None:
        raise RuntimeError("after_rollback exploded")

    @hotpatch.hookimpl
    def hotpatch_rejected(self, version: str | None, source: str, reason: str, who: str) -> None:
        raise RuntimeError("rejected exploded")


def test_failing_plugins_never_take_the_service_down(
    registries, target, write_patch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    unwritable = AuditLog(tmp_path / "no-such-dir" / "audit.jsonl")
    good_log = tmp_path / "audit.jsonl"
    reg = registries(plugins=[unwritable, Exploding(), AuditLog(good_log)])
    with caplog.at_level(logging.ERROR, logger="hotpatch"):
        reg.apply(hotpatch.load_patch(_patch(write_patch, target, "1.0.1", 2)))
        assert target.price(5) == 10
        with pytest.raises(hotpatch.BaselineMismatch):
            reg.apply(
                hotpatch.load_patch(
                    write_patch(
                        f"""
                from hotpatch import Patch
                patch = Patch(version="2.0.1", baseline="2.0")

                @patch.replace("{target.__name__}:price")
                def price(x):
                    return 0
                """
                    )
                )
            )
        reg.rollback()
    assert target.price(5) == 5
    # Each failure is logged naming the plugin (its class, not pluggy's id-number name).
    failures = {r.getMessage() for r in caplog.records}
    assert {
        f"plugin {name} failed in {hook}; carrying on"
        for name in ("AuditLog", "Exploding")
        for hook in ("hotpatch_after_apply", "hotpatch_rejected", "hotpatch_after_rollback")
    } <= failures
    # The healthy audit log still got every line.
    assert [x["action"] for x in _lines(good_log)] == ["apply", "reject", "rollback"]


# -- signature check -----------------------------------------------------------------------


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    """(private key, trusted keys directory)."""
    private, public = generate_keypair(tmp_path / "keys", "ops")
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    (trusted / "ops.pub").write_bytes(public.read_bytes())
    return private, trusted


def test_a_signed_patch_applies(registries, target, write_patch, keys) -> None:
    private, trusted = keys
    reg = registries(plugins=[SignatureCheck(trusted)])
    path = _patch(write_patch, target, "1.0.1", 2)
    sign_file(path, private)
    assert reg.check(hotpatch.load_patch(path)).hot
    reg.apply(hotpatch.load_patch(path))
    assert target.price(5) == 10


def test_an_unsigned_patch_is_vetoed(registries, target, write_patch, keys, tmp_path) -> None:
    _, trusted = keys
    audit_path = tmp_path / "audit.jsonl"
    reg = registries(plugins=[SignatureCheck(trusted), AuditLog(audit_path)])
    path = _patch(write_patch, target, "1.0.1", 2)
    with pytest.raises(
        hotpatch.VerificationFailed,
        match=r"vetoed: plugin SignatureCheck: 1\.0\.1\.py is not signed",
    ):
        reg.apply(hotpatch.load_patch(path), who="uid:1000")
    with pytest.raises(hotpatch.VerificationFailed, match="is not signed"):
        reg.check(hotpatch.load_patch(path))
    assert reg.level == ()
    assert target.price(5) == 5
    (line,) = _lines(audit_path)
    assert (line["action"], line["who"]) == ("reject", "uid:1000")
    assert "is not signed" in line["reason"]


def test_a_tampered_patch_is_vetoed(registries, target, write_patch, keys) -> None:
    private, trusted = keys
    reg = registries(plugins=[SignatureCheck(trusted)])
    path = _patch(write_patch, target, "1.0.1", 2)
    sign_file(path, private)
    path.write_text(path.read_text().replace("x * 2", "x * 1000"))
    with pytest.raises(hotpatch.VerificationFailed, match="has been tampered with"):
        reg.apply(hotpatch.load_patch(path))
    assert target.price(5) == 5


def test_it_checks_the_text_that_is_applied_not_the_file_on_disk(
    registries, target, write_patch, keys
) -> None:
    private, trusted = keys
    reg = registries(plugins=[SignatureCheck(trusted)])
    path = _patch(write_patch, target, "1.0.1", 2)
    sign_file(path, private)
    patch = hotpatch.load_patch(path)
    path.write_text("# replaced after loading\n")  # what runs is what was loaded and signed
    reg.apply(patch)
    assert target.price(5) == 10


def test_a_patch_signed_by_an_untrusted_key_is_vetoed(
    registries, target, write_patch, keys, tmp_path: Path
) -> None:
    _, trusted = keys
    mallory, _ = generate_keypair(tmp_path / "mallory", "mallory")
    reg = registries(plugins=[SignatureCheck(trusted)])
    path = _patch(write_patch, target, "1.0.1", 2)
    sign_file(path, mallory)
    with pytest.raises(hotpatch.VerificationFailed, match="which is not trusted"):
        reg.apply(hotpatch.load_patch(path))
    assert target.price(5) == 5


def test_a_patch_not_loaded_from_a_file_is_vetoed(registries, target, keys) -> None:
    _, trusted = keys
    reg = registries(plugins=[SignatureCheck(trusted)])
    patch = hotpatch.Patch(version="1.0.1", baseline="1.0")

    @patch.replace(f"{target.__name__}:price")
    def price(x: int) -> int:
        return 0

    with pytest.raises(hotpatch.VerificationFailed, match="carries no signature"):
        reg.apply(patch)


def test_no_trusted_keys_vetoes_everything(
    registries, target, write_patch, keys, tmp_path: Path
) -> None:
    private, _ = keys
    empty = tmp_path / "empty"
    empty.mkdir()
    reg = registries(plugins=[SignatureCheck(empty)])
    path = _patch(write_patch, target, "1.0.1", 2)
    sign_file(path, private)
    with pytest.raises(hotpatch.VerificationFailed, match="no trusted keys are configured"):
        reg.apply(hotpatch.load_patch(path))
