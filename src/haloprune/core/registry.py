"""A tiny name -> factory registry shared by models, penalties and methods.

Each package lists its entries in one place (``PENALTIES``, ``MODELS``, ``METHODS``); ``register`` adds
your own from outside (``@PENALTIES.register("mine")``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

from haloprune.core.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps a public name to a factory. ``REGISTRY[name](**kwargs)`` builds one; no per-name branches."""

    def __init__(self, kind: str, items: Mapping[str, Callable[..., T]] | None = None) -> None:
        self.kind = kind
        self._items: dict[str, Callable[..., T]] = dict(items or {})

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = factory
            return factory

        return deco

    def __getitem__(self, name: str) -> Callable[..., T]:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items))
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list[str]:
        return sorted(self._items)
