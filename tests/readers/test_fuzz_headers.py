"""Random and mutated bytes thrown at the safetensors and GGUF readers.

Only the tool's own CheckpointError may come out, each case must finish quickly, and no
hostile header may make the process allocate more than a bounded amount of memory.
"""
import atexit
import os
import resource
import shutil
import struct
import tempfile

import factory
import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings
from safetensors.torch import save_file

from awm.errors import CheckpointError
from awm.readers.checkpoint_files import GGUFStore, read_safetensors_header

FUZZ = settings(max_examples=250, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture], derandomize=True)
MEMORY_GROWTH_LIMIT_KB = 512 * 1024


def valid_files():
    folder = tempfile.mkdtemp(prefix="awm-fuzz-")
    tensors = factory.random_llama_tensors(hidden=32, layers=1, heads=2, kv_heads=1, vocab=40)
    safetensors_path = os.path.join(folder, "seed.safetensors")
    save_file(tensors, safetensors_path)
    gguf_path = factory.write_gguf(os.path.join(folder, "seed.gguf"), tensors, 2, 1, factory.byte_level_tokens(40), "Q8_0", "F16")
    with open(safetensors_path, "rb") as a, open(gguf_path, "rb") as b:
        return a.read(), b.read(), folder


SAFETENSORS_SEED, GGUF_SEED, FOLDER = valid_files()
atexit.register(shutil.rmtree, FOLDER, ignore_errors=True)


def parse(reader, data, suffix):
    path = os.path.join(FOLDER, "case" + suffix)
    with open(path, "wb") as out:
        out.write(data)
    try:
        reader(path)
    except CheckpointError as err:
        assert str(err).startswith(path)


def read_gguf(path):
    store = GGUFStore([path])
    for name in list(store.tensors)[:3]:          # dequantizing must fail cleanly too
        store.read(name)


def mutations(seed):
    """A valid file with a few bytes overwritten (header region favoured), or cut short."""
    position = st.integers(0, len(seed) - 1)
    overwrite = st.tuples(st.lists(st.tuples(st.integers(0, min(len(seed), 600) - 1), st.binary(min_size=1, max_size=8)), min_size=1, max_size=4))
    big_number = st.tuples(st.integers(0, min(len(seed), 600) - 8), st.sampled_from([2 ** 63, 2 ** 40, 2 ** 32 - 1, 10 ** 9]))
    return st.one_of(
        position.map(lambda cut: seed[:cut]),
        overwrite.map(lambda edits: _apply(seed, edits[0])),
        big_number.map(lambda e: seed[:e[0]] + struct.pack("<Q", e[1]) + seed[e[0] + 8:]),
    )


def _apply(seed, edits):
    data = bytearray(seed)
    for at, chunk in edits:
        data[at:at + len(chunk)] = chunk
    return bytes(data[:len(seed)])


@pytest.fixture(scope="module", autouse=True)
def bounded_memory():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown < MEMORY_GROWTH_LIMIT_KB, f"peak memory grew by {grown} KB while fuzzing"


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_safetensors(data):
    parse(read_safetensors_header, data, ".safetensors")


@FUZZ
@given(mutations(SAFETENSORS_SEED))
def test_mutated_safetensors(data):
    parse(read_safetensors_header, data, ".safetensors")


@FUZZ
@given(st.binary(max_size=2048).map(lambda b: b"GGUF" + b))
def test_random_bytes_gguf(data):
    parse(read_gguf, data, ".gguf")


@FUZZ
@given(mutations(GGUF_SEED))
def test_mutated_gguf(data):
    parse(read_gguf, data, ".gguf")
