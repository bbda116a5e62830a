"""A GGUF file's metadata and tensor table, parsed in one pass over its header.

The gguf package's reader builds a numpy view per metadata element: a vocabulary of 150,000
tokens and as many merges cost it over ten seconds per open. This parser reads the same header
(little-endian GGUF v2/v3) with plain byte arithmetic, and leaves string arrays undecoded until
asked for (merges never are). Tensors are numpy views of the memory-mapped file, shaped as the
gguf package shapes them, so its dequantizer reads them unchanged; the quantization types and
their block sizes are the package's own tables.
"""
import struct

import numpy as np

SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
NUMPY_SCALARS = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<?", 10: "<u8", 11: "<i8", 12: "<f8"}
STRING, ARRAY = 8, 9
DEFAULT_ALIGNMENT = 32
PLAIN_TYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "I8": np.int8, "I16": np.int16, "I32": np.int32, "I64": np.int64}


class GGUFFormatError(ValueError):
    """The header is not a well-formed GGUF header (the message says where)."""


class Strings:
    """An array of GGUF strings, decoded on first use."""

    def __init__(self, buffer, spans):
        self.buffer, self.spans, self._decoded = buffer, spans, None

    def decoded(self):
        if self._decoded is None:
            raw = bytes(self.buffer)
            self._decoded = [raw[start:stop].decode("utf-8") for start, stop in self.spans]
        return self._decoded


class Tensor:
    __slots__ = ("data", "data_offset", "n_bytes", "n_elements", "name", "shape", "tensor_type")

    def __init__(self, name, shape, tensor_type, n_elements, n_bytes, data_offset, data):
        self.name, self.shape, self.tensor_type = name, shape, tensor_type
        self.n_elements, self.n_bytes, self.data_offset, self.data = n_elements, n_bytes, data_offset, data


class GGUFFile:
    """fields: {key: value} (strings as str, arrays as lists); tensors: in file order."""

    def __init__(self, path):
        self.path = path
        self.data = np.memmap(path, mode="r")
        self.buffer = memoryview(self.data)
        self.position = 0
        self._values = {}
        magic, version, n_tensors, n_kv = self._unpack("<4sIQQ")
        if magic != b"GGUF":
            raise GGUFFormatError("not a GGUF file (bad magic)")
        if version not in (2, 3):
            raise GGUFFormatError(f"unsupported GGUF version {version} (a big-endian file reads as another number)")
        for _ in range(n_kv):
            key = self._string()
            (kind,) = self._unpack("<I")
            self._values[key] = self._value(kind)
        infos = [self._tensor_info() for _ in range(n_tensors)]
        alignment = self._values.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise GGUFFormatError(f"general.alignment {alignment!r} is not a power of two")
        start = -(-self.position // alignment) * alignment
        self.tensors = [self._tensor(start, *info) for info in infos]

    # ------------------------------------------------------------------ header parsing
    def _take(self, size):
        end = self.position + size
        if size < 0 or end > len(self.buffer):
            raise GGUFFormatError(f"header runs past the end of the file (at byte {self.position})")
        chunk = self.buffer[self.position:end]
        self.position = end
        return chunk

    def _unpack(self, layout):
        return struct.unpack(layout, self._take(struct.calcsize(layout)))

    def _string(self):
        (length,) = self._unpack("<Q")
        try:
            return bytes(self._take(length)).decode("utf-8")
        except UnicodeDecodeError:
            raise GGUFFormatError(f"a metadata string near byte {self.position} is not UTF-8") from None

    def _value(self, kind):
        if kind in SCALARS:
            return self._unpack(SCALARS[kind])[0]
        if kind == STRING:
            return self._string()
        if kind != ARRAY:
            raise GGUFFormatError(f"unknown metadata type {kind}")
        item_kind, count = self._unpack("<IQ")
        if item_kind in NUMPY_SCALARS:
            dtype = np.dtype(NUMPY_SCALARS[item_kind])
            return np.frombuffer(self._take(count * dtype.itemsize), dtype=dtype).tolist()
        if item_kind == STRING:
            return Strings(*self._string_spans(count))
        return [self._value(item_kind) for _ in range(count)]

    def _string_spans(self, count):
        """(the bytes of `count` consecutive strings, each one's (start, stop) in them)."""
        if count * 8 > len(self.buffer) - self.position:
            raise GGUFFormatError(f"an array of {count} strings cannot fit in the file")
        first, spans, buffer = self.position, [], self.buffer
        position = first
        for _ in range(count):
            if position + 8 > len(buffer):
                raise GGUFFormatError("a string array runs past the end of the file")
            (length,) = struct.unpack_from("<Q", buffer, position)
            spans.append((position + 8 - first, position + 8 + length - first))
            position += 8 + length
        if position > len(buffer):
            raise GGUFFormatError("a string array runs past the end of the file")
        self.position = position
        return buffer[first:position], spans

    def _tensor_info(self):
        name = self._string()
        (n_dims,) = self._unpack("<I")
        if n_dims > 8:
            raise GGUFFormatError(f"tensor '{name}' claims {n_dims} dimensions")
        dims = self._unpack(f"<{n_dims}Q")
        kind, offset = self._unpack("<IQ")
        return name, dims, kind, offset

    def _tensor(self, start, name, dims, kind, offset):
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
        from gguf.quants import quant_shape_to_byte_shape

        try:
            tensor_type = GGMLQuantizationType(kind)
        except ValueError:
            raise GGUFFormatError(f"tensor '{name}' has unknown GGMLQuantizationType {kind}") from None
        block, type_size = GGML_QUANT_SIZES[tensor_type]
        n_elements = int(np.prod(dims, dtype=np.float64)) if dims else 1
        if n_elements % block:
            raise GGUFFormatError(f"tensor '{name}' of {n_elements} values is not whole blocks of {block}")
        n_bytes = n_elements * type_size // block
        begin = start + offset
        if begin + n_bytes > len(self.data):
            raise GGUFFormatError(f"GGUF tensor '{name}' lies beyond the end of the file: truncated")
        shape = tuple(reversed(dims))
        plain = PLAIN_TYPES.get(tensor_type.name)
        if plain is not None:
            data = self.data[begin:begin + n_bytes].view(plain).reshape(shape)
        else:
            data = self.data[begin:begin + n_bytes].reshape(quant_shape_to_byte_shape(shape, tensor_type))
        return Tensor(name, np.array(dims, dtype=np.uint64), tensor_type, n_elements, n_bytes, begin, data)

    # ------------------------------------------------------------------ metadata
    def field(self, key, default=None):
        value = self._values.get(key, default)
        return value.decoded() if isinstance(value, Strings) else value

    def __contains__(self, key):
        return key in self._values
