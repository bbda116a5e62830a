"""Quantized Hugging Face checkpoints: which format a checkpoint uses, and a view of its tensors
in which every quantized module's packed parts appear as the one float weight they encode.

The format comes from the config (`quantization_config`, `quantize_config.json`, MLX's
`quantization`), never from tensor names alone; the names then say which modules are packed.
One row of FORMATS per `quant_method`. Every part is checked against the format, its bits and
groups before anything is read (a packed tensor whose shape disagrees, a missing scale or zero, a
`g_idx` out of range: one line naming the file and the tensor), and only the tensors a score
asks for are ever dequantized, in float32 (readers.dequantize).
"""
import json
import math
import re

import torch

from awm.errors import CheckpointError
from awm.readers import dequantize as kernels

FLOAT8 = ("F8_E4M3", "F8_E5M2", "float8_e4m3fn", "float8_e5m2")
FLOAT_STORAGE = ("F16", "BF16", "F32", "float16", "bfloat16", "float32")
INT32 = ("I32", "U32", "int32", "uint32")


def _fp8_name(dtype):
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


def _bits(value, allowed, path, what):
    if value not in allowed:
        raise CheckpointError(path, f"{what} of {value!r} bits is not one awm reads (reads {', '.join(map(str, allowed))})")
    return value


def _group(value, path, what):
    if value in (None, -1, 0):
        return -1
    if not isinstance(value, int) or value < 0:
        raise CheckpointError(path, f"{what} group size {value!r} is not a positive integer")
    return value


# ----------------------------------------------------------------------------- GPTQ
class GPTQ(Format):
    marker = ".qweight"

    def __init__(self, config, path):
        super().__init__(config, path)
        self.bits = _bits(config.get("bits", 4), (2, 3, 4, 8), path, "GPTQ")
        self.group_size = _group(config.get("group_size", 128), path, "GPTQ")
        self.act_order = bool(config.get("desc_act", False))
        self.version = str(config.get("checkpoint_format") or "gptq").lower()
        if self.version not in ("gptq", "gptq_v2"):
            raise CheckpointError(path, f"GPTQ checkpoint_format {self.version!r} (a kernel's repacking) is not one awm reads; "
                                        "it reads 'gptq' and 'gptq_v2'")

    def label(self):
        group = "" if self.group_size < 0 else f" g{self.group_size}"
        return f"GPTQ {self.bits}-bit{group}{' act-order' if self.act_order else ''}{' v2' if self.version == 'gptq_v2' else ''}"

    def module(self, prefix, tensors):
        qweight = self.need(tensors, prefix + ".qweight", INT32)
        if len(qweight.shape) != 2 or (qweight.shape[0] * 32) % self.bits:
            raise self.bad(qweight, f"has shape {tuple(qweight.shape)}: not whole {self.bits}-bit input columns packed in 32-bit words")
        in_features, out_features = qweight.shape[0] * 32 // self.bits, qweight.shape[1]
        groups = 1 if self.group_size < 0 else math.ceil(in_features / self.group_size)
        what = f"({out_features}, {in_features})"
        self.need(tensors, prefix + ".scales", FLOAT_STORAGE, (groups, out_features), what)
        self.need(tensors, prefix + ".qzeros", INT32, (groups, math.ceil(out_features * self.bits / 32)), what)
        parts = {"qweight": prefix + ".qweight", "scales": prefix + ".scales", "qzeros": prefix + ".qzeros"}
        if prefix + ".g_idx" in tensors:
            parts["g_idx"] = self.need(tensors, prefix + ".g_idx", INT32 + ("I64", "int64"), (in_features,), what).name
        elif self.act_order:
            self.need(tensors, prefix + ".g_idx", what="act-order needs each input column's group")
        zero_offset = 1 if self.version == "gptq" else 0

        def unpack(read):
            group = self.group_size if self.group_size > 0 else in_features
            g_idx = read("g_idx") if "g_idx" in parts else torch.arange(in_features) // group
            if len(g_idx) and (int(g_idx.min()) < 0 or int(g_idx.max()) >= groups):
                raise self.bad(tensors[parts["g_idx"]], f"names group {int(g_idx.max()) if int(g_idx.max()) >= groups else int(g_idx.min())}, "
                                                        f"outside the {groups} groups of its scales")
            return kernels.gptq(read("qweight"), read("qzeros"), read("scales"), g_idx, self.bits, zero_offset)

        return Module(prefix, parts, (out_features, in_features), unpack)


# ----------------------------------------------------------------------------- AWQ
class AWQ(Format):
    marker = ".qweight"

    def __init__(self, config, path):
        super().__init__(config, path)
        self.bits = _bits(config.get("bits", config.get("w_bit", 4)), (4,), path, "AWQ")
        self.group_size = _group(config.get("group_size", config.get("q_group_size", 128)), path, "AWQ")
        self.version = str(config.get("version", "gemm")).lower()
        if self.version not in ("gemm", "gemv"):
            raise CheckpointError(path, f"AWQ version {self.version!r} is not one awm reads; it reads the GEMM and GEMV packings")
        if self.group_size < 0:
            raise CheckpointError(path, "AWQ without a group size is not a layout AutoAWQ writes")

    def label(self):
        return f"AWQ {self.bits}-bit g{self.group_size} {self.version.upper()}"

    def module(self, prefix, tensors):
        qweight = self.need(tensors, prefix + ".qweight", INT32)
        if len(qweight.shape) != 2:
            raise self.bad(qweight, f"has shape {tuple(qweight.shape)}, not a matrix")
        g = self.group_size
        if self.version == "gemm":
            in_features, out_features = qweight.shape[0], 8 * qweight.shape[1]
            if in_features % g:
                raise self.bad(qweight, f"has {in_features} input rows, not a whole number of groups of {g}")
            what = f"({out_features}, {in_features})"
            self.need(tensors, prefix + ".scales", FLOAT_STORAGE, (in_features // g, out_features), what)
            self.need(tensors, prefix + ".qzeros", INT32, (in_features // g, out_features // 8), what)
        else:
            out_features, in_features = qweight.shape[0], 8 * qweight.shape[1]
            what = f"({out_features}, {in_features})"
            scales = self.need(tensors, prefix + ".scales", FLOAT_STORAGE, what=what)
            zeros = self.need(tensors, prefix + ".qzeros", INT32, what=what)
            groups = math.ceil(in_features / g)
            if tuple(scales.shape) != (out_features, scales.shape[1]) or scales.shape[1] < groups:
                raise self.bad(scales, f"has shape {tuple(scales.shape)}, but AWQ GEMV of a {what} weight needs ({out_features}, >= {groups})")
            if tuple(zeros.shape) != (out_features, zeros.shape[1]) or 8 * zeros.shape[1] < groups:
                raise self.bad(zeros, f"has shape {tuple(zeros.shape)}, but AWQ GEMV of a {what} weight needs ({out_features}, >= {math.ceil(groups / 8)})")
        parts = {role: f"{prefix}.{role}" for role in ("qweight", "qzeros", "scales")}
        kernel = kernels.awq_gemm if self.version == "gemm" else kernels.awq_gemv
        return Module(prefix, parts, (out_features, in_features),
                      lambda read: kernel(read("qweight"), read("qzeros"), read("scales"), g))


# ----------------------------------------------------------------------------- scaled floats
class ScaledFloat(Format):
    """FP8 weights stored with a float32 scale per tensor, channel or block ('fp8' with
    `weight_block_size`: DeepSeek-V3 / Qwen3 FP8, `weight_scale_inv`; FBGEMM: `weight_scale`)."""

    def __init__(self, config, path):
        super().__init__(config, path)
        block = config.get("weight_block_size")
        if block is not None and not (isinstance(block, list) and len(block) == 2 and all(isinstance(b, int) and b > 0 for b in block)):
            raise CheckpointError(path, f"weight_block_size {block!r} is not two positive integers")
        self.block = tuple(block) if block else None
        self.kind = self.fp8 = None

    def label(self):
        layout = f"block {self.block[0]}x{self.block[1]}" if self.block else (self.kind or "scaled")
        return f"FP8 {self.fp8 or 'e4m3'} {layout}"

    def is_module(self, prefix, tensors):
        info = tensors.get(prefix + ".weight")
        return info is not None and str(info.dtype) in FLOAT8 and self._scale_name(prefix, tensors) is not None

    @staticmethod
    def _scale_name(prefix, tensors):
        return next((prefix + s for s in (".weight_scale_inv", ".weight_scale") if prefix + s in tensors), None)

    def module(self, prefix, tensors):
        weight = tensors[prefix + ".weight"]
        self.fp8 = _fp8_name(weight.dtype)
        scale = tensors[self._scale_name(prefix, tensors)]
        block = self.block_of(weight, scale)
        parts = {"weight": weight.name, "scale": scale.name}
        return Module(prefix, parts, weight.shape, lambda read: kernels.scaled(read("weight"), read("scale"), *block),
                      rows=self._rows(block))

    def block_of(self, weight, scale):
        """(block rows, block cols) of the scale grid: per tensor, per channel, or the config's block."""
        rows, cols = weight.shape
        count = math.prod(scale.shape)
        if count == 1:
            self.kind = self.kind or "per-tensor"
            return rows, cols
        if count == rows and (len(scale.shape) == 1 or scale.shape[-1] == 1):
            self.kind = self.kind or "per-channel"
            return 1, cols
        if self.block and tuple(scale.shape) == (math.ceil(rows / self.block[0]), math.ceil(cols / self.block[1])):
            return self.block
        expected = f"({math.ceil(rows / self.block[0])}, {math.ceil(cols / self.block[1])}) for blocks of {self.block[0]}x{self.block[1]}" if self.block else "one value or one per output row"
        raise self.bad(scale, f"has shape {tuple(scale.shape)}, but a ({rows}, {cols}) weight needs {expected}")

    @staticmethod
    def _rows(block):
        if block[0] != 1:
            return None
        return lambda read_rows, start, stop: kernels.scaled(read_rows("weight", start, stop), read_rows("scale", start, stop), *block)


# ----------------------------------------------------------------------------- compressed-tensors
CT_STRATEGIES = ("tensor", "channel", "group", "block")
CT_FORMATS = ("pack-quantized", "int-quantized", "naive-quantized", "float-quantized")


class CompressedTensors(Format):
    """compressed-tensors (llm-compressor): per config group, the weights' bits, type, strategy
    and storage format; modules named in `ignore` stay dense."""

    def __init__(self, config, path):
        super().__init__(config, path)
        groups = config.get("config_groups")
        if not isinstance(groups, dict) or not groups:
            raise CheckpointError(path, "compressed-tensors config has no config_groups")
        self.schemes = []
        for name, group in groups.items():
            weights = (group or {}).get("weights") if isinstance(group, dict) else None
            if not isinstance(weights, dict):
                continue                              # activations only: the weights stay dense
            storage = str(group.get("format") or config.get("format") or "").lower()
            if storage == "dense":
                continue
            if storage not in CT_FORMATS:
                raise CheckpointError(path, f"compressed-tensors format {storage!r} (group {name!r}) is not one awm reads; "
                                            f"it reads {', '.join(CT_FORMATS)}")
            strategy = str(weights.get("strategy", "tensor")).lower()
            if strategy not in CT_STRATEGIES:
                raise CheckpointError(path, f"compressed-tensors strategy {strategy!r} is not one awm reads; it reads {', '.join(CT_STRATEGIES)}")
            targets = group.get("targets") or ["Linear"]
            kind = str(weights.get("type", "int")).lower()
            bits = _bits(weights.get("num_bits", 8), (8,) if kind == "float" else tuple(range(1, 9)), path, f"compressed-tensors {kind}")
            group_size, block = weights.get("group_size"), weights.get("block_structure")
            if strategy == "group" and not (isinstance(group_size, int) and group_size > 0):
                raise CheckpointError(path, f"compressed-tensors group strategy with group_size {group_size!r}, not a positive integer")
            if strategy == "block" and not (isinstance(block, list) and len(block) == 2 and all(isinstance(b, int) and b > 0 for b in block)):
                raise CheckpointError(path, f"compressed-tensors block strategy with block_structure {block!r}, not two positive integers")
            self.schemes.append({"targets": [str(t) for t in targets], "format": storage, "strategy": strategy, "bits": bits,
                                 "type": kind, "group_size": group_size, "block": block, "symmetric": weights.get("symmetric", True)})
        if not self.schemes:
            raise CheckpointError(path, "compressed-tensors config quantizes no weights")
        self.ignore = [str(i) for i in config.get("ignore") or []]
        self.shown = self.schemes[0]

    def label(self):
        s = self.shown
        detail = {"group": f" g{s['group_size']}", "block": f" block {'x'.join(map(str, s['block'] or []))}"}.get(s["strategy"], f" per-{s['strategy']}")
        kind = f"fp{s['bits']}" if s["type"] == "float" else f"int{s['bits']}"
        return f"compressed-tensors {s['format']} {kind}{detail}{'' if s['symmetric'] else ' asym'}"

    def prefixes(self, tensors):
        packed = [name[:-len(".weight_packed")] for name in tensors if name.endswith(".weight_packed")]
        return packed + [prefix for prefix in super().prefixes(tensors) if prefix + ".weight_packed" not in tensors]

    def is_module(self, prefix, tensors):
        weight = tensors.get(prefix + ".weight")
        return weight is not None and prefix + ".weight_scale" in tensors and str(weight.dtype) not in FLOAT_STORAGE

    def _scheme(self, prefix):
        for pattern in self.ignore:
            if (pattern.startswith("re:") and re.match(pattern[3:], prefix)) or prefix.endswith(pattern):
                return None
        named = [s for s in self.schemes if any(t.startswith("re:") and re.match(t[3:], prefix) or prefix.endswith(t) for t in s["targets"])]
        return (named or self.schemes)[0]

    def module(self, prefix, tensors):
        scheme = self._scheme(prefix)
        if scheme is None:
            raise CheckpointError(self.path, f"module '{prefix}' is packed but the config's ignore list leaves it dense")
        self.shown = scheme
        packed = prefix + ".weight_packed" in tensors
        values = self.need(tensors, prefix + (".weight_packed" if packed else ".weight"), INT32 if packed else None)
        scale = self.need(tensors, prefix + ".weight_scale", FLOAT_STORAGE)
        parts = {"values": values.name, "scale": scale.name}
        for role, suffix in (("zero", ".weight_zero_point"), ("g_idx", ".weight_g_idx")):
            if prefix + suffix in tensors:
                parts[role] = prefix + suffix
        if not scheme["symmetric"] and "zero" not in parts:
            self.need(tensors, prefix + ".weight_zero_point", what="an asymmetric scheme needs its zero points")
        if packed:
            parts["shape"] = self.need(tensors, prefix + ".weight_shape", ("I64", "I32", "int64", "int32"), (2,)).name
        bits, offset = scheme["bits"], 1 << (scheme["bits"] - 1)
        module = Module(prefix, parts, None if packed else values.shape, None, shape_part="shape" if packed else None,
                        parse_shape=lambda raw: self._packed_shape(raw, values, bits))

        def unpack(read):
            rows, cols = module.shape
            q = kernels.unpack_bits(read("values"), bits, cols) - offset if packed else read("values")
            block = self._block(scheme, rows, cols, scale)
            zero = read("zero") if "zero" in parts else None
            if zero is not None and packed and scheme["strategy"] in ("group", "channel"):
                zero = kernels.unpack_bits(zero.t().contiguous(), bits, rows).t() - offset
            if "g_idx" in parts:
                return self._by_g_idx(q, read("scale"), zero, read("g_idx"), tensors[parts["g_idx"]])
            return kernels.scaled(q, read("scale"), *block, zero_point=zero)

        module.unpack = unpack
        return module

    def _packed_shape(self, raw, packed, bits):
        shape = tuple(int(v) for v in raw.reshape(-1).tolist())
        if len(shape) != 2 or shape[0] != packed.shape[0] or math.ceil(shape[1] * bits / 32) != packed.shape[1]:
            raise self.bad(packed, f"has shape {tuple(packed.shape)}, but {bits}-bit packing of the ({', '.join(map(str, shape))}) "
                                   "weight its weight_shape names needs another")
        return shape

    def _block(self, scheme, rows, cols, scale):
        strategy = scheme["strategy"]
        if strategy == "tensor":
            block = (rows, cols)
        elif strategy == "channel":
            block = (1, cols)
        elif strategy == "group":
            block = (1, scheme["group_size"])
        else:
            block = tuple(scheme["block"])
        grid = (math.ceil(rows / block[0]), math.ceil(cols / block[1]))
        if math.prod(scale.shape) != math.prod(grid):
            raise self.bad(scale, f"has shape {tuple(scale.shape)}, but {strategy} scales of a ({rows}, {cols}) weight need {grid}")
        return block

    def _by_g_idx(self, q, scale, zero, g_idx, info):
        """Activation-ordered groups: input column i belongs to group g_idx[i]."""
        groups = scale.shape[-1]
        if int(g_idx.min()) < 0 or int(g_idx.max()) >= groups:
            raise self.bad(info, f"names a group outside the {groups} groups of its scales")
        index = g_idx.long()
        weight = q.float() if zero is None else q.float() - zero.float()[:, index]
        return weight * scale.float()[:, index]


# ----------------------------------------------------------------------------- bitsandbytes
BNB_STATE = ".quant_state.bitsandbytes__"


class BitsAndBytes(Format):
    def __init__(self, config, path):
        super().__init__(config, path)
        self.four_bit = bool(config.get("load_in_4bit") or config.get("_load_in_4bit"))
        self.quant_type = str(config.get("bnb_4bit_quant_type", "fp4")).lower()
        self.nested = bool(config.get("bnb_4bit_use_double_quant"))

    def label(self):
        if self.four_bit:
            return f"bitsandbytes {self.quant_type.upper()}{' double-quant' if self.nested else ''}"
        return "bitsandbytes LLM.int8"

    def is_module(self, prefix, tensors):
        if self.four_bit:
            return any(prefix + ".weight" + BNB_STATE + kind in tensors for kind in ("nf4", "fp4"))
        return prefix + ".SCB" in tensors and prefix + ".weight" in tensors

    def module(self, prefix, tensors):
        if not self.four_bit:
            weight = self.need(tensors, prefix + ".weight", ("I8", "int8"))
            self.need(tensors, prefix + ".SCB", FLOAT_STORAGE, (weight.shape[0],), f"{tuple(weight.shape)}")
            return Module(prefix, {"weight": weight.name, "scb": prefix + ".SCB"}, weight.shape,
                          lambda read: kernels.bnb_int8(read("weight"), read("scb")),
                          rows=lambda read_rows, start, stop: kernels.bnb_int8(read_rows("weight", start, stop), read_rows("scb", start, stop)))
        base = prefix + ".weight"
        state = next(base + BNB_STATE + kind for kind in ("nf4", "fp4") if base + BNB_STATE + kind in tensors)
        parts = {"weight": self.need(tensors, base, ("U8", "uint8")).name, "state": state}
        for role in ("absmax", "quant_map", "nested_absmax", "nested_quant_map"):
            if f"{base}.{role}" in tensors or role in ("absmax", "quant_map"):
                parts[role] = self.need(tensors, f"{base}.{role}", what="bitsandbytes 4-bit needs it").name
        meta = {}

        def unpack(read):
            out_in = module.shape               # parses the quant state (block sizes) the first time
            absmax = read("absmax")
            if "nested_absmax" in parts:
                if "nested_quant_map" not in parts or "nested_blocksize" not in meta:
                    raise self.bad(tensors[parts["state"]], "describes no nested quantization for its nested absmax")
                absmax = kernels.bnb_absmax(absmax, read("nested_absmax"), read("nested_quant_map"),
                                            int(meta["nested_blocksize"]), float(meta.get("nested_offset", 0.0)))
            packed = read("weight")
            if packed.numel() * 2 < out_in[0] * out_in[1] or absmax.numel() * int(meta["blocksize"]) < out_in[0] * out_in[1]:
                raise self.bad(tensors[parts["weight"]], f"holds too few codes or blocks for the {out_in} weight its quant state names")
            return kernels.bnb_4bit(packed, absmax, read("quant_map"), int(meta["blocksize"]), out_in)

        module = Module(prefix, parts, None, unpack, shape_part="state",
                        parse_shape=lambda raw: self._state_shape(raw, tensors[state], meta))
        return module

    def _state_shape(self, raw, info, meta):
        """The JSON bitsandbytes stores beside a 4-bit weight: its float shape and block sizes."""
        try:
            meta.update(json.loads(bytes(raw.to(torch.uint8).reshape(-1).tolist()).decode("utf-8")))
            shape = tuple(int(d) for d in meta["shape"])
            if int(meta["blocksize"]) <= 0 or int(meta.get("nested_blocksize", 1)) <= 0 or min(shape, default=0) <= 0:
                raise ValueError
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise self.bad(info, "is not the JSON quant state bitsandbytes writes (shape, blocksize)") from None
        if len(shape) != 2:
            raise self.bad(info, f"gives shape {shape}, not a matrix")
        return shape


# ----------------------------------------------------------------------------- MLX
class MLX(Format):
    """mlx-lm's affine quantization: `quantization` {group_size, bits} in config.json, with
    per-module overrides (mixed recipes) under the module's name."""

    def __init__(self, config, path):
        super().__init__(config, path)
        mode = str(config.get("mode", "affine")).lower()
        if mode != "affine":
            raise CheckpointError(path, f"MLX quantization mode {mode!r} is not one awm reads; it reads 'affine'")
        self.default = self._settings(config)

    def _settings(self, config):
        bits = _bits(config.get("bits", 4), (2, 3, 4, 5, 6, 8), self.path, "MLX")
        group = config.get("group_size", 64)
        if not isinstance(group, int) or group <= 0:
            raise CheckpointError(self.path, f"MLX group size {group!r} is not a positive integer")
        return bits, group

    def label(self):
        return f"MLX {self.default[0]}-bit g{self.default[1]}"

    def is_module(self, prefix, tensors):
        weight = tensors.get(prefix + ".weight")
        return weight is not None and str(weight.dtype) in ("U32", "uint32") and prefix + ".scales" in tensors

    def module(self, prefix, tensors):
        override = self.config.get(prefix)
        bits, group = self._settings(override) if isinstance(override, dict) else self.default
        weight = self.need(tensors, prefix + ".weight", ("U32", "uint32"))
        if len(weight.shape) != 2 or (weight.shape[1] * 32) % bits:
            raise self.bad(weight, f"has shape {tuple(weight.shape)}: not whole {bits}-bit values packed in 32-bit words")
        out_features, in_features = weight.shape[0], weight.shape[1] * 32 // bits
        if in_features % group:
            raise self.bad(weight, f"packs {in_features} input columns, not a whole number of groups of {group}")
        what = f"({out_features}, {in_features})"
        for role in ("scales", "biases"):
            self.need(tensors, f"{prefix}.{role}", FLOAT_STORAGE, (out_features, in_features // group), what)
        parts = {role: f"{prefix}.{role}" for role in ("weight", "scales", "biases")}
        return Module(prefix, parts, (out_features, in_features),
                      lambda read: kernels.mlx_affine(read("weight"), read("scales"), read("biases"), bits, group),
                      rows=lambda read_rows, start, stop: kernels.mlx_affine(*(read_rows(r, start, stop) for r in ("weight", "scales", "biases")), bits, group))


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
