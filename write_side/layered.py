"""A dict whose copies share the entries that neither has changed: how a task list
holds its tasks, so that copying a list costs about the square root of its size.

The repository hands each command a copy of the cached list (a command that fails, or
whose save fails, must leave the cached list as it was), and a dict copies, and later
frees, in time proportional to its size: a user of 50,000 tasks paid about 3 ms for
every command, under the user's lock, holding the GIL that every other request needs.

A ``LayeredDict`` holds its entries in two layers: a base dict, which is never changed
once it is shared, and the changes made since (an entry set, or ``_DELETED``). A copy
shares the base and copies the changes alone. Once the changes outgrow
``32 + 4 * sqrt(len(base))`` entries they are merged into a new base (a C-level copy
of the old one, then the changes), which this dict alone holds until it is copied;
copies made before keep the old base. So a copy costs O(sqrt(n)), and a change O(1)
amortised (a merge of n entries every sqrt(n) changes).

It keeps a dict's order: an entry changed stays where it was, a new one comes last,
and one deleted then set again comes last too. Reading the whole (``values()``,
``items()``, iterating) merges first, then reads the base at C speed.

Like a dict read and changed by several threads without a lock, it is not safe to
change from two threads at once; a task list is changed by one command at a time
(the command runner's per-user lock, the repository's fast-forward lock).
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, KeysView, Mapping, MutableMapping, ValuesView
from math import isqrt
from typing import Any, Final, TypeVar, cast

K = TypeVar("K")
V = TypeVar("V")


class _Deleted:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<deleted>"


_DELETED: Final = _Deleted()
_ABSENT: Final = object()


class LayeredDict(MutableMapping[K, V]):
    """A mutable mapping in a dict's order whose ``copy()`` shares the unchanged entries."""

    __slots__ = ("_base", "_changes", "_size")

    def __init__(self, entries: Mapping[K, V] | None = None) -> None:
        # A copy of its own: a base must never change once this dict holds it.
        self._base: dict[K, V] = dict(entries) if entries else {}
        self._changes: dict[K, V | _Deleted] = {}
        self._size = len(self._base)

    def copy(self) -> LayeredDict[K, V]:
        clone: LayeredDict[K, V] = LayeredDict.__new__(LayeredDict)
        clone._base = self._base
        clone._changes = dict(self._changes)
        clone._size = self._size
        return clone

    __copy__ = copy

    def __getitem__(self, key: K) -> V:
        value = self._changes.get(key, _ABSENT)
        if value is _ABSENT:
            return self._base[key]
        if value is _DELETED:
            raise KeyError(key)
        return cast(V, value)

    def get(self, key: K, default: Any = None) -> Any:
        value = self._changes.get(key, _ABSENT)
        if value is _ABSENT:
            return self._base.get(key, default)
        return default if value is _DELETED else value

    def __contains__(self, key: object) -> bool:
        value = self._changes.get(key, _ABSENT)  # type: ignore[arg-type]
        if value is _ABSENT:
            return key in self._base
        return value is not _DELETED

    def __setitem__(self, key: K, value: V) -> None:
        changed = self._changes.get(key, _ABSENT)
        if changed is _DELETED:
            # A dict puts an entry set again after its deletion last: out of the base's
            # order, where its old place still is.
            self.merged()
            changed = _ABSENT
        if changed is _ABSENT and key not in self._base:
            self._size += 1
        self._changes[key] = value
        self._bound()

    def __delitem__(self, key: K) -> None:
        changed = self._changes.get(key, _ABSENT)
        if changed is _DELETED or (changed is _ABSENT and key not in self._base):
            raise KeyError(key)
        if key in self._base:
            self._changes[key] = _DELETED
        else:
            del self._changes[key]
        self._size -= 1
        self._bound()

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[K]:
        return iter(self.merged())

    def keys(self) -> KeysView[K]:
        return self.merged().keys()

    def values(self) -> ValuesView[V]:
        return self.merged().values()

    def items(self) -> ItemsView[K, V]:
        return self.merged().items()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, LayeredDict):
            return self.merged() == other.merged()
        if isinstance(other, Mapping):
            return self.merged() == dict(other.items())
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"LayeredDict({self.merged()!r})"

    def merged(self) -> dict[K, V]:
        """The entries as one dict, in order: the base, once the changes are merged into
        a new one. Never to be changed: it may be shared (by this dict's copies)."""
        if not self._changes:
            return self._base
        merged = dict(self._base)
        for key, value in self._changes.items():
            if value is _DELETED:
                del merged[key]
            else:
                merged[key] = cast(V, value)
        self._base, self._changes = merged, {}
        return merged

    def _bound(self) -> None:
        if len(self._changes) > 32 + 4 * isqrt(len(self._base)):
            self.merged()
