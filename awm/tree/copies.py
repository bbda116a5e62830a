"""Are two same-shape models stored copies of one set of weights? Every compared entry must
agree within its storage precision: W_q / W_k of the row layers a digest keeps, and a sample of
every other weight (o_proj, the MLP, the norms, the embedding and output rows; see
awm.readers.weight_sample). Which of two copies in different float formats was made from the
other is read from the finer one's low bits.

Two models stored in one format are copies only when the compared entries are bit-identical:
a light fine-tune moves entries by less than one bf16 unit, but not all of them. In different
formats each entry may differ by at most one unit of the coarser format (a bf16 re-save rounds
by half a unit; an fp16 file made through bf16 rounds twice, so a 16-bit format counts as bf16;
tiny values an fp16 file keeps as subnormals may differ by its subnormal spacing).
"""
import torch

MANTISSA_BITS = {"F64": 52, "F32": 23, "F16": 10, "BF16": 7,
                 "float64": 52, "float32": 23, "float16": 10, "bfloat16": 7}
BF16_BITS = MANTISSA_BITS["BF16"]
SMALLEST_NORMAL = {52: 2.0 ** -1022, 23: 2.0 ** -126, 10: 2.0 ** -14, 7: 2.0 ** -126}
# Below its smallest normal a format keeps a fixed absolute spacing (fp16: 2^-24, about 6e-8).
SUBNORMAL_SPACING = {bits: normal * 2.0 ** -bits for bits, normal in SMALLEST_NORMAL.items()}
ATTENTION_ONLY = "attention identical; other weights differ"


def coarser_bits(dtype_a, dtype_b):
    """Mantissa bits the comparison allows: the coarser format's, bf16's for any 16-bit format
    (None: a format without units, e.g. a quantized type)."""
    bits = [MANTISSA_BITS.get(str(d)) for d in (dtype_a, dtype_b)]
    if None in bits:
        return None
    return BF16_BITS if min(bits) <= MANTISSA_BITS["F16"] else min(bits)


def unit(values, bits):
    """One unit in the last place of a `bits`-mantissa format at each value's magnitude."""
    magnitude = values.abs().clamp_min(SMALLEST_NORMAL[bits])
    _, exponent = torch.frexp(magnitude)
    return torch.ldexp(torch.ones_like(magnitude), exponent - 1 - bits)


def agree(a, b, dtype_a, dtype_b):
    """Do two tensors hold the same weights as stored (see the module's rule)?"""
    if a.shape != b.shape:
        return False
    if str(dtype_a) == str(dtype_b):
        return torch.equal(a.to(torch.float64), b.to(torch.float64))
    bits = coarser_bits(dtype_a, dtype_b)
    if bits is None:
        return False
    x, y = a.to(torch.float64), b.to(torch.float64)
    floor = max(SUBNORMAL_SPACING[MANTISSA_BITS[str(d)]] for d in (dtype_a, dtype_b))
    return bool(((x - y).abs() <= unit(torch.maximum(x.abs(), y.abs()), bits) + floor).all())


def rows_agree(rows_a, rows_b, dtype_a, dtype_b):
    """The kept W_q / W_k rows and their input gains ({layer: (W_q, W_k, gain)}) agree."""
    return rows_a.keys() == rows_b.keys() and all(
        agree(x, y, dtype_a, dtype_b) for layer in rows_a for x, y in zip(rows_a[layer], rows_b[layer]))


def sample_agreement(sample_a, sample_b, dtype_a, dtype_b):
    """True / False whether the sampled other weights agree; None when they cannot be compared
    (an entry built before entries kept a sample, or samples of different tensors)."""
    if not sample_a or not sample_b or sample_a.keys() != sample_b.keys():
        return None
    return all(agree(sample_a[name], sample_b[name], dtype_a, dtype_b) for name in sample_a)


def sample_distances(sample_a, sample_b):
    """{tensor: relative distance} over the sampled other weights both models hold."""
    return {n: _relative(sample_a[n].double(), sample_b[n].double()) for n in sample_a
            if n in sample_b and sample_a[n].shape == sample_b[n].shape}


def sample_distance(sample_a, sample_b):
    """How far the sampled other weights lie apart: the root sum of squares of the tensors'
    relative distances, so that one tensor moved a lot (an MLP-only LoRA) counts as much as the
    embedding does (inf when they share none). What tells apart models whose W_q / W_k are the same."""
    found = sample_distances(sample_a, sample_b)
    return sum(d * d for d in found.values()) ** 0.5 if found else float("inf")


def nearer_in_every_tensor(near, far, margin):
    """`near` ({tensor: distance} to a copy) is no farther than `far` in any tensor, and at most
    `margin` times as far in some: the copy was made from near's weights, not far's."""
    common = [n for n in near if n in far]
    return bool(common) and all(near[n] <= far[n] * (1 + 1e-9) for n in common) and \
        any(near[n] <= margin * far[n] for n in common)


def _relative(x, y):
    size = float(x.norm() * y.norm()) ** 0.5
    return float((x - y).norm()) / size if size > 0 else float(x.norm() + y.norm() > 0)


def relation(digest_a, digest_b, dtype_a, dtype_b):
    """("copy" | "fine-tune", note or None) for two same-shape models whose rows share a basis."""
    if not rows_agree(digest_a.kept_rows(), digest_b.kept_rows(), dtype_a, dtype_b):
        return "fine-tune", None
    others = sample_agreement(digest_a.weight_sample(), digest_b.weight_sample(), dtype_a, dtype_b)
    if others is None:
        return "copy", "W_q / W_k only: no sample of the other weights to compare"
    return ("copy", None) if others else ("fine-tune", ATTENTION_ONLY)


def finer_original(digest_a, digest_b, dtype_a, dtype_b):
    """Of two copies in different float formats, the one the other was made from: the finer one,
    when some of its compared entries are not representable in the coarser format (an upcast
    holds only values the coarser format stores, and then either could be the original). None
    when the formats are the same or the finer one holds nothing finer."""
    bits_a, bits_b = MANTISSA_BITS.get(str(dtype_a)), MANTISSA_BITS.get(str(dtype_b))
    if bits_a is None or bits_b is None or bits_a == bits_b:
        return None
    finer, coarse = (digest_a, bits_b) if bits_a > bits_b else (digest_b, bits_a)
    values = [w for kept in finer.kept_rows().values() for w in kept[:2]] + list(finer.weight_sample().values())
    return finer if any(not _representable(v, coarse) for v in values) else None


def _representable(values, bits):
    """Every value is a multiple of its own unit in a `bits`-mantissa format (exponent range aside)."""
    x = values.to(torch.float64)
    return bool(torch.equal(torch.remainder(x, unit(x, bits)), torch.zeros_like(x)))
