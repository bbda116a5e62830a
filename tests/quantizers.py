"""Quantized copies of test checkpoints, written as each format's own tooling writes them.

Where the format's library runs on a CPU it does the quantizing and gives the reference
dequantization (bitsandbytes, MLX, compressed-tensors). GPTQ and AWQ are packed here, loop by
loop as AutoGPTQ (`nn_modules/qlinear/qlinear_cuda_old.py`, `QuantLinear.pack`) and AutoAWQ
(`awq/modules/linear/gemm.py` and `gemv.py`, `from_linear`) pack them, from round-to-nearest
integers whose float value is known; FP8 block copies are made as DeepSeek-V3's converter
makes them (one float32 scale per 128 x 128 block, the block's absmax / 448).
Each quantizer returns ({part suffix: tensor}, the float weight those parts encode).
"""
import math

import numpy as np
import torch


def _round_to_nearest(weight, bits, group, symmetric=False):
    """(integers (out, in), zeros (groups, out), scales (groups, out)) of a min-max RTN quantization
    per group of input columns (the integers GPTQ and AWQ then pack)."""
    out_features, in_features = weight.shape
    group = in_features if group < 0 else group
    levels = 2 ** bits - 1
    padding = -in_features % group          # a last, shorter group: zeros leave its range as it is
    grouped = torch.nn.functional.pad(weight, (0, padding)).reshape(out_features, -1, group)
    low, high = grouped.amin(-1).clamp(max=0), grouped.amax(-1).clamp(min=0)
    if symmetric:
        high = torch.maximum(high, -low)
        low = -high
    scales = ((high - low) / levels).clamp_min(1e-8)
    zeros = torch.full_like(scales, (levels + 1) // 2) if symmetric else torch.round(-low / scales).clamp(0, levels)
    integers = torch.round(grouped / scales[..., None] + zeros[..., None]).clamp(0, levels).reshape(out_features, -1)[:, :in_features]
    return integers.to(torch.int64), zeros.t().to(torch.int64), scales.t().half()


def _float_of(integers, zeros, scales, group_of_column):
    return ((integers - zeros.t()[:, group_of_column]).float() * scales.float().t()[:, group_of_column])


def _pack_words(values, bits):
    """Pack unsigned values along axis 0 into 32-bit words as AutoGPTQ's pack loop does
    (3-bit values run across word boundaries)."""
    values = values.numpy().astype(np.uint64)
    rows = values.shape[0] * bits // 32
    packed = np.zeros((rows,) + values.shape[1:], dtype=np.uint64)
    for k in range(values.shape[0]):
        bit = k * bits
        packed[bit // 32] |= (values[k] << np.uint64(bit % 32)) & np.uint64(0xFFFFFFFF)
        if bit % 32 + bits > 32:
            packed[bit // 32 + 1] |= values[k] >> np.uint64(32 - bit % 32)
    return torch.from_numpy(packed.astype(np.uint32).view(np.int32))


def gptq(weight, bits=4, group=128, act_order=False, version="gptq", symmetric=False, seed=0):
    """With act_order the columns are grouped in a random order (as GPTQ's desc_act groups them
    by decreasing activation): g_idx[column] is the group of the column's place in that order."""
    in_features = weight.shape[1]
    order = torch.randperm(in_features, generator=torch.Generator().manual_seed(seed)) if act_order else torch.arange(in_features)
    integers, zeros, scales = _round_to_nearest(weight[:, order], bits, group, symmetric)
    integers = integers[:, torch.argsort(order)]
    group_of_column = torch.empty(in_features, dtype=torch.int64)
    group_of_column[order] = torch.arange(in_features) // (in_features if group < 0 else group)
    stored_zeros = zeros - (1 if version == "gptq" else 0)
    parts = {"qweight": _pack_words(integers.t(), bits),
             "qzeros": _pack_words((stored_zeros & (2 ** bits - 1)).t(), bits).t().contiguous(),
             "scales": scales, "g_idx": group_of_column.to(torch.int32)}
    return parts, _float_of(integers, zeros, scales, group_of_column)


AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def awq_gemm(weight, group=128):
    integers, zeros, scales = _round_to_nearest(weight, 4, group)
    reference = _float_of(integers, zeros, scales, torch.arange(weight.shape[1]) // group)

    def pack(columns):                 # (rows, out) -> (rows, out/8), AutoAWQ's interleaved nibbles
        packed = torch.zeros(columns.shape[0], columns.shape[1] // 8, dtype=torch.int64)
        for col in range(packed.shape[1]):
            for i in range(8):
                packed[:, col] |= columns[:, col * 8 + AWQ_ORDER[i]] << (4 * i)
        return packed.to(torch.int64).numpy().astype(np.uint32).view(np.int32)

    return {"qweight": torch.from_numpy(pack(integers.t())), "qzeros": torch.from_numpy(pack(zeros)),
            "scales": scales}, reference


def awq_gemv(weight, group=32):
    integers, zeros, scales = _round_to_nearest(weight, 4, group)
    reference = _float_of(integers, zeros, scales, torch.arange(weight.shape[1]) // group)
    multiple = {32: 4, 64: 2}.get(group, 1)          # AutoAWQ's calculate_zeros_width, in words of 8 groups
    width = 8 * multiple * math.ceil(math.ceil(weight.shape[1] // group / 8) / multiple)
    padded_scales = torch.zeros(weight.shape[0], width, dtype=torch.float16)
    padded_scales[:, :scales.shape[0]] = scales.t()
    padded_zeros = torch.zeros(weight.shape[0], width, dtype=torch.int64)
    padded_zeros[:, :zeros.shape[0]] = zeros.t()

    def pack(values):                  # (out, n) -> (out, n/8), natural nibble order
        packed = torch.zeros(values.shape[0], values.shape[1] // 8, dtype=torch.int64)
        for col in range(packed.shape[1]):
            for i in range(8):
                packed[:, col] |= values[:, col * 8 + i] << (4 * i)
        return torch.from_numpy(packed.numpy().astype(np.uint32).view(np.int32))

    return {"qweight": pack(integers), "qzeros": pack(padded_zeros), "scales": padded_scales}, reference


def fp8_block(weight, block=128, dtype=torch.float8_e4m3fn):
    rows, cols = weight.shape
    grid = torch.zeros(math.ceil(rows / block), math.ceil(cols / block))
    stored = torch.zeros(rows, cols, dtype=dtype)
    reference = torch.zeros(rows, cols)
    top = torch.finfo(dtype).max
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            tile = weight[i * block:(i + 1) * block, j * block:(j + 1) * block]
            grid[i, j] = tile.abs().max().clamp_min(1e-12) / top
            stored[i * block:(i + 1) * block, j * block:(j + 1) * block] = (tile / grid[i, j]).to(dtype)
            reference[i * block:(i + 1) * block, j * block:(j + 1) * block] = stored[i * block:(i + 1) * block, j * block:(j + 1) * block].float() * grid[i, j]
    return {"weight": stored, "weight_scale_inv": grid}, reference


def fp8_channel(weight, dtype=torch.float8_e4m3fn):
    scale = (weight.abs().amax(1, keepdim=True).clamp_min(1e-12) / torch.finfo(dtype).max)
    stored = (weight / scale).to(dtype)
    return {"weight": stored, "weight_scale": scale}, stored.float() * scale


def bnb_4bit(weight, kind="nf4", nested=True, blocksize=64):
    import bitsandbytes.functional as F

    packed, state = F.quantize_4bit(weight, blocksize=blocksize, quant_type=kind, compress_statistics=nested)
    parts = {"weight": packed, **{f"weight.{k}": v for k, v in state.as_dict(packed=True).items()}}
    return parts, F.dequantize_4bit(packed, state).float()


def bnb_int8(weight):
    import bitsandbytes.functional as F

    values, row_scales, _ = F.int8_vectorwise_quant(weight.half())
    return {"weight": values, "SCB": row_scales.float()}, F.int8_vectorwise_dequant(values, row_scales).float()


def mlx(weight, bits=4, group=64):
    """mlx's quantize; scales and biases stored in float16 as mlx-lm saves a float16 model, and
    mlx's own dequantize of exactly those parts as the reference."""
    import mlx.core as mx

    packed, scales, biases = mx.quantize(mx.array(weight.numpy()), group_size=group, bits=bits)
    scales, biases = (torch.from_numpy(np.array(a)).half() for a in (scales, biases))
    reference = mx.dequantize(packed, mx.array(scales.float().numpy()), mx.array(biases.float().numpy()), group_size=group, bits=bits)
    return {"weight": torch.from_numpy(np.array(packed)), "scales": scales, "biases": biases}, torch.from_numpy(np.array(reference))


def compressed(weight, storage="pack-quantized", bits=4, kind="int", strategy="group", group=64, block=None, symmetric=True):
    """compressed-tensors' own compressor on min-max scales: (parts, its own decompression, scheme settings)."""
    from compressed_tensors.compressors.base import BaseCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from compressed_tensors.quantization.utils import calculate_qparams

    args = QuantizationArgs(num_bits=bits, type=kind, strategy=strategy, group_size=group if strategy == "group" else None,
                            block_structure=list(block) if block else None, symmetric=symmetric)
    rows, cols = weight.shape
    span = {"tensor": (rows, cols), "channel": (1, cols), "group": (1, group), "block": block}[strategy]
    tiles = weight.reshape(rows // span[0], span[0], cols // span[1], span[1])
    scale, zero = calculate_qparams(tiles.amin((1, 3)), tiles.amax((1, 3)), args)
    compressor = BaseCompressor.get_value_from_registry(storage)
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    parts = compressor.compress({"weight": weight, "weight_scale": scale, "weight_zero_point": zero}, scheme)
    reference = compressor.decompress(dict(parts), scheme)["weight"].float()
    settings = {"num_bits": bits, "type": kind, "strategy": strategy, "group_size": group if strategy == "group" else None,
                "block_structure": list(block) if block else None, "symmetric": symmetric}
    return parts, reference, settings


def quantized_copy(tensors, quantizer, modules=("q_proj", "k_proj", "v_proj", "o_proj")):
    """(a state dict in which the named linear modules are replaced by their quantized parts,
    {weight name: the float weight the parts encode})."""
    copy, encoded = {}, {}
    for name, weight in tensors.items():
        module = name[:-len(".weight")] if name.endswith(".weight") else None
        if module and module.rsplit(".", 1)[-1] in modules:
            parts, reference = quantizer(weight)
            copy.update({f"{module}.{suffix}": value.contiguous() for suffix, value in parts.items()})
            encoded[name] = reference
        else:
            copy[name] = weight
    return copy, encoded
