"""Steps 1 and 2 of the method: the shared vocabulary, and the hidden-dimension alignment
(embedding-column cosines, a linear assignment), with the test of whether the matched dims
genuinely correspond. When they do not, the embedding is asked once more, for an orthogonal
map instead of a pairing (awm.witnesses.embedding_rotation); the body's witness is awm.witnesses.body_alignment.

An Alignment maps the base's hidden space to the target's: a pairing of dims with signs
(`base_index`, `sign`), or a dense map with orthonormal columns (`map`)."""
import time
from dataclasses import dataclass

import torch

from awm.method import embedding_stats as stats
from awm.method.assignment import align_hidden
from awm.method.correspondence import CorrespondenceTest, correspondence_test
from awm.witnesses import embedding_rotation
from awm.witnesses.verdict import (
    EMBEDDING_PERMUTATION,
    EMBEDDING_ROTATION,
    witness_passes,
)

# Principal axes of each embedding that the residual cosine and residual scores remove: the
# mean vector plus this many axes (at most 1/16 of the dims) take out what the columns of
# anisotropic embeddings share. Measured on scratch-trained models vs SmolLM2: with 8 axes a
# few outlier dims still correlate with everything; with 16 nothing does. A derived pair
# loses only ~k/d of each column's energy.
COMMON_AXES = 16
# The axes come from an even sample of this many shared tokens: dominant directions need no more.
AXES_SAMPLE_TOKENS = 16384
# Fewer shared tokens than this leave the correspondence test without power: not run.
MIN_TEST_TOKENS = 64


def common_axes(hidden):
    return max(1, min(COMMON_AXES, hidden // 16))


STORED_ORDER = "stored order"            # no shared tokens: the paper's score compares dims as stored


@dataclass
class Alignment:
    base_index: torch.Tensor              # base dim of each target dim (None: a dense map)
    sign: torch.Tensor
    shared_tokens: int
    aligned: bool
    mean_abs_cosine: float
    note: str = ""
    timings: dict = None
    correspondence: CorrespondenceTest = None
    base_common: torch.Tensor = None      # orthonormal common directions, base coordinates
    target_common: torch.Tensor = None    # the same for the target
    basis: str = EMBEDDING_PERMUTATION
    map: torch.Tensor = None              # base dims x target dims, orthonormal columns
    shared_ids: tuple = None              # (base ids, target ids) of the shared tokens
    axes: tuple = None                    # (target, base) principal axes over them

    @property
    def passed(self):
        """Its held-out test confirmed it: significant, and as large as inheritance leaves it."""
        return witness_passes(self.basis, self.correspondence)

    @property
    def usable(self):
        """It maps the base's dims to the target's at all (no shared tokens and unequal widths: no)."""
        return self.base_index is not None or self.map is not None

    @property
    def testable(self):
        return self.shared_tokens >= MIN_TEST_TOKENS


def shared_token_ids(base_vocab, target_vocab):
    shared = sorted((base_vocab[key], target_vocab[key]) for key in base_vocab.keys() & target_vocab.keys())
    ids = torch.as_tensor(shared, dtype=torch.long).reshape(-1, 2)
    return ids[:, 0], ids[:, 1]


def _rows(digest, ids):
    return lambda start, stop: digest.embedding[ids[start:stop]]


def align(base, target, device):
    """Match each hidden dim of the target to a base dim (and sign) on the shared tokens, and
    test whether the matched dims genuinely correspond (see similarity_metrics)."""
    base_ids = target_ids = None
    if base.vocab and target.vocab:
        base_ids, target_ids = shared_token_ids(base.vocab, target.vocab)
    if base_ids is None or len(base_ids) == 0:
        why = "one model has no tokenizer" if not (base.vocab and target.vocab) else "the tokenizers share no tokens"
        if base.hidden_size != target.hidden_size:
            return Alignment(None, None, 0, False, float("nan"), f"UNALIGNED: {why} and the hidden sizes differ ({base.hidden_size} "
                             f"vs {target.hidden_size}): the paper's score is undefined; only the body can align the dims",
                             {"cosine_s": 0.0, "lap_s": 0.0}, basis=STORED_ORDER)
        identity = torch.arange(target.hidden_size)
        return Alignment(identity, torch.ones(target.hidden_size), 0, False, float("nan"),
                         f"UNALIGNED: {why}; dims compared in stored order", {"cosine_s": 0.0, "lap_s": 0.0}, basis=STORED_ORDER)
    started = time.perf_counter()
    axes = [_principal_axes(digest, ids, device) for digest, ids in ((target, target_ids), (base, base_ids))]
    # Two interleaved halves of the shared tokens: the test finds partners on one and checks
    # them on the other; the alignment itself uses their sum, i.e. every shared token.
    halves = [(target_ids[h::2], base_ids[h::2]) for h in (0, 1)]
    half_products = [stats.column_products(_rows(target, t), _rows(base, b), device, *axes) for t, b in halves]
    products = half_products[0] + half_products[1]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    cosine_done = time.perf_counter()
    base_index, sign, quality = align_hidden(stats.cosine_from_products(products))
    lap_done = time.perf_counter()
    test = None
    if len(base_ids) >= MIN_TEST_TOKENS:
        residuals = [stats.residual_cosine(p, stats.common_directions(p, "a", axes[0]), stats.common_directions(p, "b", axes[1]))
                     for p in half_products]
        test = correspondence_test(*residuals, base_index)
    timings = {"cosine_s": round(cosine_done - started, 3), "lap_s": round(lap_done - cosine_done, 3),
               "correspondence_s": round(time.perf_counter() - lap_done, 3)}
    note = ""
    if len(base_ids) < target.hidden_size:
        note = f"only {len(base_ids)} shared tokens for {target.hidden_size} hidden dims: the alignment is underdetermined"
    return Alignment(base_index, sign, len(base_ids), True, quality, note, timings, test,
                     base_common=stats.projector_basis(products.sum_b / products.rows, axes[1]),
                     target_common=stats.projector_basis(products.sum_a / products.rows, axes[0]),
                     shared_ids=(base_ids, target_ids), axes=tuple(axes))


def rotation_alignment(base, target, permutation, device, always=False):
    """The embedding's second witness: an orthogonal map fitted and tested on a token sample
    (awm.witnesses.embedding_rotation), for pairs whose permutation failed its test."""
    started = time.perf_counter()
    (base_ids, target_ids), (target_axes, base_axes) = permutation.shared_ids, permutation.axes
    rotation, test = embedding_rotation.fit(base.embedding, base_ids, target.embedding, target_ids, base_axes, target_axes, device, always)
    return Alignment(None, None, permutation.shared_tokens, True, float("nan"), timings={"rotation_s": round(time.perf_counter() - started, 3)},
                     correspondence=test, basis=EMBEDDING_ROTATION, map=rotation)


def _principal_axes(digest, ids, device):
    """The embedding's top principal axes from an even sample of the shared tokens, so the
    only pass over all of them stays the cosine's. Kept on the digest for its next pair: a
    model compared with many others of its tokenizer samples the same tokens each time."""
    sample_ids = ids[::max(1, len(ids) // AXES_SAMPLE_TOKENS)]
    kept = digest.kept_axes
    if kept is not None and kept[0] == device and torch.equal(kept[1], sample_ids):
        return kept[2]
    sample = digest.embedding[sample_ids].to(device=device, dtype=torch.float32)
    axes = stats.principal_axes(sample, common_axes(digest.hidden_size))
    digest.kept_axes = (device, sample_ids, axes)
    return axes
