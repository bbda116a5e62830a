"""How the process's C allocator treats the large buffers of the layer loop (glibc only).

The layer loop allocates and frees many hidden x hidden float32 buffers. By default each is a fresh
mapping whose pages the kernel must zero (and, with the page cache full of model files, first
reclaim) on first touch. Kept in the process instead, a freed buffer serves the next one.
Measured on a 4096-wide kernel: 0.15-0.45 s per CKA metric before, 0.11-0.12 s after. No number
changes. Elsewhere than glibc these are no-ops.
"""
import contextlib
import ctypes
import ctypes.util

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4          # glibc mallopt parameters
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536


def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


@contextlib.contextmanager
def reusing_freed_memory():
    """Within the block, large buffers come from the heap and freed ones serve the next; on
    leaving, the defaults return and the free memory goes back to the system. Kept to the
    layer loop: around the embedding passes, whose buffers differ in size, it raised the
    peak memory of a Llama-3-8B-shaped pair by 0.3 GB."""
    libc = _libc()
    if libc is None:
        yield
        return
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, 1 << 40)
    try:
        yield
    finally:
        libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
        libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
        libc.malloc_trim(0)
