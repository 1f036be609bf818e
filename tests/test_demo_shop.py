"""The headline demo, shop_under_load, end to end; and its patches against the shop's code."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from types import ModuleType

import pytest

import hotpatch
from hotpatch.testing import check_patch_file

DEMOS = Path(__file__).resolve().parents[1] / "demos"
PATCHES = DEMOS / "shop_patches"
BUNDLE = PATCHES / "shop-1.1"


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# -- the demo, as `make demo` runs it -------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("shop-demo")
    run = subprocess.run(
        [sys.executable, str(DEMOS / "shop_under_load.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,  # a bound for a stuck demo: its steps have their own deadlines
        check=False,
        cwd=DEMOS.parent,
    )
    return run, out


@pytest.mark.e2e
def test_the_demo_passes_with_no_failed_or_refused_request(
    demo: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    run, _ = demo
    out = run.stdout
    assert run.returncode == 0, out + run.stderr
    assert "demo OK" in out
    assert "FAILED" not in out
    requests = re.search(
        r"requests\s+(\d+) sent in [\d.]+ s, (\d+) answered, (\d+) failed, (\d+) refused", out
    )
    assert requests, out
    sent, answered, failed, refused = map(int, requests.groups())
    assert sent > 100
    assert (answered, failed, refused) == (sent, 0, 0)


@pytest.mark.e2e
def test_the_demo_shows_the_fix_the_bad_patch_and_the_restart(
    demo: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    run, _ = demo
    out = run.stdout
    # Signed patches only: a key made with the real CLI, the patches signed with it.
    assert "$ hotpatch keygen --dir $TMP/keys --name ops" in out
    assert re.search(r"shop-1\.1\.zip\.sig\s+[0-9a-f]{16}", out), out
    assert "--trusted-keys $TMP/trusted" in out
    assert re.search(r"signature checked [\d.]+ ms", out), out
    # The bug, then the fix dropped into the supervisor's folder and applied live.
    assert "10 widgets cost 99.90: the bug" in out
    assert "outcome: applied 1.0.1 -> applied/shop-1.0.1.py.result.json" in out
    assert "10 widgets cost 89.91 now" in out
    # The bad patch, rolled back by the health gate in the shop.
    assert "outcome: applied 1.0.2 (hot): now on probation" in out
    assert re.search(r"the health gate rolled 1\.0\.2 back [\d.]+ ms after it went in", out)
    assert re.search(r"\n\s+[1-9]\d* orders were priced without the loyalty discount", out)
    # Release 1.1, an unplanned baseline, in through a memory-preserving restart.
    assert "outcome: applied 1.1 -> applied/shop-1.1.zip.result.json" in out
    restart = re.search(
        r"memory-preserving restart: process (\d+) -> (\d+), paused ([\d.]+) ms \(state complete\)",
        out,
    )
    assert restart, out
    assert restart[1] != restart[2]
    assert "(code 1.1)" in out
    assert re.search(r"pauses\s+[\d.]+ ms \(from the supervisor's status file\)", out), out
    assert "versions  1.0 -> 1.0.1 -> 1.0.2 -> 1.0.1 (1.0.2 rolled back) -> 1.1 (baseline)" in out
    ledger = re.search(
        r"the ledger .*?: (\d+) orders, revenue ([\d.]+);\n.*the load placed (\d+) orders worth "
        r"([\d.]+)",
        out,
    )
    assert ledger, out
    assert ledger[1] == ledger[3]
    assert ledger[2] == ledger[4]


@pytest.mark.e2e
def test_the_demo_writes_its_data_and_the_latency_plot(
    demo: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    run, out_dir = demo
    out = run.stdout
    data = json.loads((out_dir / "shop_under_load.json").read_text())
    sent = int(re.search(r"requests\s+(\d+) sent", out)[1])  # type: ignore[index]
    assert len(data["answers"]) == sent
    assert all(a["total"] is not None and not a["refused"] for a in data["answers"])
    events = {label: at for at, label in data["story"]["events"]}
    order = ["fix dropped", "1.0.1 applied", "1.0.2 applied", "1.0.2 rolled back"]
    order += ["1.1 bundle dropped", "1.1 serving"]
    assert sorted(order, key=events.__getitem__) == order
    assert data["story"]["pauses_s"]
    assert len(data["story"]["pids"]) == 2
    plot = out_dir / "shop_under_load.png"
    if has("matplotlib"):
        assert f"plot      {plot}" in out
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert "plot      none: matplotlib is not installed" in out
        assert not plot.exists()


# -- the shop's patches, against the shop's code ------------------------------------------


@pytest.fixture
def shop(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The shop's pricing module, imported from demos/ (and forgotten afterwards)."""
    monkeypatch.syspath_prepend(str(DEMOS))
    import shop.pricing

    yield shop.pricing
    for name in [m for m in sys.modules if m == "shop" or m.startswith("shop.")]:
        del sys.modules[name]


def test_the_fix_prices_ten_widgets_with_the_bulk_discount(shop: ModuleType) -> None:
    ten = lambda: shop.quote("widget", 10, Decimal(0))  # noqa: E731
    assert ten() == Decimal("99.90")
    check_patch_file(PATCHES / "shop-1.0.1.py")  # hot, and rolled back exactly
    registry = hotpatch.Registry("1.0")
    registry.apply(hotpatch.load_patch(PATCHES / "shop-1.0.1.py"))
    try:
        assert ten() == Decimal("89.91")
        assert shop.quote("widget", 9, Decimal(0)) == Decimal("89.91")  # 9 x 9.99, no bulk
    finally:
        registry.rollback(to="1.0")
    assert ten() == Decimal("99.90")


def test_the_bad_patch_passes_every_check_and_raises_for_silver_members(
    shop: ModuleType,
) -> None:
    check_patch_file(PATCHES / "shop-1.0.2.py")
    registry = hotpatch.Registry("1.0")
    registry.apply(hotpatch.load_patch(PATCHES / "shop-1.0.2.py"))
    try:
        assert shop.loyalty_discount("m12") == Decimal("0.05")
        assert shop.loyalty_discount("g7") == 0
        with pytest.raises(KeyError, match="silver"):
            shop.loyalty_discount("m7")
    finally:
        registry.rollback(to="1.0")
    assert shop.loyalty_discount("m7") == Decimal("0.05")


@pytest.fixture
def demo_module(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """``demos/shop_under_load.py`` imported as a module (its ``main`` is not run)."""
    monkeypatch.syspath_prepend(str(DEMOS))  # as when run as a script: its helpers import
    name = "shop_under_load_under_test"
    spec = importlib.util.spec_from_file_location(name, DEMOS / "shop_under_load.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[name]


def test_the_repository_keeps_only_what_release_1_1_changes() -> None:
    overrides = sorted(
        p.relative_to(BUNDLE).as_posix()
        for p in BUNDLE.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
    assert overrides == ["overrides/shop/__init__.py", "overrides/shop/pricing.py", "patch.toml"]
    for name in ("__init__.py", "pricing.py"):  # each override changes the file it replaces
        assert (BUNDLE / "overrides" / "shop" / name).read_text() != (
            DEMOS / "shop" / name
        ).read_text(), name


def test_the_built_bundle_is_the_shop_with_release_1_1_laid_over_it(
    demo_module: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tomllib

    archive = tmp_path / "shop-1.1.zip"
    changed = demo_module.build_bundle(BUNDLE, DEMOS / "shop", archive)
    assert changed == ["shop/__init__.py", "shop/pricing.py"]
    with zipfile.ZipFile(archive) as bundle:
        names = bundle.namelist()
        assert len(names) == len(set(names))
        contents = {name: bundle.read(name) for name in names}
    toml = tomllib.loads(contents["patch.toml"].decode())
    assert contents["patch.toml"] == (BUNDLE / "patch.toml").read_bytes()
    assert toml["patch"]["version"] == "1.1"
    assert toml["patch"]["kind"] == "unplanned-baseline"
    root = toml["code"]["root"]
    # The whole code tree: every file of demos/shop, the changed ones from overrides/.
    shop = {
        p.relative_to(DEMOS).as_posix(): p
        for p in (DEMOS / "shop").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }
    assert {"shop/service.py", "shop/__main__.py"} <= set(shop)
    assert set(names) == {"patch.toml", *(f"{root}/{name}" for name in shop)}
    for name, path in shop.items():
        override = BUNDLE / "overrides" / name
        expected = override if name in changed else path
        assert contents[f"{root}/{name}"] == expected.read_bytes(), name
    # Unpacked, it is release 1.1: the fix in the shipped code.
    with zipfile.ZipFile(archive) as bundle:
        bundle.extractall(tmp_path / "bundle")
    monkeypatch.syspath_prepend(str(tmp_path / "bundle" / root))
    try:
        import shop as released
        import shop.pricing

        assert released.__file__ is not None
        assert Path(released.__file__).is_relative_to(tmp_path)
        assert released.CODE == "1.1"
        assert shop.pricing.quote("widget", 10, Decimal(0)) == Decimal("89.91")
        assert shop.pricing.quote("widget", 9, Decimal(0)) == Decimal("89.91")
    finally:
        for name in [m for m in sys.modules if m == "shop" or m.startswith("shop.")]:
            del sys.modules[name]
    assert "qty > BULK_QTY" in (DEMOS / "shop" / "pricing.py").read_text()  # 1.0: the bug
