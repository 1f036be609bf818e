"""Smoke runs of the benchmarks: each runs with tiny counts, prints its table and writes its JSON.

Only the shape of the output is checked, never a timing.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from gitrepo import GitRepo

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def run(name: str, tmp_path: Path, timeout: float = 120) -> tuple[str, dict[str, Any]]:
    """Run ``benchmarks/<name>.py --quick``; returns (stdout, the JSON it wrote)."""
    out = tmp_path / "results" / f"{name}.json"  # a folder that does not exist yet
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{name}.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return proc.stdout, json.loads(out.read_text())


def check_environment(data: dict[str, Any], name: str) -> None:
    assert data["benchmark"] == name
    assert data["quick"] is True
    assert data["environment"]["python"] == ".".join(map(str, sys.version_info[:3]))


def test_call_overhead(tmp_path: Path) -> None:
    stdout, data = run("call_overhead", tmp_path)
    check_environment(data, "call_overhead")
    cases = data["cases"]
    assert list(cases) == ["trivial f(x)", "f(a, b, c=3) as f(1, 2)", "method box.m(x)"]
    for name, forms in cases.items():
        assert list(forms) == ["inline", "closure", "widened", "swap"], name
        # The benchmark forces each mode; it must have got it.
        assert forms["inline"]["mode"] == "inline", name
        assert forms["closure"]["mode"].startswith("forward (the replacement has its own"), name
        assert forms["widened"]["mode"].startswith("forward (the argument layout"), name
        assert forms["swap"]["mode"] == "none (by hand)", name
        for form, figures in forms.items():
            for value in ("patched_ns", "unpatched_ns", "ratio"):
                assert figures[value] > 0, (name, form, value)
        rows = [line for line in stdout.splitlines() if line.startswith(name)]
        assert [row[len(name) :].split()[0] for row in rows] == [
            "inline",
            "forward,",
            "forward,",
            "plain",
        ]
    assert data["loop_ns"] > 0
    goal = data["goal"]
    assert goal["limit"] == (1.35 if sys.version_info >= (3, 13) else 1.05)
    assert goal["ratio"] == cases["trivial f(x)"]["inline"]["ratio"]
    assert isinstance(goal["met"], bool)
    header = next(line for line in stdout.splitlines() if line.startswith("case"))
    assert header.split() == ["case", "form", "patched", "unpatched", "twin", "ratio"]
    assert "goal: inline ratio of the trivial function" in stdout
    assert f"results written to {tmp_path / 'results'}" in stdout


def test_apply_latency(tmp_path: Path) -> None:
    stdout, data = run("apply_latency", tmp_path)
    check_environment(data, "apply_latency")
    assert data["sizes"] == [1, 10]
    heap = data["heap_objects"]
    assert heap > 0
    runs = {(r["targets"], r["heap_objects"], r["kind"]): r for r in data["runs"]}
    assert set(runs) == {
        (n, h, k) for n in (1, 10) for h in (0, heap) for k in ("first apply", "re-apply")
    }
    for key, row in runs.items():
        assert row["samples"] == 4, key
        assert 0 <= row["full_gc"] <= 4, key
        for metric in (
            "apply_us",
            "apply_cpu_us",
            "switch_us",
            "rollback_us",
            "rollback_switch_us",
        ):
            assert 0 < row[metric]["median"] <= row[metric]["p99"], (key, metric)
        # The switch is one step of the apply.
        assert row["switch_us"]["median"] < row["apply_us"]["median"], key
    goals = {g["what"]: g for g in data["goals"]}
    assert set(goals) == {
        "switch, 10 targets (worst median)",
        "whole apply, 10 targets (worst median)",
        "apply CPU with the big heap / without (worst ratio)",
    }  # the linearity goal needs sizes above 10, which --quick does not run
    for goal in goals.values():
        assert isinstance(goal["met"], bool)
        assert goal["value"] > 0
    header = next(line for line in stdout.splitlines() if line.startswith("targets"))
    assert header.split() == [
        "targets",
        "extra",
        "heap",
        "kind",
        "apply",
        "p99",
        "cpu",
        "cpu/target",
        "switch",
        "p99",
        "rollback",
        "p99",
        "rb",
        "switch",
        "full",
        "gc",
        "n",
    ]
    sizes, holders_table = stdout.split("\napply + rollback of 20 targets")
    assert sum(line.lstrip().startswith(("1 ", "10 ")) for line in sizes.splitlines()) == 8
    assert stdout.count("goal: ") == 3
    # The holders workload, in a process of its own with this checkout's hotpatch.
    holders = data["holders"]
    assert (holders["pairs"], holders["rounds"], holders["before"]) == (10, 1, None)
    assert holders["ratio"] is None  # nothing to compare with
    assert len(holders["load_average"]) == 2  # as the runs start and end
    [run_] = holders["runs"]
    assert (run_["round"], run_["checkout"], run_["targets"], run_["pairs"]) == (1, "now", 20, 10)
    assert Path(run_["hotpatch"]) == BENCHMARKS.parent
    for metric in ("pair_cpu_us", "apply_cpu_us", "rollback_cpu_us", "pair_us"):
        assert 0 < run_[metric]["median"] <= run_[metric]["p99"], metric
        assert run_[metric]["mean"] > 0, metric
    # A pair's CPU is its apply's and its rollback's, sample by sample.
    parts = run_["apply_cpu_us"]["mean"] + run_["rollback_cpu_us"]["mean"]
    assert run_["pair_cpu_us"]["mean"] == pytest.approx(parts)
    header = next(line for line in holders_table.splitlines() if line.startswith("round "))
    assert header.split() == [
        *("round", "hotpatch", "targets", "cpu", "mean", "median", "p99"),
        *("apply", "cpu", "rollback", "cpu", "wall"),
    ]
    assert "now / before" not in stdout


def test_apply_latency_before_runs_another_checkout_in_the_same_rounds(tmp_path: Path) -> None:
    before = tmp_path / "before"
    shutil.copytree(BENCHMARKS.parent / "hotpatch", before / "hotpatch")
    out = tmp_path / "apply_latency.json"
    proc = subprocess.run(
        [
            *(sys.executable, str(BENCHMARKS / "apply_latency.py"), "--quick"),
            *("--workload", "holders", "--before", str(before), "--json", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert "sizes" not in data  # --workload holders: that one only
    holders = data["holders"]
    assert holders["before"] == str(before)
    assert [(r["round"], r["checkout"]) for r in holders["runs"]] == [(1, "now"), (1, "before")]
    roots = {r["checkout"]: Path(r["hotpatch"]) for r in holders["runs"]}
    assert roots == {"now": BENCHMARKS.parent, "before": before.resolve()}
    cpu = {r["checkout"]: r["pair_cpu_us"] for r in holders["runs"]}
    for statistic in ("mean", "median"):
        ratio = holders["ratio"][statistic]
        assert ratio["each_round"] == [cpu["now"][statistic] / cpu["before"][statistic]]
        assert ratio["median"] == ratio["each_round"][0]
        assert f"holders: CPU a pair ({statistic}), now / before: " in proc.stdout


def test_health_gate(tmp_path: Path) -> None:
    stdout, data = run("health_gate", tmp_path)
    check_environment(data, "health_gate")
    # The mechanism the gate counts through on this Python, named in the table.
    mechanism = "wrapper" if sys.version_info < (3, 13) else "sys.monitoring"
    assert data["mechanism"] == {"after": mechanism, "probation": mechanism}
    assert f"counting through {mechanism}" in stdout
    cases = data["cases"]
    assert list(cases) == ["trivial f(x)", "work (8-step loop)", "raises 1 call in 8"]
    for name, case in cases.items():
        assert case["modes"] == {"plain": "inline", "probation": "inline", "after": "inline"}
        assert list(case["during"]) == ["plain", "probation", "after"], name
        assert list(case["quiet"]) == ["plain", "after"], name
        for phase in ("during", "quiet"):
            assert case[phase]["plain"]["ratio"] == 1.0, (name, phase)
            for form, figures in case[phase].items():
                assert figures["ns"] > 0, (name, phase, form)
                assert figures["ratio"] > 0, (name, phase, form)
        rows = [line for line in stdout.splitlines() if line.startswith(name)]
        assert len(rows) == 1, name
        ratios = [cell for cell in rows[0][len(name) :].split() if cell.endswith("x")]
        assert len(ratios) == 3, rows[0]
    # The probation counted the calls made during it, and the raising case's errors.
    counted = data["probation_counted"]
    assert counted["calls"] > counted["errors"] > 0
    assert data["loop_ns"]["during"] > 0
    assert data["loop_ns"]["quiet"] > 0
    goal = data["goal"]
    assert goal["ratio"] == max(c["quiet"]["after"]["ratio"] for c in cases.values())
    assert isinstance(goal["met"], bool)
    header = next(line for line in stdout.splitlines() if line.startswith("case"))
    assert header.split()[:4] == ["case", "(a)plain", "(b)probation", "(b)/(a)"]
    assert "goal: after probation / plain" in stdout
    assert f"results written to {tmp_path / 'results'}" in stdout


@pytest.mark.slow  # eight real supervisors, restarted 2-3 times each: about 35 s
def test_restart_pause_with_every_kind_and_its_plot(tmp_path: Path) -> None:
    # The one quick run of restart_pause (tests/test_supervisor.py ran a second, checking
    # a part of what this checks). 1200 s: a bound for a hang (it took 449 s of the 600 it
    # had at load 25 on 2 cores).
    stdout, data = run("restart_pause", tmp_path, timeout=1200)
    check_environment(data, "restart_pause")
    assert (data["sizes_mb"], data["restarts"], data["kind_restarts"]) == ([0, 1], 3, 2)
    assert {(r["mode"], r["state_mb"]) for r in data["runs"]} == {
        (mode, mb) for mode in ("preserving", "cold") for mb in data["sizes_mb"]
    }
    assert [(r["mode"], r["state_mb"]) for r in data["kinds"]] == [("patch", 1), ("baseline", 1)]
    # The big state, in both shapes, at 2 MB in a quick run.
    assert data["big_mb"] == 2
    assert [(r["mode"], r["state_mb"], r["shape"]) for r in data["big"]] == [
        (mode, 2, shape) for shape in ("small", "large") for mode in ("preserving", "cold")
    ]
    for result in data["big"]:
        assert len(result["pauses_s"]) == (2 if result["mode"] == "preserving" else 1)
    for result in (*data["runs"], *data["kinds"]):
        assert result["shape"] == "lists"
        assert len(result["pauses_s"]) == (
            data["kind_restarts"] if result["mode"] in ("patch", "baseline") else data["restarts"]
        )
    for result in (*data["runs"], *data["big"], *data["kinds"]):
        assert len(result["pauses_s"]) == len(result["supervisor_pauses_s"])
        assert len(result["load_s"]) == len(result["pauses_s"])
        assert result["load_median_s"] == statistics.median(result["load_s"])
        assert (result["refused"], result["failed"]) == (0, 0), result["failures"]
        assert result["state_carried"], (result["mode"], result["shape"])
    assert [(g["what"], g["limit"]) for g in data["flat"]] == [
        ("2 MB small / 0 MB, median pause", 2.0),
        ("2 MB large / 0 MB, median pause", 2.0),
    ]
    assert "goal: 2 MB small / 0 MB, median pause <= 2.00x" in stdout
    rows = [line.split()[0] for line in stdout.splitlines() if line.split()[1:2] == ["1"]]
    assert rows == ["preserving", "cold", "patch", "baseline"]
    png = tmp_path / "results" / "restart_pause.png"  # next to its JSON
    if importlib.util.find_spec("matplotlib") is not None:
        assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        assert f"plot written to {png}" in stdout
    else:
        assert not png.exists()
        assert "plot skipped: matplotlib is not installed" in stdout


def test_burst(tmp_path: Path) -> None:
    stdout, data = run("burst", tmp_path)
    check_environment(data, "burst")
    # five bursts of 4 for one of 20 (as many drops), two before it and three after
    assert [(r["size"], r["verify"]) for r in data["runs"]] == [
        *[(s, False) for s in (4, 4, 20, 4, 4, 4)],
        *[(s, True) for s in (4, 4, 20, 4, 4, 4)],
    ]
    for row in data["runs"]:
        assert row["round"] == 1
        assert row["checkout"] == "now"
        assert Path(row["hotpatch"]) == BENCHMARKS.parent  # each burst a process of its own
        assert row["in_version_order"], row
        assert row["active"], row
        assert 0 < row["rename_s"] < row["elapsed_s"]
        assert row["per_drop_ms"] == row["elapsed_s"] / row["size"] * 1e3
        assert row["cpu_s"] > 0
        assert abs(row["cpu_user_s"] + row["cpu_system_s"] - row["cpu_s"]) < 1e-6
        assert len(row["gc_collections"]) == 3  # young, middle, full
        assert row["gc_collections"][2] == row["gc_full"]
    assert data["in_order"] is True
    assert [g["what"] for g in data["goals"]] == [
        "20 drops / 4 drops, verification off",
        "20 drops / 4 drops, verification on",
    ]
    assert data["rounds"] == 1
    assert data["before"] is None
    for goal in data["goals"]:
        assert goal["limit"] == 5.0
        assert goal["each_round"]["wall"] == [goal["ratio"]]
        small = [
            r["elapsed_s"] for r in data["runs"] if r["size"] == 4 and r["verify"] is goal["verify"]
        ]
        large = next(
            r["elapsed_s"]
            for r in data["runs"]
            if r["size"] == 20 and r["verify"] is goal["verify"]
        )
        assert goal["ratio"] == pytest.approx(large / (sum(small) / 5))
        assert goal["rounds_met"] == int(goal["met"])
        assert isinstance(goal["met"], bool)
        assert goal["cpu_ratio"] > 0
        assert len(goal["full_collections"]) == 1  # one round: its 20-drop burst's
        for split in ("user_ratio", "system_ratio"):
            assert goal[split] is None or goal[split] > 0
    assert "every burst applied in version order: yes" in stdout


def test_burst_split_counts_the_moves_of_each_checkout(tmp_path: Path) -> None:
    stdout, data = run("burst_split", tmp_path, timeout=300)
    assert "moves of 7 drops split" in stdout
    runs = {(r["checkout"], r["verify"]): r for r in data["runs"]}
    assert set(runs) == {("now", False), ("now", True)}
    for counts in runs.values():
        assert counts["moves"] == 2
        assert 0 <= counts["split"] <= counts["rejected"] <= 2 * 6


def test_burst_before_runs_another_checkout_in_the_same_rounds(tmp_path: Path) -> None:
    before = tmp_path / "before"
    shutil.copytree(BENCHMARKS.parent / "hotpatch", before / "hotpatch")
    out = tmp_path / "burst.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "burst.py"),
            "--quick",
            "--verify",
            "off",
            "--before",
            str(before),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert data["before"] == str(before)
    assert [(r["checkout"], r["size"]) for r in data["runs"]] == [
        (checkout, size) for size in (4, 4, 20, 4, 4, 4) for checkout in ("now", "before")
    ]
    roots = {r["checkout"]: Path(r["hotpatch"]) for r in data["runs"]}
    assert roots == {"now": BENCHMARKS.parent, "before": before.resolve()}
    assert [(g["checkout"], g["verify"]) for g in data["goals"]] == [
        ("now", False),
        ("before", False),
    ]
    assert "verification off (before) <= 5.00x" in proc.stdout


def test_heap_scan(tmp_path: Path) -> None:
    stdout, data = run("heap_scan", tmp_path)
    check_environment(data, "heap_scan")
    heap = data["heap_objects"]
    assert heap > 0
    whats = (
        "scan",
        "late scan",
        "nested apply",
        "nested rollback",
        "ordinary apply",
        "ordinary rollback",
    )
    runs = {(r["what"], r["heap_objects"]): r for r in data["runs"]}
    assert set(runs) == {(w, h) for w in whats for h in (0, heap)}
    for key, row in runs.items():
        assert row["samples"] == 4, key
        for metric in ("wall_us", "cpu_us"):
            assert 0 < row[metric]["median"] <= row[metric]["p99"], (key, metric)
    assert data["nested_patched"] == data["closures"] == 100
    # The nested target walks the heap; ordinary patches never do.
    assert data["heap_walks"]["nested"] > 0
    assert data["heap_walks"]["ordinary"] == 0
    goals = {g["what"]: g for g in data["goals"]}
    assert set(goals) == {
        "ordinary apply CPU, 10 targets, with the big heap / without",
        "heap walks during ordinary applies and rollbacks",
    }
    assert goals["heap walks during ordinary applies and rollbacks"]["met"] is True
    assert isinstance(
        goals["ordinary apply CPU, 10 targets, with the big heap / without"]["met"], bool
    )
    header = next(line for line in stdout.splitlines() if line.startswith("what"))
    assert header.split() == ["what", "extra", "heap", "wall", "p99", "cpu", "n"]
    assert "0 during ordinary ones; the nested patch patched 100 objects" in stdout
    assert stdout.count("goal: ") == 2


def test_class_guard(tmp_path: Path) -> None:
    stdout, data = run("class_guard", tmp_path)
    check_environment(data, "class_guard")
    runs = {r["what"]: r for r in data["runs"]}
    assert set(runs) == {"class patch", "function patch", "refused (a hook)"}
    for what, row in runs.items():
        assert (row["rounds"], row["files"]) == (3, 20), what
        assert row["without_us"] > 0, what
        assert row["with_us"] > 0, what
        assert row["ratio"] == pytest.approx(row["with_us"] / row["without_us"]), what
    # Without the check, loading the hooked file ran the hook each time; with it, never.
    assert data["hook_ran_without_check"] == 3 * 20
    (goal,) = data["goals"]
    assert goal["what"] == "class patch file load CPU (10 classes), with the check / without"
    assert isinstance(goal["met"], bool)
    header = next(line for line in stdout.splitlines() if line.startswith("what"))
    assert header.split() == ["what", "classes", "without", "with", "check", "ratio"]
    assert "the hook ran for a patch class 60 times" in stdout


def test_state_dir(tmp_path: Path) -> None:
    stdout, data = run("state_dir", tmp_path)
    check_environment(data, "state_dir")
    assert [(r["kept"], r["drops"]) for r in data["runs"]] == [(0, 3), (5, 3)]
    for row in data["runs"]:
        for value in ("folder_median_ms", "state_dir_median_ms", "ratio"):
            assert row[value] > 0, (row, value)
        assert row["ratio"] == row["state_dir_median_ms"] / row["folder_median_ms"]
    header = next(line for line in stdout.splitlines() if line.startswith("files kept"))
    assert header.split() == [
        "files",
        "kept",
        "drops",
        "folder",
        "p99",
        "state",
        "dir",
        "p99",
        "ratio",
    ]


def test_level_scale(tmp_path: Path) -> None:
    stdout, data = run("level_scale", tmp_path)
    check_environment(data, "level_scale")
    assert data["levels"] == [1, 30]
    assert [r["level"] for r in data["rows"]] == [1, 30]
    for row in data["rows"]:
        assert row["samples"] == 4
        for metric in ("apply_us", "switch_us", "rollback_us", "rollback_switch_us"):
            assert 0 < row[metric]["median"] <= row[metric]["p99"], (row["level"], metric)
        assert row["switch_us"]["median"] < row["apply_us"]["median"]
        assert row["memory_per_patch_bytes"] > 0
        assert row["objects_per_patch"] > 0
        assert row["journal_bytes"] > 0
        many = row["switch_many"]
        assert (many["samples"], many["batches"]) == (20, 2)
        for metric in ("switch_us", "rollback_switch_us"):
            figures = many[metric]
            assert 0 < figures["median"] <= figures["p99"], (row["level"], metric)
            assert 0 < figures["best_batch_p99"] <= figures["worst_batch_p99"]
    assert len(data["load_average"]) == 2
    assert (data["switch_samples"], data["switch_batches"]) == (20, 2)
    # The top level's journal, replayed by a new process: its level, 20 kept patches above.
    assert data["replay"]["level"] == data["replay"]["recorded"] == 30 + 20
    assert 0 < data["replay"]["read_s"] < data["replay"]["replay_s"]
    assert [g["what"] for g in data["goals"]] == [
        "apply at level 30 / level 1 (medians)",
        "rollback at level 30 / level 1 (medians)",
        "switch of 10 targets, us (worst median of the levels)",
        "memory per patch at level 30 / level 1",
        "journal read, 50 patches, ms",
    ]
    for goal in data["goals"]:
        assert isinstance(goal["met"], bool)
        assert goal["value"] > 0
    header = next(line for line in stdout.splitlines() if line.startswith("level"))
    assert header.split()[:4] == ["level", "apply", "p99", "switch"]
    assert "journal of 50 patches: read" in stdout
    assert "the switch of 10 targets alone" in stdout
    assert stdout.count("goal: ") == 5


def test_workers_level(tmp_path: Path) -> None:
    stdout, data = run("workers_level", tmp_path, timeout=300)
    check_environment(data, "workers_level")
    assert data["levels"] == [1, 30]
    assert data["parts"] == ["journal", "workers", "run", "agent"]
    assert [r["level"] for r in data["journal"]] == [1, 30]
    for row in data["journal"]:
        assert row["samples"] == 4
        for metric in ("record_apply_ms", "record_rollback_ms", "cpu_apply_ms", "cpu_rollback_ms"):
            assert 0 < row[metric]["median"] <= row[metric]["p99"], (row["level"], metric)
        assert row["journal_bytes"] > 0
    for part in ("workers", "run", "agent"):
        assert [r["level"] for r in data[part]] == [1, 30]
        for row in data[part]:
            assert row["samples"] == 3
            for metric in ("apply_ms", "rollback_ms"):
                assert 0 < row[metric]["median"] <= row[metric]["p99"], (part, row["level"])
    assert [g["what"] for g in data["goals"]] == [
        "the group journal's record: record apply at level 30 / level 1",
        "the group journal's record: record rollback at level 30 / level 1",
        "the group journal's record, CPU time: apply at level 30 / level 1",
        "the group journal's record, CPU time: rollback at level 30 / level 1",
        "through two workers: apply at level 30 / level 1",
        "through two workers: rollback at level 30 / level 1",
        "through hotpatch run --workers 2: apply at level 30 / level 1",
        "through hotpatch run --workers 2: rollback at level 30 / level 1",
        "through one agent (vital check on): apply at level 30 / level 1",
        "through one agent (vital check on): rollback at level 30 / level 1",
    ]
    assert all(isinstance(g["met"], bool) and g["value"] > 0 for g in data["goals"])
    assert "apply and rollback through two real workers" in stdout
    assert "apply and rollback through hotpatch run --workers 2" in stdout
    assert "apply and rollback through one agent, vital check on" in stdout
    assert stdout.count("goal: ") == 10


@pytest.mark.slow  # two levels of hotpatch run --workers 2, before and after alike
def test_status_file(tmp_path: Path) -> None:
    out = tmp_path / "results" / "status_file.json"
    proc = subprocess.run(
        [
            *(sys.executable, str(BENCHMARKS / "status_file.py"), "--quick"),
            *("--before", str(BENCHMARKS.parent), "--json", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    check_environment(data, "status_file")
    rows = data["rows"]
    assert [(r["checkout"], r["level"]) for r in rows] == [
        ("now", 1),
        ("before", 1),
        ("now", 30),
        ("before", 30),
    ]
    for row in rows:
        assert row["rounds"] == 3
        assert row["writes"] >= 3  # each round's changes rewrite the file
        assert 0 < row["write_ms"]["median"] <= row["write_ms"]["p99"]
        assert row["file_bytes"] > 0
    assert [g["what"] for g in data["goals"]] == [
        "write_ms median, level 30 / level 1",
        "write_cpu_ms median, level 30 / level 1",
    ] * 2
    assert proc.stdout.count("goal (") == 4


def test_workers_level_measures_only_the_parts_asked(tmp_path: Path) -> None:
    out = tmp_path / "results" / "workers_level.json"
    proc = subprocess.run(
        [
            *(sys.executable, str(BENCHMARKS / "workers_level.py"), "--quick"),
            *("--parts", "agent", "--json", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert data["parts"] == ["agent"]
    assert "journal" not in data
    assert "run" not in data
    assert [g["what"] for g in data["goals"]] == [
        "through one agent (vital check on): apply at level 30 / level 1",
        "through one agent (vital check on): rollback at level 30 / level 1",
    ]
    wrong = subprocess.run(
        [sys.executable, str(BENCHMARKS / "workers_level.py"), "--quick", "--parts", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert wrong.returncode == 2
    assert "--parts: no such part nope (one of journal, workers, run, agent)" in wrong.stderr


@pytest.mark.parametrize(
    "name",
    [
        "call_overhead",
        "apply_latency",
        "health_gate",
        "burst",
        "heap_scan",
        "class_guard",
        "state_dir",
        "level_scale",
        "replay",
        "workers_level",
        "status_file",
        "burst_split",
    ],
)
def test_help_names_the_options(name: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{name}.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "--quick" in proc.stdout
    assert "--json PATH" in proc.stdout


@pytest.mark.slow  # three commits, each made, verified and tested twice
def test_make_commits_on_a_generated_repository(tmp_path: Path) -> None:
    out = tmp_path / "results" / "make_commits.json"
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "make_commits.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=900,  # a bound for a hang: 160 s at load 25 on 2 cores
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "[3/3]" in proc.stderr  # progress, one line per commit
    data = json.loads(out.read_text())
    check_environment(data, "make_commits")
    assert data["complete"] is True
    assert data["totals"] == {
        "commits": 3,
        "hot": 2,
        "baseline": 1,
        "nothing": 0,
        "error": 0,
        "baseline_diff": 1,
        "baseline_restart": 0,
        "baseline_refused": 0,
        "refused_in_session": 0,
        "tests_failing_before": 2,
        "tests_fixed": 2,
        "regressions": 0,
        "tests_restart_fixed": 2,
        "patch_misses": 0,
    }
    fixed = [c["fixed"] for c in data["commits"]]
    assert fixed == [
        ["tests.test_money::test_cents_round"],
        ["tests.test_money::test_refunds_not_counted"],
        [],
    ]
    assert [c["restart_fixed"] for c in data["commits"]] == fixed  # on the fix commit itself
    assert "calc/currencies.json" in data["commits"][2]["reasons"][0]
    assert [c["why_baseline"] for c in data["commits"]] == ["", "", "diff"]
    assert "generated: 3 commits, 2 hot, 1 baseline (1 from the diff" in proc.stdout


def test_make_commits_every_commit_changing_code_makes_patches_without_tests(
    tmp_path: Path,
) -> None:
    """``--every N``: the last N commits changing code, whether they change tests or not,
    through ``hotpatch make`` only (what a sweep of a whole history needs)."""
    repo = GitRepo(tmp_path / "repo")
    repo.commit("start", {"calc/__init__.py": "", "calc/m.py": "def f():\n    return 1\n"})
    repo.commit("no tests", {"calc/m.py": "def f():\n    return 2\n"})
    repo.commit("docs only", {"README.md": "# calc\n"})
    repo.commit("a module", {"calc/extra.py": "X = 1\n"})
    out = tmp_path / "every.json"
    script = str(BENCHMARKS / "make_commits.py")
    proc = subprocess.run(
        [sys.executable, script, "--repo", str(repo.path), "--every", "5", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert [(c["subject"], c["verdict"]) for c in data["commits"]] == [
        ("a module", "baseline"),
        ("no tests", "hot"),
    ]
    assert data["commits"][1]["tests_run"] == 0  # make only
    assert data["totals"]["baseline_diff"] == 1


def test_make_commits_a_test_id_holding_an_address_is_the_same_test_in_each_run(
    tmp_path: Path,
) -> None:
    """A test parametrized with ``str(obj)`` (``<Fake object at 0x7f0b...>``, as humanize's
    are) gets another id in each run; without the address it is one test, passing in each,
    so it is no patch miss (humanize's 4 per commit were these)."""
    repo = GitRepo(tmp_path / "repo")
    tests = (
        "import pytest\n\nfrom calc.m import f\n\n\nclass Fake:\n    pass\n\n\n"
        "@pytest.mark.parametrize('shown', [str(Fake())])\n"
        "def test_shown(shown):\n    assert 'object at' in shown\n\n\n"
        "def test_f():\n    assert f() == 2\n"
    )
    repo.commit(
        "start",
        {
            "calc/__init__.py": "",
            "calc/m.py": "def f():\n    return 1\n",
            "tests/test_m.py": tests.replace("== 2", "== 1"),
        },
    )
    repo.commit("Fix f", {"calc/m.py": "def f():\n    return 2\n", "tests/test_m.py": tests})
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [
            *(sys.executable, str(BENCHMARKS / "make_commits.py"), "--repo", str(repo.path)),
            *("--pick", "1", "--root", ".", "--json", str(out)),
            *("--test-command", f"{sys.executable} -m pytest tests"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    commit = json.loads(out.read_text())["commits"][0]
    assert commit["verdict"] == "hot", commit["reasons"]
    assert commit["restart_fixed"] == ["tests.test_m::test_f"]
    assert commit["patch_misses"] == []
    assert commit["tests_run"] == 2


def test_make_commits_prepare_lays_out_what_the_build_writes(tmp_path: Path) -> None:
    """``--prepare COMMAND``: a package importing a version file its build writes (not in
    git) is made from the two checked-out trees with the command run in each, so the fix
    goes hot and its test is fixed; from git alone the old code does not import."""
    repo = GitRepo(tmp_path / "repo")
    init = "from calc._version import VERSION\n"
    tests = "from calc.m import f\n\n\ndef test_f():\n    assert f() == 2\n"
    repo.commit(
        "start",
        {
            ".gitignore": "calc/_version.py\n",
            "calc/__init__.py": init,
            "calc/m.py": "def f():\n    return 1\n",
            "tests/test_m.py": tests.replace("== 2", "== 1"),
        },
    )
    repo.commit("Fix f", {"calc/m.py": "def f():\n    return 2\n", "tests/test_m.py": tests})
    script = str(BENCHMARKS / "make_commits.py")
    outcomes = {}
    for how, extra in (
        ("git", []),
        ("prepared", ["--prepare", "echo VERSION=1 > calc/_version.py"]),
    ):
        out = tmp_path / f"{how}.json"
        proc = subprocess.run(
            [
                sys.executable,
                script,
                "--repo",
                str(repo.path),
                "--pick",
                "1",
                "--root",
                ".",
                "--test-command",
                f"{sys.executable} -m pytest tests",
                "--json",
                str(out),
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        outcomes[how] = json.loads(out.read_text())["commits"][0]
    assert outcomes["git"]["verdict"] == "baseline"
    assert "calc._version" in outcomes["git"]["reasons"][0]
    prepared = outcomes["prepared"]
    assert prepared["verdict"] == "hot", prepared["reasons"]
    assert prepared["fixed"] == ["tests.test_m::test_f"]
    assert prepared["restart_fixed"] == ["tests.test_m::test_f"]
    assert prepared["patch_misses"] == prepared["regressions"] == []


def test_replay(tmp_path: Path) -> None:
    stdout, data = run("replay", tmp_path, timeout=300)
    check_environment(data, "replay")
    assert data["levels"] == [30]
    assert data["before"] is None
    rows = data["rows"]
    assert [(r["shape"], r["level"]) for r in rows] == [("all 10", 30), ("one each", 30)]
    for row in rows:
        for figure in ("read_ms", "cold_replay_ms", "replay_ms", "replay_wall_ms", "over_read"):
            assert row[figure] > 0, (row["shape"], figure)
        assert row["over_one_patch"] == row["replay_ms"] / data["replay_one_patch_ms"]
        assert "before_replay_ms" not in row
    assert data["profile"]
    assert all(entry["calls"] > 0 for entry in data["profile"])
    goal = data["goal"]
    assert goal["limit"] == 100.0
    assert goal["value"] == max(r["replay_ms"] for r in rows)
    assert isinstance(goal["met"], bool)
    assert "journal replay in a new process" in stdout
    assert "goal: replay of 30 patches" in stdout


def test_switch_steps(tmp_path: Path) -> None:
    stdout, data = run("switch_steps", tmp_path)
    check_environment(data, "switch_steps")
    assert data["sizes"] == [1, 10]
    assert [r["targets"] for r in data["runs"]] == [1, 10]
    for row in data["runs"]:
        assert row["samples"] == 4
        for part in ("prep", "step_1", "flip", "step_3", "whole", "one_run"):
            figures = row[f"{part}_us"]
            assert 0 < figures["median"] <= figures["p99"], (row["targets"], part)
        assert row["ratio"] > 0
    assert [g["what"] for g in data["goals"]] == ["whole switch, 10 targets, us (median)"]
    assert "the switch in steps" in stdout
