"""Private names (``self.__x``) in replacements: Python mangles them by the class a def is
written in, so a replacement must be written where the target was, or be refused.

In ``class Acct`` the compiler turns ``self.__secret`` into ``self._Acct__secret``;
written at a patch file's top level it stays ``self.__secret``, an attribute no
instance has. Before, such a patch went in hot and every call of the patched
method failed (or read another attribute): a silent wrong result.
"""

from __future__ import annotations

from refusals import load, refused

ACCT = """
class Acct:
    def __init__(self):
        self.__secret = 42
        self._Fixes__secret = "another class's"

    def reveal(self):
        return self.__secret

    def later(self):
        def inner():
            return self.__secret
        return inner

def plain():
    return "plain"
"""


def test_a_method_written_at_top_level_reading_a_private_name_is_refused(
    make_module, write_patch, registry
):
    mod = make_module(ACCT)
    acct = mod.Acct()
    patch = load(
        write_patch,
        f"""
        @patch.replace("{mod.__name__}:Acct.reveal")
        def reveal(self):
            return self.__secret + 1
        """,
    )
    msg = refused(registry, patch)
    assert f"{mod.__name__}:Acct.reveal" in msg
    assert "__secret" in msg
    assert "_Acct__secret" in msg
    assert "in a class named Acct or _Acct" in msg  # the way in
    assert acct.reveal() == 42  # the running code is untouched


def test_a_method_written_in_a_class_of_the_targets_name_goes_in_hot(
    make_module, write_patch, registry
):
    mod = make_module(ACCT)
    acct = mod.Acct()
    reveal = acct.reveal  # a reference taken before the patch
    for holder in ("Acct", "_Acct", "__Acct"):  # mangled alike: leading underscores go
        patch = load(
            write_patch,
            f"""
            class {holder}:
                @patch.replace("{mod.__name__}:Acct.reveal")
                def reveal(self):
                    return self.__secret + 1
            """,
        )
        assert registry.check(patch).hot, holder
        registry.apply(patch)
        assert reveal() == 43, holder
        registry.rollback()
        assert reveal() == 42


def test_a_method_written_in_a_class_of_another_name_is_refused(make_module, write_patch, registry):
    mod = make_module(ACCT)
    patch = load(
        write_patch,
        f"""
        class Fixes:
            @patch.replace("{mod.__name__}:Acct.reveal")
            def reveal(self):
                return self.__secret
        """,
    )
    msg = refused(registry, patch)
    assert "_Fixes__secret" in msg
    assert "_Acct__secret" in msg
    assert mod.Acct().reveal() == 42  # not "another class's"


def test_a_nested_function_of_a_method_reading_a_private_name_is_refused(
    make_module, write_patch, registry
):
    mod = make_module(ACCT)
    inner = mod.Acct().later()  # made before the patch
    patch = load(
        write_patch,
        f"""
        @patch.replace("{mod.__name__}:Acct.later.<locals>.inner")
        def inner():
            return self.__secret + 1
        """,
    )
    msg = refused(registry, patch)
    assert "_Acct__secret" in msg
    assert inner() == 42


def test_a_module_function_written_in_a_class_reading_a_private_name_is_refused(
    make_module, write_patch, registry
):
    mod = make_module(ACCT + "\n__token = 'module private'\n\ndef token():\n    return __token\n")
    patch = load(
        write_patch,
        f"""
        class Helpers:
            @patch.replace("{mod.__name__}:token")
            def token():
                return __token + "!"
        """,
    )
    msg = refused(registry, patch)
    assert "_Helpers__token" in msg
    assert mod.token() == "module private"


def test_names_python_does_not_mangle_go_in_hot(make_module, write_patch, registry):
    mod = make_module(ACCT + "\n__token = 'module private'\n\ndef token():\n    return __token\n")
    patch = load(
        write_patch,
        f"""
        @patch.replace("{mod.__name__}:token")
        def token():
            return __token + "!"  # top level in both: no class mangles it

        @patch.replace("{mod.__name__}:Acct.__init__")
        def __init__(self):  # dunder names and keywords are never mangled
            self.__dict__.update(_Acct__secret=7, _Fixes__secret="other")
            dict(__kw=1)
        """,
    )
    assert registry.check(patch).hot
    registry.apply(patch)
    assert mod.token() == "module private!"
    assert mod.Acct().reveal() == 7


def test_a_class_patch_of_another_name_reading_a_private_name_is_refused(
    make_module, write_patch, registry
):
    mod = make_module(ACCT)
    patch = load(
        write_patch,
        f"""
        @patch.replace_class("{mod.__name__}:Acct")
        class AcctFix:
            def reveal(self):
                return self.__secret + 1
        """,
    )
    msg = refused(registry, patch)
    assert "_AcctFix__secret" in msg
    assert "_Acct__secret" in msg
