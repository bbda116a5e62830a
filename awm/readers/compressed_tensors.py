"""compressed-tensors checkpoints (pack-, int-, naive- and float-quantized; tensor, channel, group
and block strategies): one Format that reads each module's scheme from the config."""
import math
import re

from awm.errors import CheckpointError
from awm.readers import dequantize as kernels
from awm.readers.quant_format import FLOAT_STORAGE, INT32, Format, Module, check_bits

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
            bits = check_bits(weights.get("num_bits", 8), (8,) if kind == "float" else tuple(range(1, 9)), path, f"compressed-tensors {kind}")
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
