"""Lazy, validated access to the tensors of one checkpoint file set.

Three formats share one small interface (``TensorStore``): list names and shapes, read one
tensor, read a contiguous range of rows. Nothing is read until asked for, and every header
is checked against the file size before anything is allocated, because checkpoints come
from strangers.
"""
import json
import os
import pickle
import struct
import zipfile

import numpy as np
import torch
from safetensors import safe_open

from awm.errors import CheckpointError

# A safetensors header is JSON describing every tensor; even a 1T-parameter model with
# 100k tensors stays far below this. Anything larger is hostile or broken.
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024

SAFETENSORS_DTYPES = {  # dtype name -> bytes per element
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}


class TensorInfo:
    """Where one tensor lives and what it looks like."""

    __slots__ = ("name", "shape", "dtype", "path", "begin", "end")

    def __init__(self, name, shape, dtype, path, begin=None, end=None):
        self.name, self.shape, self.dtype, self.path = name, tuple(shape), dtype, path
        self.begin, self.end = begin, end      # its bytes in the file, where the format says

    def row_bytes(self, start, stop):
        """The file bytes holding rows [start, stop) (row-major storage)."""
        per_row = (self.end - self.begin) // self.shape[0] if self.shape and self.shape[0] else 0
        return self.begin + start * per_row, self.begin + stop * per_row


def no_fetch(path, start, stop):
    """Local files hold every byte already."""


def check_finite(tensor, path, name):
    """NaN or Inf in a weight makes every similarity meaningless: refuse it by name.

    Any NaN or Inf makes the sum non-finite, so a finite sum (one fast reduction) clears the
    tensor; otherwise (NaN, Inf, or merely a sum that overflowed) each element is checked."""
    if tensor.is_floating_point() and torch.isfinite(tensor.sum()):
        return tensor
    if not torch.isfinite(tensor).all():
        raise CheckpointError(path, f"tensor '{name}' contains NaN or Inf values")
    return tensor


# ----------------------------------------------------------------------------- safetensors
def read_safetensors_header(path):
    """Parse and validate a safetensors header; return {name: TensorInfo} and the data offset."""
    try:
        file_size = os.path.getsize(path)
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise CheckpointError(path, "not a safetensors file (shorter than its 8-byte header length)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > file_size - 8:
                raise CheckpointError(path, f"safetensors header length {header_len} exceeds the file size {file_size} (truncated or not safetensors)")
            if header_len > MAX_SAFETENSORS_HEADER:
                raise CheckpointError(path, f"safetensors header of {header_len} bytes is larger than the {MAX_SAFETENSORS_HEADER} allowed")
            raw = handle.read(header_len)
    except OSError as err:
        raise CheckpointError(path, f"cannot read: {err.strerror or err}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(path, f"safetensors header is not valid JSON ({err.__class__.__name__})") from None
    if not isinstance(header, dict):
        raise CheckpointError(path, "safetensors header is not a JSON object")
    data_size = file_size - 8 - header_len
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        tensors[name] = _validated_entry(path, name, entry, data_size, 8 + header_len)
    return tensors


def safetensors_header_length(prefix):
    """Bytes of the 8-byte length plus the JSON header, from the file's first 8 bytes."""
    return 8 + struct.unpack("<Q", prefix[:8])[0]


def _validated_entry(path, name, entry, data_size, data_start):
    if not isinstance(entry, dict):
        raise CheckpointError(path, f"tensor '{name}' has a malformed header entry")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in SAFETENSORS_DTYPES:
        raise CheckpointError(path, f"tensor '{name}' has unknown dtype {dtype!r}")
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise CheckpointError(path, f"tensor '{name}' has an invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise CheckpointError(path, f"tensor '{name}' has invalid data offsets {offsets!r}")
    begin, end = offsets
    if not 0 <= begin <= end:
        raise CheckpointError(path, f"tensor '{name}' has invalid data offsets {offsets!r}")
    if end > data_size:
        raise CheckpointError(path, f"tensor '{name}' ends at byte {end} beyond the data ({data_size} bytes): file truncated")
    expected = int(np.prod(shape, dtype=np.float64)) * SAFETENSORS_DTYPES[dtype]
    if end - begin != expected:
        raise CheckpointError(path, f"tensor '{name}' holds {end - begin} bytes but shape {shape} of {dtype} needs {expected}")
    return TensorInfo(name, shape, dtype, path, data_start + begin, data_start + end)


class SafetensorsStore:
    """Tensors of one or more safetensors files, read one at a time.

    Each read opens the file, copies the tensor (or the rows) out and closes it again, so the
    memory map never accumulates pages of tensors already used.
    """

    format_name = "safetensors"

    def __init__(self, files, fetch=no_fetch):
        self.tensors = {}
        for path in files:
            self.tensors.update(read_safetensors_header(path))
        self.files = list(files)
        self.fetch = fetch

    def _read(self, name, rows=None):
        info = self.tensors[name]
        self.fetch(info.path, *(info.row_bytes(*rows) if rows else (info.begin, info.end)))
        try:
            with safe_open(info.path, framework="pt") as handle:
                if rows is None:
                    tensor = handle.get_tensor(name)
                else:
                    tensor = handle.get_slice(name)[rows[0]:rows[1]]
        except Exception as err:  # the library's own messages are not one-liners with a path
            raise CheckpointError(info.path, f"cannot read tensor '{name}': {str(err).splitlines()[0] if str(err) else err.__class__.__name__}") from None
        return tensor

    def read(self, name):
        return self._read(name)

    def read_rows(self, name, start, stop):
        return self._read(name, (start, stop))


# ----------------------------------------------------------------------------- PyTorch .bin
def _load_bin(path):
    """torch.load restricted to tensors and plain containers: no code from the file runs."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()
        detail = next((line for line in first if "GLOBAL" in line or "Unsupported" in line), first[0] if first else "")
        raise CheckpointError(path, f"refused: the pickle asks for more than plain tensors ({detail.strip()[:160]}); nothing from it was executed") from None
    except Exception as err:
        raise CheckpointError(path, f"not a readable PyTorch checkpoint ({err.__class__.__name__}: {str(err).splitlines()[0][:160] if str(err) else ''})") from None


class TorchBinStore:
    """Tensors of pytorch_model*.bin files, loaded with weights_only=True and memory-mapped."""

    format_name = "pytorch-bin"

    def __init__(self, files, fetch=no_fetch):
        self.tensors = {}
        self.files = list(files)
        for path in files:
            state = self._state(path)
            for name, value in state.items():
                if isinstance(value, torch.Tensor):
                    self.tensors[name] = TensorInfo(name, value.shape, str(value.dtype).replace("torch.", ""), path)
            del state

    @staticmethod
    def _state(path):
        state = _load_bin(path)
        if not isinstance(state, dict):
            raise CheckpointError(path, "PyTorch checkpoint is not a dictionary of tensors")
        return state.get("state_dict", state) if "state_dict" in state and isinstance(state["state_dict"], dict) else state

    def read(self, name):
        return self._state(self.tensors[name].path)[name].clone()

    def read_rows(self, name, start, stop):
        return self._state(self.tensors[name].path)[name][start:stop].clone()


# ----------------------------------------------------------------------------- GGUF
GGUF_MAGIC = b"GGUF"
# The smallest possible encodings of one metadata entry and one tensor description; a header
# that claims more entries than the file could hold is rejected before anything is parsed.
MIN_GGUF_KV_BYTES = 8 + 4 + 1
MIN_GGUF_TENSOR_BYTES = 8 + 4 + 4 + 8


def check_gguf_header(path):
    """Cheap structural checks before the gguf package parses the file."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        head = handle.read(24)
    if len(head) < 4 or head[:4] != GGUF_MAGIC:
        raise CheckpointError(path, "not a GGUF file (bad magic)")
    if len(head) < 24:
        raise CheckpointError(path, "GGUF header truncated")
    version, n_tensors, n_kv = struct.unpack("<IQQ", head[4:24])
    if version not in (2, 3):
        raise CheckpointError(path, f"unsupported GGUF version {version}")
    if n_tensors * MIN_GGUF_TENSOR_BYTES + n_kv * MIN_GGUF_KV_BYTES > size:
        raise CheckpointError(path, f"GGUF header claims {n_tensors} tensors and {n_kv} metadata entries, more than the {size}-byte file can hold")


GGUF_SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
GGUF_STRING, GGUF_ARRAY = 8, 9


class NeedMoreBytes(Exception):
    """The prefix ends inside the header; ``needed`` is a lower bound on the bytes it takes."""

    def __init__(self, needed):
        super().__init__(needed)
        self.needed = needed


def gguf_header_length(prefix):
    """Where a GGUF file's metadata and tensor descriptions end, from a prefix of the file.

    Lets a remote reader fetch exactly the header before the gguf package parses it; raises
    NeedMoreBytes when the prefix is too short to tell.
    """
    position = 0

    def take(size):
        nonlocal position
        if position + size > len(prefix):
            raise NeedMoreBytes(position + size)
        position += size
        return prefix[position - size:position]

    def skip_string():
        (length,) = struct.unpack("<Q", take(8))
        take(length)

    def skip_value(kind):
        if kind in GGUF_SCALAR_BYTES:
            take(GGUF_SCALAR_BYTES[kind])
        elif kind == GGUF_STRING:
            skip_string()
        elif kind == GGUF_ARRAY:
            item_kind, count = struct.unpack("<IQ", take(12))
            if item_kind in GGUF_SCALAR_BYTES:
                take(count * GGUF_SCALAR_BYTES[item_kind])
            else:
                for _ in range(count):
                    skip_value(item_kind)
        else:
            raise ValueError(f"unknown GGUF metadata type {kind}")

    magic, _version, n_tensors, n_kv = struct.unpack("<4sIQQ", take(24))
    if magic != GGUF_MAGIC:
        raise ValueError("not a GGUF file (bad magic)")
    for _ in range(n_kv):
        skip_string()
        skip_value(struct.unpack("<I", take(4))[0])
    for _ in range(n_tensors):
        skip_string()
        (n_dims,) = struct.unpack("<I", take(4))
        take(8 * n_dims + 4 + 8)
    return position


def open_gguf(path):
    from awm.readers.gguf_file import GGUFFile, GGUFFormatError

    check_gguf_header(path)
    try:
        return GGUFFile(path)
    except GGUFFormatError as err:
        if "GGMLQuantizationType" in str(err):
            raise CheckpointError(path, f"unknown GGUF quant type ({str(err)[:80]})") from None
        if "truncated" in str(err):
            raise CheckpointError(path, str(err)) from None
        raise CheckpointError(path, f"malformed or truncated GGUF ({str(err)[:120]})") from None
    except Exception as err:
        raise CheckpointError(path, f"malformed or truncated GGUF ({err.__class__.__name__}: {str(err)[:120]})") from None


def gguf_field(reader, key, default=None):
    try:
        return reader.field(key, default)
    except Exception:
        raise CheckpointError(reader.path, f"GGUF metadata '{key}' is malformed") from None


class GGUFStore:
    """Tensors of one GGUF file (or a split set), dequantized on read with the gguf package."""

    format_name = "gguf"

    def __init__(self, files, fetch=no_fetch):
        self.files = list(files)
        self.fetch = fetch
        self.readers = [open_gguf(path) for path in files]
        self.tensors = {}
        self._raw = {}
        for path, reader in zip(files, self.readers):
            for tensor in reader.tensors:
                shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
                begin = int(tensor.data_offset)
                self.tensors[tensor.name] = TensorInfo(tensor.name, shape, tensor.tensor_type.name, path, begin, begin + int(tensor.n_bytes))
                self._raw[tensor.name] = tensor

    @property
    def metadata_reader(self):
        return self.readers[0]

    def _dequantize(self, name, data):
        import gguf

        tensor = self._raw[name]
        try:
            values = gguf.quants.dequantize(np.asarray(data), tensor.tensor_type)
        except NotImplementedError:
            raise CheckpointError(self.tensors[name].path, f"tensor '{name}' uses quant type {tensor.tensor_type.name}, which the gguf package cannot dequantize") from None
        except Exception as err:
            raise CheckpointError(self.tensors[name].path, f"tensor '{name}' cannot be dequantized ({err.__class__.__name__})") from None
        shape = self.tensors[name].shape
        rows = values.shape[0] if len(shape) > 1 else None
        values = values.reshape((rows,) + shape[1:] if rows else shape)
        return torch.from_numpy(np.array(values, dtype=np.float32))  # a private, writable copy

    def read(self, name):
        info = self.tensors[name]
        self.fetch(info.path, info.begin, info.end)
        return self._dequantize(name, self._raw[name].data)

    def read_rows(self, name, start, stop):
        info = self.tensors[name]
        self.fetch(info.path, *info.row_bytes(start, stop))
        return self._dequantize(name, self._raw[name].data[start:stop])
