"""The packings of GPTQ, AWQ, scaled FP8, bitsandbytes and MLX checkpoints: one Format each, that
checks a module's parts against its bits and groups and unpacks them (readers.dequantize)."""
import json
import math

import torch

from awm.errors import CheckpointError
from awm.readers import dequantize as kernels
from awm.readers.quant_format import (
    FLOAT8,
    FLOAT_STORAGE,
    INT32,
    Format,
    Module,
    check_bits,
    check_group,
    fp8_name,
)


# ----------------------------------------------------------------------------- GPTQ
class GPTQ(Format):
    marker = ".qweight"

    def __init__(self, config, path):
        super().__init__(config, path)
        self.bits = check_bits(config.get("bits", 4), (2, 3, 4, 8), path, "GPTQ")
        self.group_size = check_group(config.get("group_size", 128), path, "GPTQ")
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
        self.bits = check_bits(config.get("bits", config.get("w_bit", 4)), (4,), path, "AWQ")
        self.group_size = check_group(config.get("group_size", config.get("q_group_size", 128)), path, "AWQ")
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
        self.fp8 = fp8_name(weight.dtype)
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
        bits = check_bits(config.get("bits", 4), (2, 3, 4, 5, 6, 8), self.path, "MLX")
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
