"""Name → object registries, one per kind (problems, methods), filled by
entry-point groups so other packages can add their own."""
from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """An unknown problem/method/... name; the message lists the valid ones."""

    def __str__(self) -> str:
        return str(self.args[0])


class Registry(Generic[T]):
    def __init__(self, kind: str, group: str) -> None:
        self.kind, self.group = kind, group
        self._items: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str, item: T) -> T:
        if name in self._items and self._items[name] is not item:
            raise ValueError(f"{self.kind} {name!r} is already registered ({self._items[name]!r})")
        self._items[name] = item
        return item

    def _load_entry_points(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for ep in entry_points(group=self.group):
            if ep.name not in self._items:
                self.register(ep.name, ep.load())

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._items)

    def get(self, name: str) -> T:
        if name not in self._items:
            self._load_entry_points()
        if name not in self._items:
            valid = ", ".join(self.names()) or "(none registered: is the package installed?)"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; valid {self.kind}s: {valid}")
        return self._items[name]

    def __contains__(self, name: Any) -> bool:
        return name in self.names()


PROBLEMS: Registry[Any] = Registry("problem", "pinn_lora.problems")
METHODS: Registry[Any] = Registry("method", "pinn_lora.methods")


def get_problem(name: str, **coefficients: Any):
    """The PDE family ``name`` at the given coefficients (source defaults otherwise)."""
    return PROBLEMS.get(name)(**coefficients)
