"""Quantized Hugging Face checkpoints: which format a checkpoint uses, and a view of its tensors
in which every quantized module's packed parts appear as the one float weight they encode.

The format comes from the config (`quantization_config`, `quantize_config.json`, MLX's
`quantization`), never from tensor names alone; the names then say which modules are packed.
One row of FORMATS per `quant_method`. Every part is checked against the format, its bits and
groups before anything is read (a packed tensor whose shape disagrees, a missing scale or zero, a
`g_idx` out of range: one line naming the file and the tensor), and only the tensors a score
asks for are ever dequantized, in float32 (readers.dequantize).
"""
from awm.errors import CheckpointError
from awm.readers.compressed_tensors import CompressedTensors
from awm.readers.quant_layouts import AWQ, GPTQ, MLX, BitsAndBytes, ScaledFloat

# ----------------------------------------------------------------------------- the table
# quant_method -> its format. Anything else quantized is refused by name.
FORMATS = {
    "gptq": GPTQ,
    "awq": AWQ,
    "fp8": ScaledFloat,
    "fbgemm_fp8": ScaledFloat,
    "compressed-tensors": CompressedTensors,
    "bitsandbytes": BitsAndBytes,
    "mlx": MLX,
}


def quantization_of(raw, config, sidecar):
    """(quant_method, its settings) the config declares, or None for a full-precision model.
    `sidecar` is AutoGPTQ's quantize_config.json when the folder has one."""
    declared = raw.get("quantization_config") or config.get("quantization_config")
    if isinstance(raw.get("quantization"), dict) and not isinstance(declared, dict):
        return "mlx", raw["quantization"]              # mlx-lm writes `quantization` only
    if declared is None and sidecar is not None:
        declared = {"quant_method": "gptq", **sidecar}
    if declared is None:
        return None
    if not isinstance(declared, dict):
        return "unknown", {}
    method = str(declared.get("quant_method") or ("bitsandbytes" if declared.get("load_in_4bit") or declared.get("load_in_8bit") else "unknown")).lower()
    if method == "mlx" or (isinstance(raw.get("quantization"), dict) and method not in FORMATS):
        return "mlx", raw.get("quantization") or declared
    return method, declared


def format_for(method, settings, path):
    """The Format reading `method`, or a one-line refusal naming it."""
    if method not in FORMATS:
        raise CheckpointError(path, f"quantized checkpoint (quant_method {method!r}): not a format awm reads "
                                    f"(it reads {', '.join(sorted(FORMATS))}); compare the full-precision model it was made from")
    return FORMATS[method](settings, path)


class QuantizedInfo:
    """The TensorInfo of a module's float weight as the rest of awm sees it (no byte range of its
    own: its parts have theirs)."""

    __slots__ = ("begin", "dtype", "end", "module", "name", "path")

    def __init__(self, name, dtype, path, module):
        self.name, self.dtype, self.path, self.module = name, dtype, path, module
        self.begin = self.end = None

    @property
    def shape(self):
        return self.module.shape


class QuantizedStore:
    """A store whose quantized modules appear as their float `<module>.weight`, dequantized on
    read; their parts are hidden, every other tensor passes through as stored."""

    def __init__(self, store, quant_format):
        self.inner, self.format = store, quant_format
        self.files, self.fetch, self.format_name = store.files, store.fetch, store.format_name
        self.tensors = dict(store.tensors)
        self.modules, self._whole = {}, (None, None)
        for prefix in quant_format.prefixes(store.tensors):
            module = quant_format.module(prefix, store.tensors)
            module.read_part = self._part_reader(module)
            name = prefix + ".weight"
            for part in module.parts.values():
                self.tensors.pop(part, None)
            self.tensors[name] = QuantizedInfo(name, quant_format.label(), store.tensors[next(iter(module.parts.values()))].path, module)
            self.modules[name] = module
        if not self.modules:
            raise CheckpointError(quant_format.path, f"the config declares {quant_format.label()}, but no tensor is packed that way")
        self.label = quant_format.label()
        for info in self.tensors.values():
            if isinstance(info, QuantizedInfo):
                info.dtype = self.label

    def _part_reader(self, module):
        return lambda role: self.inner.read(module.parts[role])

    @property
    def metadata_reader(self):
        return self.inner.metadata_reader

    def parts(self, name):
        """The stored tensors behind `name` (the Hub reader fetches their bytes)."""
        module = self.modules.get(name)
        return [self.inner.tensors[p] for p in module.parts.values()] if module else [self.tensors[name]]

    def read(self, name):
        module = self.modules.get(name)
        if module is None:
            return self.inner.read(name)
        return module.unpack(module.read_part)

    def read_rows(self, name, start, stop):
        module = self.modules.get(name)
        if module is None:
            return self.inner.read_rows(name, start, stop)
        if module.rows is not None:
            return module.rows(lambda role, a, b: self.inner.read_rows(module.parts[role], a, b), start, stop)
        if self._whole[0] != name:             # read in blocks of rows: dequantize the whole once
            self._whole = (name, self.read(name))
        return self._whole[1][start:stop]
