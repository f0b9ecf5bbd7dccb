"""The server's two caches, each an LRU bounded in bytes: image embeddings and model-state snapshots.

Chat clients resend the whole conversation every turn. Image embeddings are kept by (mode, content hash),
so an image is encoded once; snapshots of sequence 0 (attention KV cache and Gated-DeltaNet state, which
cannot be rolled back in part) are kept at stable points, so a resent prefix is restored, not evaluated.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..runtime.units import Key, PictureLayout


@dataclass(frozen=True)
class EncodedImage:
    """One picture as the LM takes it: its units, and the embeddings of each image span by chunk index."""

    layout: PictureLayout
    embeddings: dict[int, np.ndarray]
    encode_s: float  # what encoding it cost, reported once per encode

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.embeddings.values())


class ByteLRU:
    """Least-recently-used entries up to `max_bytes` in all; an entry larger than the bound is not kept."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.nbytes = max_bytes, 0
        self._items: OrderedDict = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key):
        if key not in self._items:
            return None
        self._items.move_to_end(key)
        return self._items[key][0]

    def put(self, key, value, nbytes: int) -> None:
        self.pop(key)
        if nbytes > self.max_bytes:
            return
        self._items[key] = (value, nbytes)
        self.nbytes += nbytes
        while self.nbytes > self.max_bytes:
            _, (_, size) = self._items.popitem(last=False)
            self.nbytes -= size

    def pop(self, key) -> None:
        if key in self._items:
            self.nbytes -= self._items.pop(key)[1]

    def items(self):
        return [(k, v) for k, (v, _) in self._items.items()]

    def clear(self) -> None:
        self._items.clear()
        self.nbytes = 0


class StateCache:
    """Snapshots of sequence 0 keyed by the positions they hold; `best` finds the longest usable one."""

    def __init__(self, max_bytes: int) -> None:
        self.lru = ByteLRU(max_bytes)

    def __len__(self) -> int:
        return len(self.lru)

    @property
    def nbytes(self) -> int:
        return self.lru.nbytes

    def put(self, keys: tuple[Key, ...], state: bytes) -> None:
        self.lru.put(keys, state, len(state) + 16 * len(keys))  # the key tuple costs memory too

    def best(self, keys: Sequence[Key], limit: int) -> tuple[tuple[Key, ...], bytes] | None:
        """The longest snapshot whose keys start `keys`, holding at most `limit` positions, or None."""
        found = None
        for held, state in self.lru.items():
            if len(held) <= limit and (found is None or len(held) > len(found[0])) and tuple(keys[: len(held)]) == held:
                found = (held, state)
        if found is not None:
            self.lru.get(found[0])  # recently used
        return found

    def clear(self) -> None:
        self.lru.clear()
