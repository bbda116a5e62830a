"""What a quantization format is to awm: a packed module (its parts, the float shape they encode,
how to unpack them) and the Format base class whose rows check each part before it is read."""


from awm.errors import CheckpointError

FLOAT8 = ("F8_E4M3", "F8_E5M2", "float8_e4m3fn", "float8_e5m2")
FLOAT_STORAGE = ("F16", "BF16", "F32", "float16", "bfloat16", "float32")
INT32 = ("I32", "U32", "int32", "uint32")


def fp8_name(dtype):
    return "e5m2" if str(dtype).upper().replace("_", "").endswith("E5M2") else "e4m3"


class Module:
    """One quantized module: its parts by role, the float (out, in) shape they encode and how to
    turn them back into that weight. Some formats keep the shape in a small tensor of its own
    (`shape_part`, parsed by `parse_shape` the first time the shape is asked for)."""

    def __init__(self, prefix, parts, shape, unpack, rows=None, shape_part=None, parse_shape=None):
        self.prefix, self.parts, self._shape = prefix, parts, None if shape is None else tuple(shape)
        self.unpack = unpack            # read(role) -> float32 (out, in)
        self.rows = rows                # (read_rows(role, start, stop), start, stop) -> rows, where the packing allows it
        self.shape_part, self.parse_shape = shape_part, parse_shape
        self.read_part = None           # set by the store: read(role) of this module's parts

    @property
    def shape(self):
        if self._shape is None:
            self._shape = tuple(self.parse_shape(self.read_part(self.shape_part)))
        return self._shape


class Format:
    """A quantization format: label(), and module(prefix, tensors) for the modules it packs.
    `marker` is the suffix of the tensor whose presence says a module is packed."""

    marker = ".weight"

    def __init__(self, config, path):
        self.config, self.path = config, path

    def prefixes(self, tensors):
        """The modules this format packs: the names before the marker, where is_module agrees."""
        ends = [name[:-len(self.marker)] for name in tensors if name.endswith(self.marker)]
        return [prefix for prefix in ends if self.is_module(prefix, tensors)]

    def is_module(self, prefix, tensors):
        return True

    # --------------------------------------------------------------- helpers for the rows
    def need(self, tensors, name, dtypes=None, shape=None, what=None):
        """The TensorInfo of a required part, checked: present, of a stored dtype, of a shape."""
        info = tensors.get(name)
        if info is None:
            raise CheckpointError(self.path, f"{self.label()} checkpoint lacks tensor '{name}' ({what or 'a part of its packed weight'})")
        if dtypes and str(info.dtype) not in dtypes:
            raise CheckpointError(info.path, f"tensor '{name}' is stored as {info.dtype}; {self.label()} stores it as {' or '.join(dtypes[:2])}")
        if shape is not None and tuple(info.shape) != tuple(shape):
            raise CheckpointError(info.path, f"tensor '{name}' has shape {tuple(info.shape)}, but {self.label()} "
                                             f"of a {what} weight needs {tuple(shape)}")
        return info

    def bad(self, info, problem):
        return CheckpointError(info.path, f"tensor '{info.name}' {problem} ({self.label()})")


def check_bits(value, allowed, path, what):
    if value not in allowed:
        raise CheckpointError(path, f"{what} of {value!r} bits is not one awm reads (reads {', '.join(map(str, allowed))})")
    return value


def check_group(value, path, what):
    if value in (None, -1, 0):
        return -1
    if not isinstance(value, int) or value < 0:
        raise CheckpointError(path, f"{what} group size {value!r} is not a positive integer")
    return value
