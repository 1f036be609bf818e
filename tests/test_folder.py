"""The watched folder end to end: real files, real inotify events, a real agent thread."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from drops import WAIT_S, DropFolder, wait_for

import hotpatch
from hotpatch.agent import _outcome, _queue
from hotpatch.agent._drops import is_ignored, peek_targets, peek_version

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def patch_source(mod: types.ModuleType, version: str, value: int, baseline: str = "1.0") -> str:
    return textwrap.dedent(
        f"""\
        from hotpatch import Patch

        patch = Patch(version={version!r}, baseline={baseline!r})

        @patch.replace("{mod.__name__}:f")
        def f():
            return {value}
        """
    )


@pytest.fixture
def drops(tmp_path: Path) -> DropFolder:
    return DropFolder(tmp_path)


@pytest.fixture
def target(make_module: Callable[[str], types.ModuleType]) -> types.ModuleType:
    return make_module(
        """\
        def f():
            return 0
        """
    )


@pytest.fixture
def start_agent(drops: DropFolder) -> Iterator[Callable[..., hotpatch.Agent]]:
    agents: list[hotpatch.Agent] = []

    def start(**options: Any) -> hotpatch.Agent:
        options.setdefault("control_socket", False)
        options.setdefault("verify", False)
        agent = hotpatch.install("1.0", watch=drops.path, **options)
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        agent.stop()
        if agent.registry is not None and agent.registry.level:
            agent.registry.rollback(to="1.0")


# -- names and versions, without importing anything ----------------------------------------


@pytest.mark.parametrize(
    ("name", "ignored"),
    [
        ("fix.py", False),
        ("fix.py.sig", False),
        ("bundle.zip", False),
        (".fix.py", True),
        ("fix.py.tmp", True),
        ("fix.py.part", True),
        ("fix.py~", True),
        (".hotpatch.json", True),
    ],
)
def test_temporary_and_hidden_names_are_ignored(name: str, ignored: bool) -> None:
    assert is_ignored(name) is ignored


@pytest.mark.parametrize(
    ("source", "version"),
    [
        ('from hotpatch import Patch\npatch = Patch(version="2.3.1", baseline="2.3")\n', "2.3.1"),
        ('import hotpatch\np = hotpatch.Patch("2.3.10", baseline="2.3")\n', "2.3.10"),
        ("def broken(:\n", None),
        ('patch = Patch(version=VERSION, baseline="2.3")\n', None),
        ('a = Patch(version="1.1", baseline="1")\nb = Patch(version="1.2", baseline="1")\n', None),
        ('patch = Patch(version="not a version", baseline="1")\n', None),
        (b"\xff\xfe not utf-8", None),
    ],
)
def test_peek_version_reads_the_literal_without_running_the_file(
    source: str | bytes, version: str | None
) -> None:
    data = source.encode() if isinstance(source, str) else source
    assert peek_version(data) == version


def test_peek_targets_lists_the_replace_literals() -> None:
    source = textwrap.dedent(
        """\
        from hotpatch import Patch
        patch = Patch(version="1.1", baseline="1")

        @patch.replace("shop.pricing:apply_discount")
        def apply_discount(price, pct): ...

        @patch.replace_class("shop.cart:Cart")
        class Cart: ...

        @patch.migrate("shop.cart")
        def migrate(module): ...
        """
    )
    assert peek_targets(source.encode()) == ("shop.pricing:apply_discount", "shop.cart:Cart")
    assert peek_targets(b"def broken(:") == ()


def test_peek_version_does_not_execute_the_file(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    source = f'open({str(marker)!r}, "w").close()\npatch = Patch(version="1.1", baseline="1")\n'
    assert peek_version(source.encode()) == "1.1"
    assert not marker.exists()


# -- complete-file detection ----------------------------------------------------------------


def test_renamed_in_patch_is_applied_and_filed(
    drops: DropFolder, target: types.ModuleType, start_agent: Callable[..., hotpatch.Agent]
) -> None:
    agent = start_agent()
    text = patch_source(target, "1.0.1", 1)
    drops.drop("fix.py", text)
    result = drops.filed("fix.py", "applied")
    assert target.f() == 1
    assert agent.registry is not None
    assert agent.registry.level == ("1.0.1",)
    assert result["version"] == "1.0.1"
    assert result["outcome"] == "applied"
    assert result["reason"] is None
    assert result["sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert result["targets"] == [f"{target.__name__}:f"]
    assert result["level"] == ["1.0.1"]
    assert result["file"] == "fix.py"
    assert result["who"] == f"folder:{drops.path}"
    assert result["time"].endswith("+00:00")
    timings = result["timings"]
    assert {"read_s", "verify_s", "load_s", "apply_s", "total_s"} <= set(timings)
    assert all(value >= 0 for value in timings.values())
    assert timings["total_s"] >= timings["apply_s"]
    # The drop left the folder, and its file content is what was applied.
    assert not (drops.path / "fix.py").exists()
    assert (drops.path / "applied" / "fix.py").read_text() == text


def test_file_written_slowly_in_place_is_taken_only_after_close(
    drops: DropFolder, target: types.ModuleType, start_agent: Callable[..., hotpatch.Agent]
) -> None:
    start_agent()
    text = patch_source(target, "1.0.6", 6)
    half = len(text) // 2
    slow = drops.path / "slow.py"
    with slow.open("w") as out:
        out.write(text[:half])  # a truncated patch: a syntax error if it were taken now
        out.flush()
        # Another drop goes all the way through while slow.py is still open.
        drops.drop("other.py", patch_source(target, "1.0.5", 5))
        drops.filed("other.py", "applied")
        assert slow.exists()
        assert not (drops.path / "rejected" / "slow.py.result.json").exists()
        for _ in range(3):  # more chunks, more writes
            out.write(text[half : half + 10])
            out.flush()
            half += 10
            time.sleep(0.02)
        out.write(text[half:])
    result = drops.filed("slow.py", "applied")
    assert result["outcome"] == "applied"
    assert target.f() == 6


def test_temporary_names_wait_for_their_rename(
    drops: DropFolder, target: types.ModuleType, start_agent: Callable[..., hotpatch.Agent]
) -> None:
    start_agent()
    waiting = {
        "fix.py.tmp": "1.0.2",
        "fix2.py.part": "1.0.3",
        "fix3.py~": "1.0.4",
        ".fix4.py": "1.0.5",
    }
    for name, version in waiting.items():
        (drops.path / name).write_text(patch_source(target, version, 9))
    # A normal drop goes through while the temporary files sit there untouched.
    drops.drop("first.py", patch_source(target, "1.0.1", 1))
    drops.filed("first.py", "applied")
    for name in waiting:
        assert (drops.path / name).exists(), name
    assert drops.listing("rejected") == []
    # Renamed to a real name inside the folder, the file is taken.
    os.rename(drops.path / "fix.py.tmp", drops.path / "fix.py")
    assert drops.filed("fix.py", "applied")["version"] == "1.0.2"
    assert target.f() == 9
    for name in ("fix2.py.part", "fix3.py~", ".fix4.py"):
        assert (drops.path / name).exists(), name


def test_reading_a_file_in_the_folder_does_not_take_it(
    drops: DropFolder, target: types.ModuleType, start_agent: Callable[..., hotpatch.Agent]
) -> None:
    start_agent()
    later = drops.path / "later.py"
    with later.open("w") as writer:  # still being written: not announced
        writer.write(patch_source(target, "1.0.9", 9))
        writer.flush()
        later.read_text()  # closing after a read is not a drop either
        drops.drop("b.py", patch_source(target, "1.0.2", 2))
        assert drops.filed("b.py", "applied")["outcome"] == "applied"
        assert later.exists()
        assert drops.listing("applied") == ["b.py", "b.py.result.json"]
        assert drops.listing("rejected") == []
    assert drops.filed("later.py", "applied")["version"] == "1.0.9"


def test_a_hard_link_made_in_the_folder_is_taken(
    drops: DropFolder, target: types.ModuleType, start_agent: Callable[..., hotpatch.Agent]
) -> None:
    start_agent()
    original = drops.write("fix.py", patch_source(target, "1.0.1", 1))
    os.link(original, drops.path / "fix.py")  # complete when made: no close, no rename
    assert drops.filed("fix.py", "applied")["version"] == "1.0.1"
    assert target.f() == 1
    assert original.exists()  # the other name stays where it was


@pytest.mark.parametrize("points_to", ["a patch", "nothing", "a directory"])
def test_a_symlink_made_in_the_folder_is_refused_not_ignored(
    drops: DropFolder,
    target: types.ModuleType,
    start_agent: Callable[..., hotpatch.Agent],
    points_to: str,
) -> None:
    agent = start_agent()
    source = {
        "a patch": drops.write("real.py", patch_source(target, "1.0.1", 1)),
        "nothing": drops.outbox / "missing.py",
        "a directory": drops.outbox,
    }[points_to]
    os.symlink(source, drops.path / "link.py")
    result = drops.filed("link.py", "rejected")
    assert "link.py is a symbolic link" in result["reason"]
    assert "refuses symlinks" in result["reason"]
    assert os.path.islink(drops.path / "rejected" / "link.py")
    assert agent.registry is not None
    assert agent.registry.level == ()
    assert target.f() == 0


# -- version order --------------------------------------------------------------------------


def test_a_burst_is_processed_in_version_order(
    drops: DropFolder,
    target: types.ModuleType,
    start_agent: Callable[..., hotpatch.Agent],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A burst is files that come within the settle of each other. On a loaded machine
    # `mv` is often descheduled between two renames for longer than the 5 ms: that is a
    # split burst, whose outcome the two tests below pin down. Here the settle outlasts
    # any such pause.
    monkeypatch.setattr(_queue, "SETTLE_S", 0.5)
    agent = start_agent()
    versions = [f"1.0.{n}" for n in (9, 3, 12, 1, 7, 10, 2)]
    staged = [drops.write(f"p{i}.py", patch_source(target, v, i)) for i, v in enumerate(versions)]
    # One `mv` renames them in, one after the other, in this (unsorted) order.
    subprocess.run(["mv", *map(str, staged), str(drops.path)], check=True)
    for path in staged:
        drops.filed(path.name, "applied")
    assert agent.registry is not None
    assert list(agent.registry.level) == sorted(versions, key=_v)
    assert drops.listing("rejected") == []


def _v(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def test_a_burst_split_by_a_pause_rejects_its_late_lower_version_saying_why(
    drops: DropFolder, target: types.ModuleType, start_agent: Callable[..., hotpatch.Agent]
) -> None:
    # A move descheduled after its first rename for longer than the settle (here:
    # until that first drop went in): the rest of the burst comes after it was applied.
    agent = start_agent()
    high, low = (
        drops.write("p0.py", patch_source(target, "1.0.9", 9)),
        drops.write("p1.py", patch_source(target, "1.0.3", 3)),
    )
    drops.put(high)
    drops.filed("p0.py", "applied")
    drops.put(low)
    result = drops.filed("p1.py", "rejected")
    reason = result["reason"]
    assert reason.startswith("patch 1.0.3 is not newer than the current level 1.0.9")
    assert "p1.py came" in reason
    assert "after p0.py (1.0.9) was applied" in reason
    assert "not one burst" in reason
    assert "give it a version above 1.0.9" in reason
    assert "hotpatch rollback --to BASELINE" in reason  # the way to have it in order
    assert agent.registry is not None
    assert agent.registry.level == ("1.0.9",)


def test_a_lower_version_that_comes_while_a_drop_is_checked_goes_in_first(
    drops: DropFolder,
    target: types.ModuleType,
    start_agent: Callable[..., hotpatch.Agent],
    tmp_path: Path,
) -> None:
    # The burst's first file is taken alone (the move paused after it) and is still
    # being verified when a lower version of the burst comes: it waits for that one.
    started, go = tmp_path / "started", tmp_path / "go"
    agent = start_agent(verify=True)
    slow = patch_source(target, "1.0.9", 9) + textwrap.dedent(
        f"""\
        import os, time
        open({str(started)!r}, "w").close()
        for _ in range(6000):  # imported in the verification child: held until told
            if os.path.exists({str(go)!r}):
                break
            time.sleep(0.01)
        """
    )
    drops.drop("p0.py", slow)
    wait_for(started.exists, "p0.py to be verified")
    drops.drop("p1.py", patch_source(target, "1.0.3", 3))
    go.touch()
    drops.filed("p1.py", "applied")
    drops.filed("p0.py", "applied")
    assert agent.registry is not None
    assert agent.registry.level == ("1.0.3", "1.0.9")
    assert drops.listing("rejected") == []
    assert target.f() == 9


def test_catch_up_applies_files_already_there_in_version_order(
    drops: DropFolder, target: types.ModuleType, start_agent: Callable[..., hotpatch.Agent]
) -> None:
    # Names in the opposite order of the versions: the version decides.
    (drops.path / "a.py").write_text(patch_source(target, "1.0.3", 3))
    (drops.path / "b.py").write_text(patch_source(target, "1.0.2", 2))
    (drops.path / "c.py").write_text(patch_source(target, "1.0.1", 1))
    (drops.path / "d.py").write_text("this is not python (\n")  # unreadable: last
    (drops.path / "e.py.tmp").write_text(patch_source(target, "1.0.4", 4))
    agent = start_agent()
    for name in ("a.py", "b.py", "c.py"):
        drops.filed(name, "applied")
    drops.filed("d.py", "rejected")
    assert agent.registry is not None
    assert agent.registry.level == ("1.0.1", "1.0.2", "1.0.3")
    assert [h.version for h in agent.registry.history] == ["1.0.1", "1.0.2", "1.0.3"]
    assert target.f() == 3
    assert (drops.path / "e.py.tmp").exists()


def test_a_lower_version_not_yet_complete_is_waited_for(
    drops: DropFolder,
    target: types.ModuleType,
    start_agent: Callable[..., hotpatch.Agent],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_queue, "HOLD_BACK_S", WAIT_S)
    agent = start_agent()
    # 1.0.1 is in the folder, whole, but still open: not announced yet.
    with (drops.path / "low.py").open("w") as low:
        low.write(patch_source(target, "1.0.1", 1))
        low.flush()
        drops.drop("high.py", patch_source(target, "1.0.2", 2))
        wait_for(lambda: "high.py" in agent.status()["pending"], "high.py to be announced")
        assert agent.registry is not None
        assert agent.registry.level == ()
    drops.filed("low.py", "applied")
    drops.filed("high.py", "applied")
    assert agent.registry.level == ("1.0.1", "1.0.2")


def test_a_lower_version_begun_after_the_folder_was_listed_is_waited_for(
    drops: DropFolder,
    target: types.ModuleType,
    start_agent: Callable[..., hotpatch.Agent],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The folder is looked at again for each drop taken: a lower version begun since the
    last look (still being written) holds back a higher one."""
    monkeypatch.setattr(_queue, "HOLD_BACK_S", WAIT_S)
    agent = start_agent()
    drops.path.chmod(0o777)  # unsafe: high.py is taken and put back, again and again
    drops.drop("high.py", patch_source(target, "1.0.2", 2))
    wait_for(lambda: not agent.status()["folder"]["safe"], "the folder to be found unsafe")
    wait_for(lambda: "high.py" in agent.status()["pending"], "high.py to be announced")
    with (drops.path / "low.py").open("w") as low:  # begun after high.py was looked at
        low.write(patch_source(target, "1.0.1", 1))
        low.flush()
        time.sleep(0.5)  # its creation seen by the watch
        drops.path.chmod(0o700)
        wait_for(lambda: agent.status()["folder"]["safe"], "the folder to be safe again")
        time.sleep(1.0)  # time enough to take high.py, were low.py not waited for
        assert agent.registry is not None
        assert agent.registry.level == ()
    drops.filed("low.py", "applied")
    drops.filed("high.py", "applied")
    assert agent.registry.level == ("1.0.1", "1.0.2")


def test_the_wait_for_a_lower_version_is_bounded(
    drops: DropFolder,
    target: types.ModuleType,
    start_agent: Callable[..., hotpatch.Agent],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_queue, "HOLD_BACK_S", 0.1)
    agent = start_agent()
    with (drops.path / "low.py").open("w") as low:
        low.write(patch_source(target, "1.0.1", 1))
        low.flush()
        drops.drop("high.py", patch_source(target, "1.0.2", 2))
        drops.filed("high.py", "applied")  # not held up for ever by a file left open
    result = drops.filed("low.py", "rejected")
    assert "not newer" in result["reason"]
    assert agent.registry is not None
    assert agent.registry.level == ("1.0.2",)


# -- outcomes and result files --------------------------------------------------------------


def test_a_result_carries_the_top_of_the_level_and_counts_it_all(
    drops: DropFolder, target: types.ModuleType, start_agent: Callable[..., hotpatch.Agent]
) -> None:
    """What filing a drop costs stays the same as the level grows: the top 10 versions."""
    start_agent()
    versions = [f"1.0.{n}" for n in range(1, 13)]
    staged = [
        drops.write(f"p{n:02d}.py", patch_source(target, v, n)) for n, v in enumerate(versions)
    ]
    subprocess.run(["mv", *map(str, staged), str(drops.path)], check=True)
    results = [drops.filed(path.name, "applied") for path in staged]
    assert results[0]["level"] == ["1.0.1"]
    assert results[0]["level_size"] == 1
    assert results[9]["level"] == versions[:10]
    assert results[-1]["level"] == versions[-10:]  # oldest first, cut to the top 10
    assert results[-1]["level_size"] == 12


def test_a_name_taken_in_the_outcome_folder_gets_a_suffix(
    drops: DropFolder, target: types.ModuleType, start_agent: Callable[..., hotpatch.Agent]
) -> None:
    start_agent()
    for n in (1, 2, 3):
        drops.drop("fix.py", patch_source(target, f"1.0.{n}", n))
        name = "fix.py" if n == 1 else f"fix.{n - 1}.py"
        assert drops.filed(name, "applied")["version"] == f"1.0.{n}"
    assert drops.listing("applied") == [
        "fix.1.py",
        "fix.1.py.result.json",
        "fix.2.py",
        "fix.2.py.result.json",
        "fix.py",
        "fix.py.result.json",
    ]
    assert target.f() == 3


def test_the_result_is_complete_before_the_file_moves(
    drops: DropFolder,
    target: types.ModuleType,
    start_agent: Callable[..., hotpatch.Agent],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[dict[str, Any]] = []
    move = _outcome._move

    def checking_move(source: Path, destination: Path) -> None:
        result = destination.with_name(destination.name + _outcome.RESULT_SUFFIX)
        seen.append(json.loads(result.read_text()))  # there, and whole JSON
        move(source, destination)

    monkeypatch.setattr(_outcome, "_move", checking_move)
    start_agent()
    drops.drop("fix.py", patch_source(target, "1.0.1", 1))
    drops.filed("fix.py", "applied")
    assert [r["version"] for r in seen] == ["1.0.1"]
    # No temporary file is left beside the results.
    assert drops.listing("applied") == ["fix.py", "fix.py.result.json"]


def test_same_version_same_content_is_unchanged(
    drops: DropFolder, target: types.ModuleType, start_agent: Callable[..., hotpatch.Agent]
) -> None:
    agent = start_agent()
    text = patch_source(target, "1.0.1", 1)
    drops.drop("fix.py", text)
    drops.filed("fix.py", "applied")
    drops.drop("again.py", text)
    result = drops.filed("again.py", "applied")
    assert result["outcome"] == "unchanged"
    assert result["version"] == "1.0.1"
    assert "already applied" in result["reason"]
    assert agent.registry is not None
    assert agent.registry.level == ("1.0.1",)
    assert [h.action for h in agent.registry.history] == ["apply"]


def test_same_version_other_content_is_rejected(
    drops: DropFolder, target: types.ModuleType, start_agent: Callable[..., hotpatch.Agent]
) -> None:
    agent = start_agent()
    drops.drop("fix.py", patch_source(target, "1.0.1", 1))
    drops.filed("fix.py", "applied")
    drops.drop("other.py", patch_source(target, "1.0.1", 99))
    result = drops.filed("other.py", "rejected")
    assert result["outcome"] == "rejected"
    assert "1.0.1 is already applied with other content" in result["reason"]
    assert "newer version" in result["reason"]
    assert target.f() == 1
    assert agent.registry is not None
    assert agent.registry.level == ("1.0.1",)


def test_bundles_wait_in_pending_for_the_supervisor(
    drops: DropFolder, start_agent: Callable[..., hotpatch.Agent]
) -> None:
    import zipfile

    start_agent()
    toml = '[patch]\nversion = "2.0"\nkind = "unplanned-baseline"\n[code]\nroot = "src"\n'
    bundle = drops.outbox / "release-2.0"
    (bundle / "src").mkdir(parents=True)
    (bundle / "patch.toml").write_text(toml)
    os.rename(bundle, drops.path / "release-2.0")
    result = drops.filed("release-2.0", "pending")
    assert result["outcome"] == "pending"
    assert result["reason"] == "baseline bundles need the supervisor (hotpatch run)"
    assert result["version"] == "2.0"
    assert (drops.path / "pending" / "release-2.0" / "patch.toml").exists()

    archive = drops.outbox / "release-2.1.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("patch.toml", toml.replace("2.0", "2.1"))
    os.rename(archive, drops.path / archive.name)
    result = drops.filed("release-2.1.zip", "pending")
    assert result["version"] == "2.1"
    assert result["outcome"] == "pending"


def test_a_file_that_is_not_a_patch_is_rejected(
    drops: DropFolder, start_agent: Callable[..., hotpatch.Agent]
) -> None:
    start_agent()
    drops.drop("notes.txt", "remember the milk\n")
    result = drops.filed("notes.txt", "rejected")
    assert result["outcome"] == "rejected"
    assert "notes.txt is not a patch" in result["reason"]


def test_a_signature_waits_beside_its_patch_and_moves_with_it(
    drops: DropFolder, target: types.ModuleType, start_agent: Callable[..., hotpatch.Agent]
) -> None:
    start_agent()
    drops.drop("fix.py.sig", "not checked: signatures are not required here\n")
    drops.drop("fix.py", patch_source(target, "1.0.1", 1))
    drops.filed("fix.py", "applied")
    wait_for((drops.path / "applied" / "fix.py.sig").exists, "the .sig to move")
    assert not (drops.path / "fix.py.sig").exists()


def test_an_unexpected_error_becomes_a_rejection_and_the_folder_goes_on(
    drops: DropFolder,
    target: types.ModuleType,
    start_agent: Callable[..., hotpatch.Agent],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from hotpatch.agent import _local

    real = _local.load_patch_source

    def failing_once(data: bytes, *, path: str) -> hotpatch.Patch:
        monkeypatch.setattr(_local, "load_patch_source", real)
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(_local, "load_patch_source", failing_once)
    agent = start_agent()
    drops.drop("first.py", patch_source(target, "1.0.1", 1))
    result = drops.filed("first.py", "rejected")
    assert (
        "internal error while processing first.py: RuntimeError: disk on fire" in (result["reason"])
    )
    drops.drop("second.py", patch_source(target, "1.0.2", 2))
    assert drops.filed("second.py", "applied")["outcome"] == "applied"
    assert agent.registry is not None
    assert agent.registry.level == ("1.0.2",)


def test_a_drop_replaced_while_processed_files_the_bytes_that_were_processed(
    drops: DropFolder,
    target: types.ModuleType,
    start_agent: Callable[..., hotpatch.Agent],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from hotpatch.agent import _local

    first = patch_source(target, "1.0.1", 1)
    second = patch_source(target, "1.0.2", 2)
    real = _local.load_patch_source

    def replace_then_load(data: bytes, *, path: str) -> hotpatch.Patch:
        if data == first.encode():  # the writer swaps the file under the agent's feet
            os.rename(drops.write("fix.py", second), drops.path / "fix.py")
        return real(data, path=path)

    monkeypatch.setattr(_local, "load_patch_source", replace_then_load)
    start_agent()
    drops.drop("fix.py", first)
    assert drops.filed("fix.py", "applied")["version"] == "1.0.1"
    assert (drops.path / "applied" / "fix.py").read_text() == first
    assert drops.filed("fix.1.py", "applied")["version"] == "1.0.2"
    assert (drops.path / "applied" / "fix.1.py").read_text() == second
    assert target.f() == 2


def test_status_lists_drops_waiting_for_the_worker(
    drops: DropFolder,
    target: types.ModuleType,
    start_agent: Callable[..., hotpatch.Agent],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from hotpatch.agent import _local

    gate = threading.Event()
    real = _local.load_patch_source

    def held(data: bytes, *, path: str) -> hotpatch.Patch:
        gate.wait(WAIT_S)
        return real(data, path=path)

    monkeypatch.setattr(_local, "load_patch_source", held)
    agent = start_agent()
    drops.drop("a.py", patch_source(target, "1.0.1", 1))
    drops.drop("b.py", patch_source(target, "1.0.2", 2))
    wait_for(lambda: agent.status()["pending"] == ["a.py", "b.py"], "both drops to be seen")
    gate.set()
    drops.filed("b.py", "applied")
    wait_for(lambda: agent.status()["pending"] == [], "the queue to empty")
    assert agent.status()["last"]["version"] == "1.0.2"


# -- the benchmark's smoke run ---------------------------------------------------------------


def test_folder_latency_benchmark_quick_run(tmp_path: Path) -> None:
    out = tmp_path / "results" / "folder_latency.json"
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "folder_latency.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert data["benchmark"] == "folder_latency"
    assert data["quick"] is True
    modes = {row["mode"]: row for row in data["runs"]}
    assert set(modes) == {
        "watchdog alone",
        "without verification",
        "without verification, GIL-bound poller",
        "with verification, a new Python per patch (before)",
        "with verification",
    }
    for row in modes.values():
        assert row["drops"] == len(row["samples_ms"]) > 0
        assert 0 < row["median_ms"] <= row["p99_ms"]
    for key in ("without verification", "with verification"):
        assert modes[key]["processing_median_ms"] > 0
    one_shot = modes["with verification, a new Python per patch (before)"]
    verified = modes["with verification"]
    assert verified["child_median_ms"] > 0
    assert one_shot["child_median_ms"] > 0
    assert isinstance(data["goal"]["met"], bool)
    assert data["verification_cost_ms"] == (
        verified["median_ms"] - modes["without verification"]["median_ms"]
    )
    goal = data["verified_goal"]
    assert (goal["limit_median_ms"], goal["limit_p99_ms"]) == (30.0, 100.0)
    assert (goal["median_ms"], goal["p99_ms"]) == (verified["median_ms"], verified["p99_ms"])
    assert isinstance(goal["met"], bool)
    assert data["speedup_over_one_shot"] == one_shot["median_ms"] / verified["median_ms"]
    header = next(line for line in proc.stdout.splitlines() if line.startswith("mode"))
    assert header.split() == ["mode", "drops", "median", "p99", "max", "agent", "verify"]
    assert "goal: median without verification under 10 ms" in proc.stdout
    assert "goal: with verification median <= 30 ms, p99 <= 100 ms" in proc.stdout
