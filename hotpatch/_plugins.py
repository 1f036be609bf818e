"""The plugin host: pluggy's manager, with failing plugins contained."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import pluggy

from hotpatch import _hookspecs

__all__ = ["PluginHost"]

log = logging.getLogger("hotpatch")


class PluginHost:
    """Registers plugins and calls their hooks one by one, so one failure stays local."""

    def __init__(self, plugins: Iterable[object] = (), *, entry_points: bool = False):
        self.manager = pluggy.PluginManager(_hookspecs.PROJECT)
        self.manager.add_hookspecs(_hookspecs)
        if entry_points:
            self.manager.load_setuptools_entrypoints(_hookspecs.PROJECT)
        for plugin in plugins:
            self.manager.register(plugin)

    def _impls(self, hook: str) -> list[pluggy.HookImpl]:
        caller: pluggy.HookCaller = getattr(self.manager.hook, hook)
        # pluggy's order: last registered first, as a hook call would run them.
        return list(reversed(caller.get_hookimpls()))

    def _name(self, impl: pluggy.HookImpl) -> str:
        # pluggy names a plugin registered without a name str(id(plugin)): say its class.
        if not impl.plugin_name or impl.plugin_name == str(id(impl.plugin)):
            return type(impl.plugin).__name__
        return impl.plugin_name

    def follows(self, *hooks: str) -> bool:
        """Does a plugin implement one of ``hooks``?"""
        return any(self._impls(hook) for hook in hooks)

    def notify(self, hook: str, **kwargs: Any) -> list[Any]:
        """Call ``hook`` on every plugin; a raising plugin is logged and skipped."""
        results: list[Any] = []
        for impl in self._impls(hook):
            try:
                result = impl.function(*[kwargs[name] for name in impl.argnames])
            except Exception:
                log.exception("plugin %s failed in %s; carrying on", self._name(impl), hook)
                continue
            if result is not None:
                results.append(result)
        return results

    def vetoes(self, **kwargs: Any) -> list[str]:
        """Reasons the plugins give to refuse a patch (``hotpatch_validate``)."""
        reasons: list[str] = []
        for impl in self._impls("hotpatch_validate"):
            try:
                result = impl.function(*[kwargs[name] for name in impl.argnames])
            except Exception as exc:
                log.warning("plugin %s raised in hotpatch_validate: %s", self._name(impl), exc)
                reasons.append(f"plugin {self._name(impl)} raised {type(exc).__name__}: {exc}")
                continue
            if result:
                reasons.append(f"plugin {self._name(impl)}: {result}")
        return reasons
