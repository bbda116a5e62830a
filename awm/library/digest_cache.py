"""Digests of the models a run needs, kept in memory within a budget and reused across pairs."""
from collections import Counter, OrderedDict

import psutil

from awm.comparison.digest import ModelDigest
from awm.errors import CheckpointError, ComparisonError

DEFAULT_CACHE_FRACTION = 0.4     # of physical RAM, for digests reused across pairs


class DigestCache:
    """Digests of the models a run needs, least recently used evicted beyond a memory budget.

    A model whose per-layer kernels fit a third of the budget keeps them, so all its pairs
    reuse one reading and one set of Gram products. Failures are remembered, not retried.
    """

    def __init__(self, device, budget_bytes, options, progress=False):
        self.device, self.budget, self.progress = device, budget_bytes, progress
        self.with_circuit, self.vocab_match, self.precision = options["with_circuit"], options["vocab_match"], options["precision"]
        self.entries = OrderedDict()
        self.failures = {}
        self.loads = Counter()

    def get(self, path, pinned=()):
        if path in self.failures:
            raise self.failures[path]
        if path in self.entries:
            self.entries.move_to_end(path)
            return self.entries[path]
        try:
            from awm.readers import open_model

            checkpoint = open_model(path, self.vocab_match, self.progress)
            keep = ModelDigest.layer_bytes(checkpoint, self.with_circuit) <= self.budget / 3
            digest = ModelDigest(checkpoint, self.device, keep, self.with_circuit, self.progress, self.precision)
        except (CheckpointError, ComparisonError) as err:
            self.failures[path] = err
            raise
        self.loads[path] += 1
        self.entries[path] = digest
        self._evict(keep=set(pinned) | {path})
        return digest

    def _evict(self, keep):
        while sum(d.size_bytes() for d in self.entries.values()) > self.budget:
            victim = next((p for p in self.entries if p not in keep), None)
            if victim is None:
                return
            del self.entries[victim]


def default_budget(cache_gb):
    if cache_gb is not None:
        return int(cache_gb * 1024 ** 3)
    return int(DEFAULT_CACHE_FRACTION * psutil.virtual_memory().total)


def reuse_order(pairs):
    """Visit pairs so that consecutive ones share a model where possible (fewer re-reads)."""
    remaining, ordered, current = list(pairs), [], set()
    while remaining:
        best = max(remaining, key=lambda p: len({p.path_a, p.path_b} & current))
        remaining.remove(best)
        ordered.append(best)
        current = {best.path_a, best.path_b}
    return ordered
