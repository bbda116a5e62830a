"""Dequantization kernels: the packed integers or scaled low-precision floats of a quantized
checkpoint back to float32 weights, each by its format's published rules (docs/formats.md
names the code each one was checked against).

Every kernel takes the stored tensors as read and returns the (out_features, in_features)
weight in float32. They check nothing about shapes: readers.quantized validates every part
against the format and the config before a kernel runs, so a kernel only sees tensors that fit.
"""
import torch

# AutoAWQ's GEMM packing puts output columns 0, 2, 4, 6, 1, 3, 5, 7 of each group of eight in the
# eight nibbles of a word (lowest first); this is where each column's nibble lies.
AWQ_GEMM_NIBBLE_OF_COLUMN = (0, 4, 1, 5, 2, 6, 3, 7)


def unpack_bits(words, bits, count):
    """Unsigned `bits`-bit values packed along the last axis of int32 / uint32 `words` as one
    little-endian bit stream (value k at bits [k*bits, (k+1)*bits) of the row; a value may
    straddle two words when bits does not divide 32): (rows, count) int32."""
    if 32 % bits == 0:                  # 2, 4, 8 bits: whole values per word, a shift each
        shifts = torch.arange(0, 32, bits, dtype=torch.int32)
        values = (words.view(torch.int32).unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
        return values.reshape(*words.shape[:-1], -1)[..., :count]
    stream = words.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    stream = torch.cat([stream, torch.zeros_like(stream[..., :1])], -1)
    starts = torch.arange(count, dtype=torch.int64) * bits
    low, high = stream[..., starts // 32], stream[..., starts // 32 + 1]
    return (((low | (high << 32)) >> (starts % 32)) & ((1 << bits) - 1)).to(torch.int32)


def expand_groups(values, block_rows, block_cols, rows, cols):
    """A (ceil(rows / block_rows), ceil(cols / block_cols)) grid of per-block values spread over
    the (rows, cols) matrix they cover."""
    return values.repeat_interleave(block_rows, 0)[:rows].repeat_interleave(block_cols, 1)[:, :cols]


def gptq(qweight, qzeros, scales, g_idx, bits, zero_offset):
    """GPTQ: qweight (in*bits/32, out) packed along the input axis, qzeros (groups, out*bits/32)
    along the output axis, scales (groups, out), g_idx (in,) the group of each input column.
    W[o, i] = (q[i, o] - (z[g_i, o] + zero_offset)) * s[g_i, o]; zero_offset is 1 for the
    original checkpoint format, which stores each zero minus one, and 0 for gptq_v2."""
    out_features = scales.shape[1]
    in_features = len(g_idx)
    q = unpack_bits(qweight.t().contiguous(), bits, in_features)            # (out, in)
    zeros = unpack_bits(qzeros, bits, out_features) + zero_offset           # (groups, out)
    groups = g_idx.long()
    return (q - zeros.t()[:, groups]).float() * scales.float().t()[:, groups]


def awq_gemm(qweight, qzeros, scales, group_size):
    """AutoAWQ GEMM: qweight (in, out/8) and qzeros (in/group, out/8), eight 4-bit values a word
    in the interleaved column order; scales (in/group, out). W[o, i] = (q - z) * s."""
    def columns(words):
        nibbles = unpack_bits(words, 4, 8 * words.shape[-1])
        return nibbles.reshape(len(words), -1, 8)[..., list(AWQ_GEMM_NIBBLE_OF_COLUMN)].reshape(len(words), -1)

    q, zeros = columns(qweight), columns(qzeros)
    in_features, out_features = q.shape
    zeros = expand_groups(zeros, group_size, 1, in_features, out_features)
    return ((q - zeros).float() * expand_groups(scales.float(), group_size, 1, in_features, out_features)).t()


def awq_gemv(qweight, qzeros, scales, group_size):
    """AutoAWQ GEMV: qweight (out, in/8) packed along the input axis in natural order; qzeros
    (out, padded groups / 8) and scales (out, padded groups) with zero padding past the last
    group. W[o, i] = (q[o, i] - z[o, i // group]) * s[o, i // group]."""
    out_features, in_features = qweight.shape[0], 8 * qweight.shape[1]
    q = unpack_bits(qweight, 4, in_features)
    zeros = expand_groups(unpack_bits(qzeros, 4, 8 * qzeros.shape[1]), 1, group_size, out_features, in_features)
    return (q - zeros).float() * expand_groups(scales.float(), 1, group_size, out_features, in_features)


def scaled(values, scale, block_rows, block_cols, zero_point=None):
    """Scaled storage (FP8 and the int formats of compressed-tensors): W = (values - zero) * scale,
    where the scale (and zero point) hold one value per block of block_rows x block_cols
    (per tensor: the whole matrix; per channel: one row; per group: a row's run of columns)."""
    rows, cols = values.shape
    grid = (-(-rows // block_rows), -(-cols // block_cols))

    def spread(per_block):
        return expand_groups(per_block.float().reshape(grid), block_rows, block_cols, rows, cols)

    weight = values.float() if zero_point is None else values.float() - spread(zero_point)
    return weight * spread(scale)


def bnb_absmax(absmax, nested_absmax, nested_quant_map, nested_blocksize, nested_offset):
    """bitsandbytes double quantization: the 4-bit blocks' absmax values are themselves stored as
    8-bit codes of a 256-value map, with one scale per nested block and a common offset."""
    codes = nested_quant_map.float()[absmax.long()]
    scales = nested_absmax.float().repeat_interleave(nested_blocksize)[:len(absmax)]
    return codes * scales + nested_offset


def bnb_4bit(packed, absmax, quant_map, blocksize, shape):
    """bitsandbytes NF4 / FP4: two 4-bit codes a byte (the first in the high nibble) of the
    flattened weight; value = quant_map[code] * absmax[position // blocksize]."""
    flat = packed.reshape(-1).to(torch.int32)
    codes = torch.stack([flat >> 4, flat & 0xF], -1).reshape(-1)
    count = shape[0] * shape[1]
    values = quant_map.float()[codes[:count].long()]
    return (values * absmax.float().repeat_interleave(blocksize)[:count]).reshape(shape)


def bnb_int8(values, row_scales):
    """LLM.int8: int8 rows with their absmax (SCB); W = q * SCB / 127."""
    return values.float() * (row_scales.float().reshape(-1, 1) / 127.0)


def mlx_affine(packed, scales, biases, bits, group_size):
    """MLX affine: packed (out, in*bits/32) uint32 along the input axis, scales and biases
    (out, in/group); W = q * scale + bias."""
    out_features, in_features = scales.shape[0], scales.shape[1] * group_size
    q = unpack_bits(packed, bits, in_features).float()
    return (q * expand_groups(scales.float(), 1, group_size, out_features, in_features)
            + expand_groups(biases.float(), 1, group_size, out_features, in_features))
