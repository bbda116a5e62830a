"""Were the body's weights themselves inherited, or only re-learnt? A test on W_q / W_k rows.

An embedding can be inherited on its own: a fresh transformer body trained on another model's
embedding learns to read the same directions, so its Gram matrices resemble the donor's (AWM
scores of tens of percent) though not one of its weights came from the donor. What such a body
lacks is the donor's individual weight rows: each row of an inherited W_q or W_k (one query or
key direction of one head) stays close to its origin through fine-tuning, continued
pre-training, pruning and distillation, while a freshly initialised body's rows are new.

On a few layers spread over the depth, with the attention-input norm gains folded in and the
base's columns mapped by the alignment the verdict rests on, every target row finds its most
similar base row on half of the hidden dims and is checked on the other half, with the
correspondence test's noise model and error control. RoPE-pair rotations and scalings, head
permutations and norm folding keep rows recognisable; only a disguise that mixes a head's rows
arbitrarily (which the QK circuit sees through) does not.
"""
import torch

from awm.method.correspondence import (
    CORRESPONDENCE_ALPHA,
    CorrespondenceTest,
    correspondence_test,
)

ROW_LAYERS = 4          # layers spread over the depth whose rows are kept and compared
EPS = 1e-12
# A row test that finds nothing says "not inherited" only when it could have seen the inheritance
# the kernels show: an inherited body whose Grams agree to CKA c keeps rows whose cosine with
# their origin is about sqrt(c), i.e. about sqrt(c) * sqrt(d / 2) noise sigmas on a half of the
# d dims. That must clear the test's bound by this margin, or the test is too weak to speak.
POWER_MARGIN_SIGMAS = 2.0


def expected_sigmas(cka, dims):
    """How many noise sigmas an inherited row would stand out by, at kernel agreement `cka`."""
    return max(0.0, cka) ** 0.5 * (dims / 2) ** 0.5



def row_layers(num_layers):
    """The layers whose rows a digest keeps: the first, the last and evenly between."""
    count = min(ROW_LAYERS, num_layers)
    return sorted({int(round(k * (num_layers - 1) / max(1, count - 1))) for k in range(count)})


# Rows are kept in the checkpoint's own precision, so that copies compare as exactly equal.
KEPT_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "float16": torch.float16, "bfloat16": torch.bfloat16}


def kept_rows(w_q, w_k, gain, stored_dtype):
    """(W_q, W_k, attention-input gain) of one layer as a digest keeps them: the weights in
    their stored precision (float32 for quantized or float32 checkpoints), the gain apart."""
    dtype = KEPT_DTYPES.get(stored_dtype, torch.float32)
    hidden = w_q.shape[1]
    gain = gain.float().cpu() if gain is not None and gain.numel() == hidden else torch.ones(hidden)
    return w_q.to(dtype).cpu(), w_k.to(dtype).cpu(), gain


def folded(kept):
    """(W_q, W_k) of kept rows with the attention-input gain folded into their columns, float32."""
    w_q, w_k, gain = kept
    return w_q.float() * gain, w_k.float() * gain


def _in_target_dims(rows, alignment):
    if alignment.map is not None:
        return rows @ alignment.map.float()
    return rows[:, alignment.base_index] * alignment.sign


def _unit_rows(rows):
    return rows / rows.norm(dim=1, keepdim=True).clamp_min(EPS)


def _one_matrix(target, base):
    """Row correspondence of one weight: partners found on the even hidden dims, checked on the odd."""
    halves = [slice(0, None, 2), slice(1, None, 2)]
    found, held_out = (_unit_rows(target[:, h]) @ _unit_rows(base[:, h]).t() for h in halves)
    return correspondence_test(found, held_out, found.abs().argmax(dim=1))


def combined(tests, alpha=CORRESPONDENCE_ALPHA):
    """Several tests' confirmed units pooled: Markov's bound on the total count."""
    count, units = sum(t.matched_dims for t in tests), sum(t.target_dims for t in tests)
    p_value = min(1.0, units * alpha / count) if count else 1.0
    median = float(torch.tensor([t.median_matched_sigmas for t in tests]).median())
    agreement = float(torch.tensor([t.agreement for t in tests]).median())
    return CorrespondenceTest(count, units, p_value, max(t.threshold_sigmas for t in tests), median, agreement)


def rows_test(base, target, alignment):
    """The pooled row test of the two digests' kept layers (paired by relative depth) under the
    alignment; None when either digest kept no rows."""
    kept_base, kept_target = base.rows, target.rows          # a stored digest reads them on each access
    if not (kept_base and kept_target):
        return None
    tests = []
    for base_layer, target_layer in zip(row_layers(base.num_layers), row_layers(target.num_layers)):
        for base_rows, target_rows in zip(folded(kept_base[base_layer]), folded(kept_target[target_layer])):
            tests.append(_one_matrix(target_rows, _in_target_dims(base_rows, alignment)))
    return combined(tests)
