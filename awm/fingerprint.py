"""A compact fingerprint of a model, for a first pass over thousands of library entries.

Two summaries, each invariant to what the exact comparison aligns away (permutation, sign,
scale and rotation of the hidden space); together about 0.3 MB whatever the model's size:

- the **anchor Gram**: cosines between the embedding rows of a fixed list of anchor strings
  that almost every tokenizer holds (ASCII characters, common words with and without a
  leading space), each row centred by the model's mean embedding row and stripped of the
  anchors' top principal directions (as the verdict strips embeddings). Independently trained
  models share the broad semantic outline those directions carry (raw cosines correlate up to
  0.8 between same-corpus twins); without them they share nothing (at most 0.02 measured),
  while a model that inherited its embedding keeps its fine geometry (0.27 after heavy
  continued pre-training, mostly above 0.8). Stored as int8 (steps of 1/127), upper triangle;
- the **layer spectra**: per layer, the normalised log singular values of W_q, W_k and the QK
  circuit (the circuit with norm gains folded: also invariant to the disguises the QK-circuit
  score survives). A model that inherited its body keeps at least one of them within 0.005
  (measured), where independently trained twins differ by 0.087 or more.

The first pass calls an entry a candidate when either summary is close to the suspect's, or
when the two share too few anchors for the embedding summary to speak; the thresholds are
calibrated on trained models (docs/library.md) so that no derived pair is ruled out.
Everything it rules out is independent by that evidence only, and said so.
"""
import functools

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from awm.alignment import common_axes

SPECTRUM = 64              # singular values kept per matrix (at most)
NEGLIGIBLE = float(np.log(1e-3))   # singular values below this fraction of the largest are left out
MIN_ANCHORS = 64           # fewer common anchors leave the embedding summary out of the first pass
# Calibrated on the calibration zoo and the test families (docs/library.md): every derived pair
# is a candidate by at least one summary, with margin.
EMBEDDING_CANDIDATE = 0.1      # residual anchor-Gram correlation at or above: a candidate
BODY_CANDIDATE = 0.05          # mean |difference| of the closest kind of normalised log spectra at or below

_WORDS = """the of and to in is was that for on as with by at it from his be an are this which or her had not
but have were he they one all she their has been there its more who also after first new would two can
other time into only when some these may him over most used then such them than where many made under
between out world years during three about people while year state most through later because war city
school both known part since being system well each before called four even way any what well same
could back work family based name series government life team long own season end number did however
united several million early five high national university day first group water until including
do make said will so if no up use out me my we you your our good just like know get go see how very
model data time value function return class import from self print string list type error none true
false code file line number table power light left right long great small large little old big end""".split()
_PUNCTUATION = ["\n", "\n\n", "\t", "  ", "    ", ".\n", ",", ".", "(", ")", "\"", "'", ":", ";", "-", "?", "!"]


def _anchor_strings():
    chars = [chr(c) for c in range(33, 127)]
    spaced = [" " + c for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"]
    words = list(dict.fromkeys(_WORDS))
    strings = chars + spaced + words + [" " + w for w in words] + [" " + w.capitalize() for w in words] + _PUNCTUATION
    return [s.encode() for s in dict.fromkeys(strings)]


ANCHORS = _anchor_strings()


# ----------------------------------------------------------------------------- building
def anchor_gram(vocab, embedding):
    """(indices into ANCHORS of the anchors the vocabulary holds, the cosine Gram of their rows
    centred by the mean embedding row and without the anchors' top principal directions)."""
    present = [(k, vocab[a]) for k, a in enumerate(ANCHORS) if vocab and a in vocab]
    if not present:
        return torch.zeros(0, dtype=torch.int16), torch.zeros(0, 0)
    indices, rows = zip(*present)
    vectors = embedding[torch.as_tensor(rows)].float() - _mean_row(embedding)
    shared = torch.linalg.svd(vectors - vectors.mean(0), full_matrices=False)[2][:common_axes(embedding.shape[1])]
    vectors = vectors - (vectors @ shared.t()) @ shared
    vectors = vectors / vectors.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return torch.as_tensor(indices, dtype=torch.int16), vectors @ vectors.t()


def pack_gram(gram):
    """The strict upper triangle of a cosine Gram as int8 (steps of 1/127: the first pass
    correlates hundreds of thousands of these, so the rounding does not move it)."""
    upper = torch.triu_indices(len(gram), len(gram), 1)
    return (gram[upper[0], upper[1]] * 127).round().clamp(-127, 127).to(torch.int8)


def packed_positions(where, count):
    """Positions in a packed strict upper triangle of size `count` of the pairs (where[i],
    where[j]), i < j, for increasing `where`: the packed Gram of those anchors alone."""
    rows, cols = _upper_pairs(len(where))
    i, j = where.astype(np.int64)[rows], where.astype(np.int64)[cols]
    return i * count - i * (i + 1) // 2 + (j - i - 1)


@functools.lru_cache(maxsize=8)
def _upper_pairs(size):
    return np.triu_indices(size, 1)


def _mean_row(embedding, block=8192):
    total = torch.zeros(embedding.shape[1], dtype=torch.float64)
    for start in range(0, embedding.shape[0], block):
        total += embedding[start:start + block].double().sum(0)
    return (total / max(1, embedding.shape[0])).float()


def _top_singular_values(matrix, count, symmetric):
    """The largest `count` singular values (a PSD Gram: its eigenvalues' square roots, those of W),
    by randomized subspace iteration when the matrix is wide."""
    matrix = matrix.float()
    size = matrix.shape[0]
    if size <= 2 * count:
        values = torch.linalg.eigvalsh(matrix).clamp_min(0).sqrt().flip(0) if symmetric else torch.linalg.svdvals(matrix)
        return values[:count]
    probe = torch.randn(size, count + 8, generator=torch.Generator().manual_seed(0)).to(matrix.device)
    basis = torch.linalg.qr(matrix @ probe)[0]
    for _ in range(3):
        basis = torch.linalg.qr(matrix @ (matrix.t() @ basis))[0]
    values = torch.linalg.svdvals(basis.t() @ matrix)[:count]
    return values.clamp_min(0).sqrt() if symmetric else values


def layer_spectra(kernels):
    """(3, SPECTRUM) normalised log singular values of W_q, W_k and the QK circuit: the top
    quarter of each spectrum at most, above 1e-3 of the largest (NaN beyond, and where a matrix
    is missing). The tail of a square matrix's spectrum sits near zero and the values past a
    matrix's rank are rounding noise: any change moves their logarithms, so they say nothing."""
    spectra = torch.full((3, SPECTRUM), float("nan"))
    for row, (matrix, symmetric) in enumerate(((kernels.query, True), (kernels.key, True), (kernels.circuit, False))):
        if matrix is None:
            continue
        count = min(SPECTRUM, max(1, matrix.shape[0] // 4))
        values = _top_singular_values(matrix, count, symmetric).double().cpu().clamp_min(1e-30)
        logs = values.log() - values[0].log()
        logs[logs < NEGLIGIBLE] = float("nan")
        spectra[row, :len(values)] = logs.float()
    return spectra


def payload_bytes(anchors, layers):
    """Bytes of a fingerprint's tensors: anchor indices (int16), the packed Gram (int8) and the
    spectra (float32); the file adds a header of a few hundred bytes."""
    return 2 * anchors + anchors * (anchors - 1) // 2 + 4 * layers * 3 * SPECTRUM


# ----------------------------------------------------------------------------- the first pass
def embedding_similarity(indices_a, packed_a, indices_b, packed_b):
    """Correlation of the two packed anchor Grams over the anchors both hold (None below MIN_ANCHORS)."""
    if len(indices_a) == len(indices_b) and bool((indices_a == indices_b).all()):
        if len(indices_a) < MIN_ANCHORS:
            return None
        a, b = packed_a.numpy(), packed_b.numpy()            # the same anchors: the packed Grams align as they are
    else:
        common, where_a, where_b = np.intersect1d(indices_a.numpy(), indices_b.numpy(), return_indices=True)
        if len(common) < MIN_ANCHORS:
            return None
        a = packed_a.numpy()[packed_positions(where_a, len(indices_a))]
        b = packed_b.numpy()[packed_positions(where_b, len(indices_b))]
    a, b = a.astype(np.float32), b.astype(np.float32)
    a, b = a - a.mean(), b - b.mean()
    scale = float(np.sqrt(np.dot(a, a) * np.dot(b, b)))
    return float(np.dot(a, b) / scale) if scale > 0 else 0.0


def body_distance(spectra_a, spectra_b):
    """For the kind of matrix whose spectra agree best (W_q, W_k or the circuit: a disguise may
    change the first two and never the third), the mean |difference| of the normalised log
    spectra over matched layers (equal depth: layer i with i; else the assignment of smallest
    total difference)."""
    return min(_kind_distance(spectra_a[:, kind].numpy(), spectra_b[:, kind].numpy()) for kind in range(spectra_a.shape[1]))


def _kind_distance(a, b):
    differences = np.abs(a[:, None] - b[None, :])
    defined = ~np.isnan(differences)
    counts = defined.sum(2)
    gaps = np.where(defined, differences, 0.0).sum(2) / np.maximum(counts, 1)
    if not counts.any():
        return float("inf")
    gaps[counts == 0] = np.inf
    if len(a) == len(b):
        return float(np.mean(np.diag(gaps)))
    rows, cols = linear_sum_assignment(gaps)
    return float(gaps[rows, cols].mean())


def first_pass(suspect, entry):
    """{"embedding", "body", "candidate", "why"}: whether the exact stage must look at this pair.
    Only both summaries together rule a pair out: with too few anchors in common the embedding
    cannot speak (a pruned or rotated body alone may look unrelated), so the pair stays a candidate."""
    embedding = embedding_similarity(suspect["anchors"], suspect["anchor_gram"], entry["anchors"], entry["anchor_gram"])
    body = body_distance(suspect["spectra"], entry["spectra"])
    body = None if not np.isfinite(body) else body
    reasons = []
    if embedding is None:
        reasons.append(f"fewer than {MIN_ANCHORS} anchor tokens in common: the embeddings cannot be compared here")
    elif embedding >= EMBEDDING_CANDIDATE:
        reasons.append(f"anchor-token geometry alike (correlation {embedding:.3f})")
    if body is not None and body <= BODY_CANDIDATE:
        reasons.append(f"layer spectra alike (mean difference {body:.4f})")
    shown = "n/a" if body is None else f"{body:.3f}"
    why = "; ".join(reasons) or f"neither the anchor-token geometry ({embedding:.3f}) nor the layer spectra ({shown}) are alike"
    return {"embedding": None if embedding is None else round(embedding, 4), "body": None if body is None else round(body, 5),
            "candidate": bool(reasons), "why": why}
