"""The last shipped bytes of recently changed files, bounded in memory.

A zstd delta against the previous version needs that version's bytes. Keeping every file would
double the daemon's memory, so this is an LRU with a byte budget; a file that fell out is
encoded by block ranges or whole instead, which is always correct, only larger.
"""

from __future__ import annotations

from collections import OrderedDict


class BaseCache:
    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self.size = 0
        self._items: OrderedDict[tuple[str, str], bytes] = OrderedDict()

    def get(self, root: str, path: str) -> bytes | None:
        key = (root, path)
        data = self._items.get(key)
        if data is not None:
            self._items.move_to_end(key)
        return data

    def put(self, root: str, path: str, data: bytes) -> None:
        self.discard(root, path)
        if len(data) > self.budget // 4:
            return
        self._items[(root, path)] = data
        self.size += len(data)
        while self.size > self.budget:
            _, dropped = self._items.popitem(last=False)
            self.size -= len(dropped)

    def discard(self, root: str, path: str) -> None:
        old = self._items.pop((root, path), None)
        if old is not None:
            self.size -= len(old)
