"""What a context's sequence holds, position by position, so that a new turn evaluates only what changed.

Each position has a key (units.py): the token id for text, (image content hash, chunk index, offset) for
an image embedding. A new prompt reuses the longest common prefix of keys. Going back means cutting the memory:
the attention KV cache can drop any suffix, but the recurrent (Gated-DeltaNet) state cannot, so the
recurrent state is saved at the point where the next turn will diverge (see ChatTemplate.shared_prefix)
and put back there; failing that the sequence is evaluated again from the start.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

from ..native import Context
from .units import Key


def common_prefix(a: Sequence[Key], b: Sequence[Key]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class SequenceCache:
    """The keys of what sequence 0 of `context` holds, and one saved recurrent state to roll back to."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.keys: list[Key] = []
        self.snapshot: tuple[int, bytes] | None = None  # (position, recurrent state before it)
        self.dirty = False  # an evaluation was cut short: the memory may hold more than `keys`

    def clear(self) -> None:
        self.context.clear()
        self.keys, self.snapshot, self.dirty = [], None, False

    def rewind(self, keys: Sequence[Key]) -> int:
        """Cut the memory back to the longest usable prefix of `keys`; returns the first position to evaluate.

        At least the last key is always left to evaluate: its logits choose the first reply token.
        """
        p = min(common_prefix(self.keys, keys), len(keys) - 1)
        if p == len(self.keys) and not self.dirty:
            return p
        if self.context.remove_from(p):
            self.keys = self.keys[:p]
        elif self.snapshot and self.snapshot[0] <= p and self._restore():
            self.keys = self.keys[: self.snapshot[0]]
        else:
            self.context.clear()
            self.keys = []
        self.dirty = False
        if self.snapshot and self.snapshot[0] > len(self.keys):
            self.snapshot = None
        return len(self.keys)

    def _restore(self) -> bool:
        pos, state = self.snapshot
        return self.context.restore_recurrent(state) and self.context.remove_from(pos)

    def save(self) -> None:
        """Remember the recurrent state at the current end of the sequence."""
        self.snapshot = (len(self.keys), self.context.save_recurrent())

    @contextmanager
    def extending(self, keys: Sequence[Key]):
        """Around one evaluation of `keys`: they count as held only if it completes."""
        self.dirty = True
        yield
        self.keys += keys
        self.dirty = False
