"""Baseline bundles under the supervisor: checked, unpacked, restarted onto (now or when due)."""

from __future__ import annotations

import datetime
import json
import os
import signal
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_supervisor import Supervised, request, supervise, wait_for
from test_supervisor_patches import BASE_OPTIONS, drop, logic_patch, result_of, under_load, watching

from hotpatch import VerificationFailed
from hotpatch.agent._signing import generate_keypair, sign_file
from hotpatch.supervisor._bundle import read_bundle, unpack_bundle
from hotpatch.supervisor._cli import _window
from hotpatch.supervisor._records import in_window

__all__ = ["supervise"]  # the fixture, shared with test_supervisor


def make_bundle(
    where: Path,
    version: str,
    tag: str,
    *,
    kind: str = "unplanned-baseline",
    deadline: str | None = None,
) -> Path:
    bundle = where / f"release-{version}"
    (bundle / "src").mkdir(parents=True)
    lines = [
        "[patch]",
        f'version = "{version}"',
        f'kind = "{kind}"',
        f'summary = "tag {tag}"',
        *([f'deadline = "{deadline}"'] if deadline else []),
        "[code]",
        'root = "src"',
    ]
    (bundle / "patch.toml").write_text("\n".join(lines) + "\n")
    (bundle / "src" / "counter_logic.py").write_text(f"def tag():\n    return {tag!r}\n")
    return bundle


def drop_bundle(folder: Path, bundle: Path) -> None:
    bundle.rename(folder / bundle.name)  # a directory appears whole, by rename


# -- checking bundles -------------------------------------------------------------------


def test_a_directory_bundle_is_read_and_unpacked_into_its_release(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, "2.0", "two")
    info = read_bundle(bundle)
    assert (info.version, info.kind, info.root, info.summary) == (
        "2.0",
        "unplanned-baseline",
        "src",
        "tag two",
    )
    release = unpack_bundle(bundle, info, tmp_path / "releases")
    assert release.code_root == tmp_path / "releases" / "2.0" / "src"
    assert "two" in (release.code_root / "counter_logic.py").read_text()
    with pytest.raises(VerificationFailed, match="already exists"):
        unpack_bundle(bundle, info, tmp_path / "releases")


def test_the_same_bundle_unpacked_again_takes_the_release_it_left(tmp_path: Path) -> None:
    # An attempt that ran short of a resource after it unpacked the bundle is tried
    # again: the same bundle (same digest) takes its release; another one is refused.
    bundle = make_bundle(tmp_path, "2.0", "two")
    info = read_bundle(bundle)
    releases = tmp_path / "releases"
    first = unpack_bundle(bundle, info, releases, origin="digest-of-two")
    again = unpack_bundle(bundle, info, releases, origin="digest-of-two")
    assert again.code_root == first.code_root
    with pytest.raises(VerificationFailed, match="already exists"):
        unpack_bundle(bundle, info, releases, origin="digest-of-another")
    assert sorted(os.listdir(releases)) == ["2.0"]


def test_a_zip_bundle_is_unpacked_and_members_escaping_it_are_refused(tmp_path: Path) -> None:
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as archive:
        archive.writestr("patch.toml", '[patch]\nversion = "3.0"\n[code]\nroot = "app"\n')
        archive.writestr("app/counter_logic.py", "def tag():\n    return 'zip'\n")
    info = read_bundle(good)
    assert info.version == "3.0"
    assert info.kind == "unplanned-baseline"
    release = unpack_bundle(good, info, tmp_path / "releases")
    assert (release.code_root / "counter_logic.py").exists()

    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("patch.toml", '[patch]\nversion = "3.1"\n')
        archive.writestr("../outside.py", "x = 1\n")
    with pytest.raises(VerificationFailed, match="outside the bundle"):
        read_bundle(evil)
    link = tmp_path / "link.zip"
    with zipfile.ZipFile(link, "w") as archive:
        archive.writestr("patch.toml", '[patch]\nversion = "3.2"\n')
        member = zipfile.ZipInfo("app/link")
        member.external_attr = 0o120777 << 16  # a symlink member
        archive.writestr(member, "/etc/passwd")
    with pytest.raises(VerificationFailed, match="link or special"):
        read_bundle(link)
    assert not (tmp_path / "outside.py").exists()


def test_bad_bundles_are_refused_with_the_reason(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, "2.0", "two")
    os.symlink("/etc/passwd", bundle / "src" / "passwd")
    with pytest.raises(VerificationFailed, match="symbolic link"):
        read_bundle(bundle)
    (bundle / "src" / "passwd").unlink()
    (bundle / "patch.toml").write_text('[patch]\nversion = "2.0"\n[code]\nroot = "../.."\n')
    with pytest.raises(VerificationFailed, match="outside the bundle"):
        read_bundle(bundle)
    (bundle / "patch.toml").write_text('[patch]\nversion = "two"\n')
    with pytest.raises(VerificationFailed, match="version"):
        read_bundle(bundle)
    (bundle / "patch.toml").write_text('[patch]\nversion = "2.0"\nkind = "hot"\n')
    with pytest.raises(VerificationFailed, match="kind"):
        read_bundle(bundle)
    (bundle / "patch.toml").unlink()
    with pytest.raises(VerificationFailed, match=r"no patch\.toml"):
        read_bundle(bundle)


def test_the_maintenance_window_is_daily_in_utc_and_may_cross_midnight() -> None:
    day = datetime.datetime(2026, 11, 25, tzinfo=datetime.UTC)
    assert _window("02:00-04:00") == (datetime.time(2), datetime.time(4))
    assert in_window(_window("02:00-04:00"), day.replace(hour=3))
    assert not in_window(_window("02:00-04:00"), day.replace(hour=4))
    assert in_window(_window("23:00-01:00"), day.replace(hour=0, minute=30))
    assert not in_window(_window("23:00-01:00"), day.replace(hour=12))


# -- end to end -------------------------------------------------------------------------


def answer_tag(supervised: Supervised) -> str:
    tag: str = request(supervised.address, "/get")["tag"]
    return tag


@pytest.mark.e2e
def test_an_unplanned_baseline_restarts_onto_the_new_code_at_once(
    supervise: Callable[..., Supervised], tmp_path: Path
) -> None:
    folder, supervised = watching(supervise, tmp_path)
    first = supervised.child_pid
    with under_load(supervised) as load:
        drop(folder, "fix-1.0.1.py", logic_patch("1.0.1", "hot-on-1.0"))
        assert result_of(folder, "fix-1.0.1.py", supervised)["outcome"] == "applied"
        assert answer_tag(supervised) == "hot-on-1.0"

        drop_bundle(folder, make_bundle(tmp_path, "2.0", "baseline-2.0"))
        result = result_of(folder, "release-2.0", supervised)
        assert result["dir"] == "applied", result
        assert result["via"] == "restart"
        assert result["version"] == "2.0"
        assert result["level"] == []  # the old baseline's hot patch is gone
        status = supervised.status()
        assert status["patches"]["baseline"] == "2.0"
        assert status["patches"]["level"] == []
        assert status["patches"]["code_root"] == str(folder / ".releases" / "2.0" / "src")
        assert status["last_restart"]["ok"]
        new = status["last_restart"]["new_pid"]
        assert new != first
        wait_for(lambda: load.served_by(new), "a request to the new process")
        assert answer_tag(supervised) == "baseline-2.0"
        # The old journal was set aside, not replayed onto the new code.
        assert any(
            "1.0" in p.name for p in folder.glob(".journal.json*") if p.name != ".journal.json"
        )
        # Found healthy: the journal's file kept for a rollback is let go.
        assert [n for n in os.listdir(folder) if ".undo-" in n] == []

        # Hot patches of the new baseline go in (verified with the new code on sys.path).
        drop(folder, "fix-2.0.1.py", logic_patch("2.0.1", "hot-on-2.0").replace('"1.0"', '"2.0"'))
        result = result_of(folder, "fix-2.0.1.py", supervised)
        assert result["outcome"] == "applied", result
        assert answer_tag(supervised) == "hot-on-2.0"
        # An old baseline's hot patch no longer applies.
        drop(folder, "late-1.0.2.py", logic_patch("1.0.2", "too-late"))
        result = result_of(folder, "late-1.0.2.py", supervised)
        assert result["dir"] == "rejected"
        assert "baseline" in result["reason"]
    load.check(request(supervised.address, "/get")["counters"])
    # A process killed outright comes back on the new code, at its level.
    killed = supervised.child_pid
    os.kill(killed, signal.SIGKILL)
    supervised.wait(
        lambda s: s["child"] and s["child"]["pid"] != killed and s["child"]["ready"],
        "the recovered process",
    )
    assert answer_tag(supervised) == "hot-on-2.0"
    assert supervised.status()["patches"]["level"] == ["2.0.1"]


def wait_pending(supervised: Supervised) -> dict[str, Any]:
    status = supervised.wait(
        lambda s: s["patches"] and s["patches"]["baseline_pending"], "the baseline to be announced"
    )
    pending: dict[str, Any] = status["patches"]["baseline_pending"]
    return pending


@pytest.mark.e2e
def test_a_planned_baseline_is_announced_and_restarts_at_its_deadline(
    supervise: Callable[..., Supervised], tmp_path: Path
) -> None:
    folder, supervised = watching(supervise, tmp_path, "--plugin")
    deadline = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=4)
    with under_load(supervised) as load:
        drop_bundle(
            folder,
            make_bundle(
                tmp_path, "2.0", "planned", kind="planned-baseline", deadline=deadline.isoformat()
            ),
        )
        pending = wait_pending(supervised)
        assert pending["version"] == "2.0"
        assert pending["kind"] == "planned-baseline"
        assert datetime.datetime.fromisoformat(pending["deadline"]) == deadline
        # The serving process heard of it (the hotpatch_restart_scheduled hook).
        scheduled = wait_for(
            lambda: request(supervised.address, "/get")["plugin"]["scheduled"], "the hook"
        )
        assert scheduled[0]["version"] == "2.0"
        assert scheduled[0]["kind"] == "planned-baseline"
        assert scheduled[0]["when"] == pytest.approx(deadline.timestamp())
        result = result_of(folder, "release-2.0", supervised)
        assert result["outcome"] == "applied", result
        assert "deadline" in result["reason"]
        assert datetime.datetime.fromisoformat(result["time"]) >= deadline
        assert supervised.status()["patches"]["baseline_pending"] is None
        new = supervised.status()["last_restart"]["new_pid"]
        wait_for(lambda: load.served_by(new), "a request to the new process")
        assert answer_tag(supervised) == "planned"
    load.check(request(supervised.address, "/get")["counters"])


@pytest.mark.e2e
def test_a_planned_baseline_restarts_when_the_service_says_it_is_ready(
    supervise: Callable[..., Supervised], tmp_path: Path
) -> None:
    folder, supervised = watching(supervise, tmp_path)
    far = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=7)).isoformat()
    drop_bundle(
        folder, make_bundle(tmp_path, "2.0", "ready", kind="planned-baseline", deadline=far)
    )
    wait_pending(supervised)
    time.sleep(0.3)
    assert answer_tag(supervised) == "base"  # not before the service says so
    assert request(supervised.address, "/baseline-ready")["pid"] == supervised.child_pid
    result = result_of(folder, "release-2.0", supervised)
    assert result["outcome"] == "applied", result
    assert "ready" in result["reason"]
    assert answer_tag(supervised) == "ready"
    assert json.loads(json.dumps(supervised.status()))["patches"]["baseline"] == "2.0"


@pytest.mark.e2e
def test_readiness_said_while_no_baseline_is_pending_is_not_remembered(
    supervise: Callable[..., Supervised], tmp_path: Path
) -> None:
    # The window is hours away and the deadline days away: only the service's
    # readiness can make the planned baseline due -- readiness said after it
    # was announced, not before.
    now = datetime.datetime.now(datetime.UTC)
    start = now + datetime.timedelta(hours=3)
    window = f"{start:%H:%M}-{start + datetime.timedelta(hours=1):%H:%M}"
    folder, supervised = watching(supervise, tmp_path, options=("--window", window))
    assert request(supervised.address, "/baseline-ready")["pid"] == supervised.child_pid
    far = (now + datetime.timedelta(days=7)).isoformat()
    drop_bundle(
        folder, make_bundle(tmp_path, "2.0", "planned", kind="planned-baseline", deadline=far)
    )
    wait_pending(supervised)
    time.sleep(1.0)  # the moments are looked at every 50 ms
    assert answer_tag(supervised) == "base"
    assert supervised.status()["patches"]["baseline_pending"]["version"] == "2.0"
    assert not (folder / "applied" / "release-2.0.result.json").exists()
    request(supervised.address, "/baseline-ready")  # now, with the baseline pending
    result = result_of(folder, "release-2.0", supervised)
    assert result["outcome"] == "applied", result
    assert "ready" in result["reason"]
    assert answer_tag(supervised) == "planned"
    # The new process's readiness, with nothing pending, is not kept for the next one.
    request(supervised.address, "/baseline-ready")
    drop_bundle(
        folder, make_bundle(tmp_path, "3.0", "planned-3", kind="planned-baseline", deadline=far)
    )
    wait_pending(supervised)
    time.sleep(1.0)
    assert answer_tag(supervised) == "planned"
    request(supervised.address, "/baseline-ready")
    assert result_of(folder, "release-3.0", supervised)["outcome"] == "applied"
    assert answer_tag(supervised) == "planned-3"


@pytest.mark.e2e
def test_signatures_are_checked_for_hot_patches_and_directory_bundles(
    supervise: Callable[..., Supervised], tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    private, _ = generate_keypair(keys)
    folder = tmp_path / "patches"
    supervised = supervise(
        options=("--watch", str(folder), "--baseline", "1.0", "--trusted-keys", str(keys))
    )
    drop(folder, "unsigned-1.0.1.py", logic_patch("1.0.1", "unsigned"))
    result = result_of(folder, "unsigned-1.0.1.py", supervised)
    assert result["dir"] == "rejected"
    assert "signature" in result["reason"]

    staging = tmp_path / "staging"
    staging.mkdir()
    signed = staging / "signed-1.0.1.py"
    signed.write_text(logic_patch("1.0.1", "signed"))
    sign_file(signed, private)
    (staging / "signed-1.0.1.py.sig").rename(folder / "signed-1.0.1.py.sig")  # first: no wait
    signed.rename(folder / signed.name)
    result = result_of(folder, "signed-1.0.1.py", supervised)
    assert result["outcome"] == "applied", result
    assert result["key_id"]
    assert answer_tag(supervised) == "signed"

    bundle = make_bundle(tmp_path, "2.0", "signed-bundle")
    sign_file(bundle, private)
    (tmp_path / "release-2.0.sig").rename(folder / "release-2.0.sig")
    (bundle / "src" / "counter_logic.py").write_text("def tag():\n    return 'tampered'\n")
    drop_bundle(folder, bundle)
    result = result_of(folder, "release-2.0", supervised)
    assert result["dir"] == "rejected", result
    assert "tampered" in result["reason"]
    assert answer_tag(supervised) == "signed"
    assert not (folder / ".releases" / "2.0").exists()

    bundle = make_bundle(tmp_path, "2.1", "signed-bundle")
    sign_file(bundle, private)
    (tmp_path / "release-2.1.sig").rename(folder / "release-2.1.sig")
    drop_bundle(folder, bundle)
    result = result_of(folder, "release-2.1", supervised)
    assert result["outcome"] == "applied", result
    assert answer_tag(supervised) == "signed-bundle"


@pytest.mark.e2e
def test_a_planned_baseline_restarts_in_the_maintenance_window(
    supervise: Callable[..., Supervised], tmp_path: Path
) -> None:
    folder = tmp_path / "patches"
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=1), now + datetime.timedelta(minutes=5)
    window = f"{start:%H:%M}-{end:%H:%M}"
    supervised = supervise(options=("--watch", str(folder), "--window", window, *BASE_OPTIONS))
    far = (now + datetime.timedelta(days=7)).isoformat()
    drop_bundle(
        folder, make_bundle(tmp_path, "2.0", "windowed", kind="planned-baseline", deadline=far)
    )
    result = result_of(folder, "release-2.0", supervised)
    assert result["outcome"] == "applied", result
    assert "window" in result["reason"]
    assert answer_tag(supervised) == "windowed"
