"""Local sparse copies of remote files: each has its true size on disk, and only the byte
ranges fetched so far hold data.

The readers memory-map and parse these copies exactly like downloaded files. A sidecar
records which ranges hold real bytes, and a range is recorded only after every one of its
bytes was written: a transfer killed or cut short leaves nothing a later run would trust.
"""
import fcntl
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from awm.atomic import write_text_atomic
from awm.errors import CheckpointError

# Ranges closer than this are fetched as one request (alignment padding, neighbouring small
# tensors); large ranges are split so several connections share them.
MERGE_GAP = 4 * 1024
CHUNK_BYTES = 32 * 1024 * 1024
PARALLEL_REQUESTS = 4


def merge(ranges, gap=0):
    """Sorted, non-overlapping [start, stop) ranges; neighbours within `gap` bytes joined."""
    merged = []
    for start, stop in sorted(r for r in ranges if r[1] > r[0]):
        if merged and start <= merged[-1][1] + gap:
            merged[-1][1] = max(merged[-1][1], stop)
        else:
            merged.append([start, stop])
    return [tuple(r) for r in merged]


def subtract(wanted, present):
    """The parts of [start, stop) ranges in `wanted` that no range in `present` covers."""
    missing = []
    for start, stop in merge(wanted):
        for have_start, have_stop in present:
            if have_stop <= start or have_start >= stop:
                continue
            if have_start > start:
                missing.append((start, have_start))
            start = max(start, have_stop)
            if start >= stop:
                break
        if start < stop:
            missing.append((start, stop))
    return missing


def split(ranges, size=CHUNK_BYTES):
    return [(a, min(a + size, stop)) for start, stop in ranges for a in range(start, stop, size)]


class SparseFile:
    """One remote file's local copy plus the record of which of its bytes are real."""

    def __init__(self, path, size):
        self.path, self.size = path, size
        self._descriptor = None
        self._descriptor_lock = threading.Lock()
        self.sidecar = os.path.join(os.path.dirname(path), ".ranges", os.path.basename(path) + ".json")
        os.makedirs(os.path.dirname(self.sidecar), exist_ok=True)
        self._create()

    def _create(self):
        """A file of the true size with no data blocks; never replaces one another process fills."""
        if os.path.isfile(self.path) and os.path.getsize(self.path) == self.size:
            return
        if os.path.exists(self.path):          # wrong size: not ours to trust
            os.remove(self.path)
            self._forget()
        temporary = f"{self.path}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(temporary, "wb") as handle:
            handle.truncate(self.size)
        try:
            os.link(temporary, self.path)
        except FileExistsError:
            pass
        finally:
            os.remove(temporary)

    def _forget(self):
        if os.path.exists(self.sidecar):
            os.remove(self.sidecar)

    def present(self):
        try:
            with open(self.sidecar, encoding="utf-8") as handle:
                record = json.load(handle)
            if record.get("size") != self.size:
                return []
            return merge((int(a), int(b)) for a, b in record["ranges"] if 0 <= int(a) <= int(b) <= self.size)
        except (OSError, ValueError, KeyError, TypeError):
            return []                          # no record (or a damaged one): fetch again

    def missing(self, ranges):
        return subtract(ranges, self.present())

    def write(self, position, data):
        """Bytes at their place in the copy (positional writes: threads may share the descriptor)."""
        try:
            with self._descriptor_lock:
                if self._descriptor is None:
                    self._descriptor = os.open(self.path, os.O_WRONLY)
            view = memoryview(data)
            while view:
                written = os.pwrite(self._descriptor, view, position)
                view, position = view[written:], position + written
        except OSError as err:
            raise CheckpointError(self.path, f"cannot write to the Hub cache ({err.strerror or err})") from None

    def record(self, start, stop):
        """Mark [start, stop) as holding real bytes: under a lock, atomically replaced."""
        with open(self.sidecar + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            ranges = merge(self.present() + [(start, stop)])
            write_text_atomic(self.sidecar, json.dumps({"size": self.size, "ranges": ranges}))


class RangeFetcher:
    """Fills SparseFiles from a source of byte ranges: ``transfer(name, start, stop, write)``
    streams bytes [start, stop) of a remote file to ``write(position, data)``."""

    def __init__(self, transfer):
        self.transfer = transfer
        self.fetched_bytes = 0
        self._lock = threading.Lock()

    def fill(self, jobs, progress=None):
        """jobs: [(remote name, SparseFile, [(start, stop), ...])]; fetches what is missing."""
        work = [(name, sparse, chunk) for name, sparse, ranges in jobs
                for chunk in split(merge(sparse.missing(ranges), MERGE_GAP))]
        if progress is not None:
            progress.total = (progress.total or 0) + sum(b - a for _, _, (a, b) in work)
            progress.refresh()
        if len(work) <= 1:
            for job in work:
                self._fetch(*job, progress)
            return
        with ThreadPoolExecutor(PARALLEL_REQUESTS) as pool:
            for future in [pool.submit(self._fetch, *job, progress) for job in work]:
                future.result()

    def _fetch(self, name, sparse, chunk, progress):
        def write(position, data):
            sparse.write(position, data)
            with self._lock:
                self.fetched_bytes += len(data)
                if progress is not None:
                    progress.update(len(data))

        self.transfer(name, chunk[0], chunk[1], write)
        sparse.record(*chunk)
