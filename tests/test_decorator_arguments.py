"""A replacement written under its target's decorators with other arguments.

Written under the decorators its target runs under, a replacement stands for the
function under them: the running wrappers keep applying, with what they were
made with. A fix that changes a decorator's argument (``@retry(3)`` to
``@retry(5)``, ``@lru_cache(maxsize=32)`` to ``maxsize=128``) would not change
it: before, such a patch went in hot and the running wrapper kept retrying 3
times, silently. Now it is refused, naming the argument and both values, and
the ways in. A decorator's own state (a call counter it keeps per function) is
not an argument: the same decorator goes in hot whatever that state holds.
"""

from __future__ import annotations

from refusals import load, refused

SERVICE = """
import functools

def retry(times, on=(ValueError,)):
    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            for _ in range(times):
                try:
                    return fn(*args, **kwargs)
                except on:
                    pass
            return f"gave up after {times}"
        return wrapper
    return deco

def counted(fn):
    count = 0
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        nonlocal count
        count += 1
        return fn(*args, **kwargs), count
    return wrapper

ATTEMPTS = []

@retry(3)
def flaky():
    ATTEMPTS.append(1)
    raise ValueError

@counted
def greet(name):
    return "hello " + name

@functools.lru_cache(maxsize=32)
def square(x):
    return x * x

def requires(role):
    def deco(fn):
        fn.required_role = role
        return fn
    return deco

@requires("user")
def delete_account(user):
    return "deleted"

@requires("user")
@counted
def rename_account(user):
    return "renamed"

def handle(user, action=None):
    action = action or delete_account
    if user["role"] != action.required_role:
        return "forbidden"
    return action(user)

class Client:
    @retry(2)
    def fetch(self):
        ATTEMPTS.append(2)
        raise ValueError
"""


def test_a_decorator_argument_changed_in_the_patch_is_refused(make_module, write_patch, registry):
    mod = make_module(SERVICE)
    patch = load(
        write_patch,
        f"""
        from {mod.__name__} import retry, ATTEMPTS

        @patch.replace("{mod.__name__}:flaky")
        @retry(5)
        def flaky():
            ATTEMPTS.append(1)
            raise ValueError
        """,
    )
    msg = refused(registry, patch)
    assert f"{mod.__name__}:flaky" in msg
    assert "retry.<locals>.deco.<locals>.wrapper" in msg
    assert "times" in msg
    assert "3" in msg
    assert "5" in msg
    assert "plain" in msg
    assert "baseline" in msg
    assert mod.flaky() == "gave up after 3"  # untouched


def test_a_keyword_argument_of_another_value_is_refused_too(make_module, write_patch, registry):
    mod = make_module(SERVICE)
    patch = load(
        write_patch,
        f"""
        from {mod.__name__} import retry, ATTEMPTS

        @patch.replace("{mod.__name__}:flaky")
        @retry(3, on=(ValueError, KeyError))
        def flaky():
            ATTEMPTS.append(1)
            raise ValueError
        """,
    )
    assert "'on'" in refused(registry, patch)


def test_the_same_arguments_go_in_hot_and_the_wrapper_applies_once(
    make_module, write_patch, registry
):
    mod = make_module(SERVICE)
    before = mod.flaky
    patch = load(
        write_patch,
        f"""
        from {mod.__name__} import retry, ATTEMPTS

        @patch.replace("{mod.__name__}:flaky")
        @retry(3, on=(ValueError,))
        def flaky():
            ATTEMPTS.append("new")
            raise ValueError
        """,
    )
    registry.apply(patch)
    assert before() == "gave up after 3"
    assert mod.ATTEMPTS == ["new"] * 3


def test_a_decorators_own_state_is_not_an_argument(make_module, write_patch, registry):
    mod = make_module(SERVICE)
    assert mod.greet("a") == ("hello a", 1)
    assert mod.greet("b") == ("hello b", 2)  # the running wrapper's count is 2
    patch = load(
        write_patch,
        f"""
        from {mod.__name__} import counted

        @patch.replace("{mod.__name__}:greet")
        @counted
        def greet(name):
            return "hi " + name
        """,
    )
    registry.apply(patch)
    assert mod.greet("c") == ("hi c", 3)  # the running wrapper, once, with its count


def test_a_cache_size_changed_in_the_patch_is_refused(make_module, write_patch, registry):
    mod = make_module(SERVICE)
    patch = load(
        write_patch,
        f"""
        import functools

        @patch.replace("{mod.__name__}:square")
        @functools.lru_cache(maxsize=128)
        def square(x):
            return x * x + 0
        """,
    )
    msg = refused(registry, patch)
    assert "maxsize" in msg
    assert "32" in msg
    assert "128" in msg


def test_a_method_under_a_changed_decorator_argument_is_refused_in_a_class_patch(
    make_module, write_patch, registry
):
    mod = make_module(SERVICE)
    patch = load(
        write_patch,
        f"""
        from {mod.__name__} import retry, ATTEMPTS

        @patch.replace_class("{mod.__name__}:Client")
        class Client:
            @retry(4)
            def fetch(self):
                ATTEMPTS.append(2)
                raise ValueError
        """,
    )
    msg = refused(registry, patch)
    assert f"{mod.__name__}:Client.fetch" in msg
    assert "times" in msg
    assert mod.Client().fetch() == "gave up after 2"


def test_an_attribute_a_decorator_sets_to_another_value_is_refused(
    make_module, write_patch, registry
):
    # A fix tightening who may call it: a restart would check "admin"; a hot patch
    # changes the code only, and the running function would keep "user".
    mod = make_module(SERVICE)
    patch = load(
        write_patch,
        f"""
        from {mod.__name__} import requires

        @patch.replace("{mod.__name__}:delete_account")
        @requires("admin")
        def delete_account(user):
            return "deleted!"
        """,
    )
    msg = refused(registry, patch)
    assert "'required_role'" in msg
    assert "'user'" in msg
    assert "'admin'" in msg
    assert mod.handle({"role": "user"}) == "deleted"  # untouched


def test_an_attribute_set_on_a_wrapper_to_another_value_is_refused(
    make_module, write_patch, registry
):
    mod = make_module(SERVICE)
    patch = load(
        write_patch,
        f"""
        from {mod.__name__} import requires, counted

        @patch.replace("{mod.__name__}:rename_account")
        @requires("admin")
        @counted
        def rename_account(user):
            return "renamed!"
        """,
    )
    assert "'required_role'" in refused(registry, patch)


def test_the_same_attribute_or_none_written_goes_in_hot(make_module, write_patch, registry):
    mod = make_module(SERVICE)
    patch = load(
        write_patch,
        f"""
        from {mod.__name__} import requires

        @patch.replace("{mod.__name__}:delete_account")
        @requires("user")
        def delete_account(user):
            return "deleted!"

        @patch.replace("{mod.__name__}:flaky")
        def flaky():
            return "plain: the running wrapper keeps retry(3)"
        """,
    )
    registry.apply(patch)
    assert mod.handle({"role": "user"}) == "deleted!"
    assert mod.delete_account.required_role == "user"


def test_the_arguments_of_a_cached_factory_are_compared_too(make_module, write_patch, registry):
    mod = make_module(SERVICE.replace("def retry(times", "@functools.cache\ndef retry(times"))
    patch = load(
        write_patch,
        f"""
        from {mod.__name__} import retry, ATTEMPTS

        @patch.replace("{mod.__name__}:flaky")
        @retry(4)
        def flaky():
            ATTEMPTS.append(1)
            raise ValueError
        """,
    )
    assert "'times'" in refused(registry, patch)
