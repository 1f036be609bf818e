"""load_patch: refusals with their causes, isolation from the service's modules, tracebacks."""

from __future__ import annotations

import hashlib
import importlib.util
import linecache
import sys
import traceback
import types
from collections.abc import Callable
from pathlib import Path

import pytest

import hotpatch
from hotpatch._loader import MODULE_PREFIX, load_patch_source, load_patch_text

HEADER = "from hotpatch import Patch\npatch = Patch(version='1.0.1', baseline='1.0')\n"


def refused(path: Path, *expected: str, **options: int) -> hotpatch.VerificationFailed:
    """Load ``path``, expect VerificationFailed naming the file and ``expected``; nothing kept."""
    modules = set(sys.modules)
    with pytest.raises(hotpatch.VerificationFailed) as info:
        hotpatch.load_patch(path, **options)
    message = str(info.value)
    assert path.name in message
    for word in expected:
        assert word in message, f"{word!r} not in {message!r}"
    assert not [m for m in set(sys.modules) - modules if m.startswith(MODULE_PREFIX)]
    return info.value


def write_bytes(write_patch: Callable[..., Path], data: bytes) -> Path:
    path = write_patch("")
    path.write_bytes(data)
    return path


# -- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"", b"   \n\n\t\n"])
def test_an_empty_file_is_refused(write_patch, content):
    refused(write_bytes(write_patch, content), "is empty", "write a Patch(...)")


def test_a_file_that_is_not_utf8_is_refused(write_patch):
    data = HEADER.encode() + b"# caf\xe9\n"
    refused(write_bytes(write_patch, data), "not UTF-8", f"byte {len(HEADER) + 5}")


def test_a_syntax_error_names_the_line(write_patch):
    path = write_patch(HEADER + "\n\ndef broken(:\n    pass\n")
    err = refused(path, "syntax error", "line 5")
    assert err.__cause__ is None


def test_an_import_error_names_the_exception(write_patch):
    path = write_patch("import no_such_module_for_hotpatch_tests\n" + HEADER)
    err = refused(path, "failed to import", "ModuleNotFoundError", "no_such_module_for")
    assert isinstance(err.__cause__, ModuleNotFoundError)


def test_an_exception_at_import_is_refused(write_patch):
    path = write_patch(HEADER + "raise RuntimeError('not today')\n")
    refused(path, "failed to import", "RuntimeError: not today")


@pytest.mark.parametrize(("call", "shown"), [("sys.exit()", "None"), ("sys.exit(3)", "3")])
def test_sys_exit_at_import_is_refused_not_obeyed(write_patch, call, shown):
    path = write_patch(f"import sys\n{HEADER}{call}\n")
    refused(path, f"calls sys.exit({shown})", "remove it")


def test_a_file_without_a_patch_is_refused(write_patch):
    refused(write_patch("def f():\n    return 1\n"), "declares no Patch", "exactly one")


def test_a_file_with_two_patches_is_refused(write_patch):
    text = HEADER + "other = Patch(version='1.0.2', baseline='1.0')\n"
    refused(write_patch(text), "declares 2 Patch objects", "exactly one")


def test_one_patch_under_two_names_is_one_patch(write_patch):
    patch = hotpatch.load_patch(write_patch(HEADER + "alias = patch\n"))
    assert patch.version == "1.0.1"


def test_the_size_limit(write_patch):
    path = write_patch(HEADER)
    size = path.stat().st_size
    assert hotpatch.load_patch(path, max_bytes=size).version == "1.0.1"
    refused(path, f"{size} bytes", f"limit of {size - 1}", "raise the limit", max_bytes=size - 1)


def test_a_missing_file_is_refused(tmp_path):
    refused(tmp_path / "gone.py", "cannot be read")


# -- what a load leaves behind ---------------------------------------------------------------


def test_the_source_travels_with_the_patch(write_patch):
    path = write_patch(HEADER)
    patch = hotpatch.load_patch(path)
    assert patch.source is not None
    assert patch.source.path == str(path)
    assert patch.source.text == HEADER
    assert patch.source.sha256 == hashlib.sha256(HEADER.encode()).hexdigest() == patch.sha256
    assert patch.source.filename.startswith(f"<hotpatch {path.name} ")
    assert linecache.getlines(patch.source.filename) == HEADER.splitlines(True)


@pytest.mark.parametrize("name", ["json.py", "os.py", "hotpatch.py", "shop.pricing.py"])
def test_a_patch_never_takes_a_real_module_name(make_module, write_patch, name):
    mod = make_module("def f():\n    return 1\n")
    real = {n: sys.modules.get(n) for n in ("json", "os", "hotpatch", mod.__name__)}
    modules = set(sys.modules)
    text = HEADER + f"@patch.replace('{mod.__name__}:f')\ndef f():\n    return 2\n"
    patch = hotpatch.load_patch(write_patch(text, name=name))

    added = set(sys.modules) - modules
    assert added, "the patch module is kept where pickle and dataclasses can find it"
    assert all(m.startswith(MODULE_PREFIX) for m in added), added
    replacement = patch.replacements[0].new
    assert replacement.__module__.startswith(MODULE_PREFIX)
    assert replacement.__globals__["__name__"].startswith(MODULE_PREFIX)
    assert sys.modules[replacement.__module__].__dict__ is replacement.__globals__
    assert {n: sys.modules.get(n) for n in real} == real
    # nothing real can be imported under the prefix
    assert importlib.util.find_spec(MODULE_PREFIX.rstrip(".")) is None


def test_loading_never_changes_the_target_modules(make_module, write_patch):
    mod = make_module(
        """
        RATE = 2

        def price(x):
            return x * RATE

        class Cart:
            def total(self):
                return 0
        """
    )
    before = dict(vars(mod))
    cart_before = dict(vars(mod.Cart))
    code = mod.price.__code__
    text = HEADER + (
        f"import {mod.__name__} as target\n"
        "RATE = 3\n"
        "HELPER = object()\n"
        f"@patch.replace('{mod.__name__}:price')\n"
        "def price(x):\n    return x * RATE + 1\n"
        f"@patch.replace_class('{mod.__name__}:Cart')\n"
        "class Cart:\n    def total(self):\n        return 1\n"
    )
    patch = hotpatch.load_patch(write_patch(text))
    assert len(patch.replacements) == 2
    assert vars(mod) == before
    assert all(vars(mod)[k] is v for k, v in before.items())
    assert dict(vars(mod.Cart)) == cart_before
    assert mod.price.__code__ is code
    assert mod.price(1) == 2


def test_a_failed_load_forgets_its_module(write_patch):
    path = write_patch(HEADER + "raise ValueError('late')\n")
    modules = set(sys.modules)
    with pytest.raises(hotpatch.VerificationFailed):
        hotpatch.load_patch(path)
    assert set(sys.modules) == modules


def test_loading_the_same_content_twice_gives_equal_but_separate_patches(write_patch):
    path = write_patch(HEADER)
    first, second = hotpatch.load_patch(path), hotpatch.load_patch(path)
    assert first is not second
    assert first.sha256 == second.sha256


def test_load_patch_source_reads_bytes_and_names_them_by_path():
    patch = load_patch_source(HEADER.encode(), path="/somewhere/else/fix.py")
    assert patch.source is not None
    assert patch.source.path == "/somewhere/else/fix.py"
    with pytest.raises(hotpatch.VerificationFailed, match=r"patch file fix\.py is empty"):
        load_patch_source(b"", path="/somewhere/else/fix.py")


# -- tracebacks ------------------------------------------------------------------------------


def test_tracebacks_show_the_patch_source_even_after_the_file_is_gone(
    make_module, write_patch, registry
):
    mod = make_module("def price(x):\n    return x\n")
    path = write_patch(
        HEADER
        + f"@patch.replace('{mod.__name__}:price')\n"
        + "def price(x):\n"
        + "    total = x * 2\n"
        + "    raise ValueError(f'bad price {total}')  # the patch's own line\n"
    )
    patch = hotpatch.load_patch(path)
    registry.apply(patch)
    path.unlink()
    linecache.checkcache()  # what a long-running process does now and then

    with pytest.raises(ValueError, match="bad price 4") as info:
        mod.price(2)
    text = "".join(traceback.format_exception(info.value))
    assert patch.source is not None
    assert f'File "{patch.source.filename}", line 6, in price' in text
    assert "raise ValueError(f'bad price {total}')  # the patch's own line" in text
    # frames of the service's own code still point at the service's file
    assert __file__ in text


def test_tracebacks_of_forward_mode_show_the_patch_source(make_module, write_patch, registry):
    mod = make_module("def price(x):\n    return x\n")
    path = write_patch(
        HEADER.replace(")\n", ", signature_change=True)\n")
        + f"@patch.replace('{mod.__name__}:price')\n"
        + "def price(x, y):\n"
        + "    raise KeyError('in the forward replacement')\n"
    )
    patch = hotpatch.load_patch(path)
    registry.apply(patch)
    path.unlink()
    with pytest.raises(KeyError) as info:
        mod.price(1, 2)
    text = "".join(traceback.format_exception(info.value))
    assert "raise KeyError('in the forward replacement')" in text
    assert "<hotpatch trampoline" in text  # the one extra frame says what it is


def test_module_type_of_the_patch_module(write_patch):
    patch = hotpatch.load_patch(write_patch(HEADER + "def helper():\n    return 1\n"))
    assert patch.source is not None
    module = next(
        m
        for name, m in sys.modules.items()
        if name.startswith(MODULE_PREFIX) and m.__dict__.get("patch") is patch
    )
    assert isinstance(module, types.ModuleType)
    assert module.__file__ == patch.source.path


# -- a replay's load: the text the journal has checked against its sha256 ----------------------


@pytest.mark.parametrize(
    "path", ["p.py", "/srv/patches/fix.py", "fix.py/", "a/fix.py/.", "a/b/..", ".", "", "a//p.py"]
)
def test_a_patch_is_named_by_its_path_as_pathlib_names_it(path):
    data = (HEADER + "X = 1\n").encode()
    patch = load_patch_source(data, path=path)
    sha = hashlib.sha256(data).hexdigest()
    assert patch.source is not None
    assert patch.source.filename == f"<hotpatch {Path(path).name} {sha[:12]}>"
    assert patch.source.path == path


def test_loading_the_text_is_loading_its_bytes():
    text = HEADER + "@patch.replace('m:f')\ndef f():\n    return 'é'\n"
    data = text.encode()
    sha = hashlib.sha256(data).hexdigest()
    from_text = load_patch_text(text, sha256=sha, path="/p/fix.py")
    from_bytes = load_patch_source(data, path="/p/fix.py")
    assert from_text.source == from_bytes.source
    assert from_text.version == from_bytes.version == "1.0.1"
    assert from_text.replacements[0].new() == "é"


@pytest.mark.parametrize("content", ["", " \n\t\r\x0b\x0c"])
def test_an_empty_text_is_refused_as_empty_bytes_are(content):
    for load in (
        lambda: load_patch_source(content.encode(), path="fix.py"),
        lambda: load_patch_text(content, sha256="0" * 64, path="fix.py"),
    ):
        with pytest.raises(hotpatch.VerificationFailed, match=r"fix\.py is empty"):
            load()


def test_a_text_of_unicode_spaces_is_not_empty_but_does_not_compile():
    # bytes.strip() strips ASCII whitespace only: the text is refused for what it holds.
    content = "\u00a0\u2003\n"
    for load in (
        lambda: load_patch_source(content.encode(), path="fix.py"),
        lambda: load_patch_text(content, sha256="0" * 64, path="fix.py"),
    ):
        with pytest.raises(hotpatch.VerificationFailed, match=r"fix\.py has a syntax error"):
            load()
