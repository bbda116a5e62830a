"""A compact fingerprint of a model, for a first pass over thousands of library entries.

Three summaries, invariant to what the exact comparison aligns away (permutation, sign and
scale of the hidden dims; the Gram and the spectra to rotations too); a few hundred KB to 2 MB:

- the **anchor Gram**: cosines between the embedding rows of a fixed list of anchor strings
  that almost every tokenizer holds (ASCII characters, common words with and without a
  leading space), each row centred by the model's mean embedding row and stripped of the
  anchors' top principal directions (as the verdict strips embeddings). Models trained for
  minutes share nothing beyond those directions (at most 0.02), but well-trained ones share a
  semantic outline: unrelated real models correlate 0.2-0.8, while a model that inherited its
  embedding keeps its fine geometry (0.88 or more measured on real models, after width pruning,
  healing and continued pre-training). Stored as int8 (steps of 1/127), upper triangle;
- the **anchor columns**: the same stripped rows of the first COLUMN_ANCHORS anchors, read as
  one vector per hidden dim (int8, each scaled by its largest value). Geometry cannot tell a
  child whose embedding lost half its dims from an unrelated model of the same tokenizer; the
  columns can: the child's dims are its parent's (best |cosine| 0.94 or more), where unrelated
  embeddings match at chance level (0.21-0.29);
- the **layer spectra**: per layer, the normalised log singular values of W_q, W_k and the QK
  circuit (the circuit with norm gains folded: also invariant to the disguises the QK-circuit
  score survives). A model that inherited its body keeps at least one of them within 0.035
  (0.0011 with a new embedding or a rotation; measured), where independently trained models
  differ by 0.083 or more.

The first pass calls an entry a candidate when the embedding (its geometry or its columns) or
the body is as close to the suspect's as inheritance leaves it, or when the two share too few
anchors for the embedding to speak; the thresholds are calibrated on real pretrained models
and their children (docs/library.md) so that no derived pair is ruled out. What it rules out is
screened out (first pass), never given a verdict: no witness looked at it.
"""
import functools

import numpy as np
import torch

from awm.comparison.alignment import common_axes
from awm.method import spectra

SPECTRUM = 64              # singular values kept per matrix (at most)
MIN_ANCHORS = 64           # fewer common anchors leave the embedding summaries out of the first pass
COLUMN_ANCHORS = 256       # the anchors (first in ANCHORS: ASCII, then common words) the columns run over
COLUMN_PROBES = 32         # columns of the narrower model matched per pair (evenly spaced)
# Calibrated on real pretrained models and their children (docs/library.md): every derived pair
# is a candidate by at least one summary, and no pair of unrelated real models is.
# Anchor Grams: real embeddings share a semantic outline beyond the stripped directions, so
# unrelated ones correlate up to 0.80 (two sizes of one tokenizer, pre-trained separately);
# inherited ones 0.88 or more (width-pruned and healed; fine-tunes and continued pre-training
# 0.94-1.0; rotations 1.0). Columns: a kept, pruned or healed embedding matches its columns at
# 0.94 or more (half its dims cut), unrelated ones at 0.29 at most (noise alone: about 0.21).
# Bodies: derived 0.035 at most, unrelated 0.083 or more.
EMBEDDING_INHERITED = 0.85     # residual anchor-Gram correlation at or above: a candidate
COLUMNS_INHERITED = 0.6        # median best column |cosine| at or above: a candidate
BODY_CANDIDATE = 0.05          # mean |difference| of the closest kind of normalised log spectra at or below
# Links through a relative (screening.reach) ask for what inheritance leaves as well: the
# embedding bounds above; bodies of the parent's shape stay within 0.0096 (a fine-tune), where
# the chance matches of synthetic near-random bodies start at 0.0177.
LINK_BODY = 0.015

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
def anchor_summaries(vocab, embedding):
    """(indices into ANCHORS of the anchors the vocabulary holds, the cosine Gram of their rows,
    their columns): rows centred by the mean embedding row and without the anchors' top
    principal directions; the columns (see pack_columns) over the first COLUMN_ANCHORS anchors."""
    present = [(k, vocab[a]) for k, a in enumerate(ANCHORS) if vocab and a in vocab]
    if not present:
        return torch.zeros(0, dtype=torch.int16), torch.zeros(0, 0), torch.zeros(0, embedding.shape[1], dtype=torch.int8)
    indices, rows = zip(*present)
    vectors = embedding[torch.as_tensor(rows)].float() - _mean_row(embedding)
    shared = torch.linalg.svd(vectors - vectors.mean(0), full_matrices=False)[2][:common_axes(embedding.shape[1])]
    vectors = vectors - (vectors @ shared.t()) @ shared
    indices = torch.as_tensor(indices, dtype=torch.int16)
    columns = pack_columns(vectors[indices < COLUMN_ANCHORS])
    vectors = vectors / vectors.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return indices, vectors @ vectors.t(), columns


def pack_columns(rows):
    """Each hidden dim as a vector over the column anchors, scaled to int8 by its largest value:
    a permutation-level summary. A pruned or fine-tuned child keeps its parent's columns (a
    subset of them), where unrelated embeddings, however alike their geometry, do not."""
    scale = rows.abs().amax(0).clamp_min(1e-12)
    return (rows / scale * 127).round().clamp(-127, 127).to(torch.int8)


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


def layer_spectra(kernels):
    """(3, SPECTRUM) normalised log spectra of W_q, W_k and the QK circuit."""
    return torch.stack([spectra.normalised_log_spectrum(matrix, SPECTRUM, symmetric)
                        for matrix, symmetric in ((kernels.query, True), (kernels.key, True), (kernels.circuit, False))])


def payload_bytes(anchors, column_anchors, hidden, layers):
    """Bytes of a fingerprint's tensors: anchor indices (int16), the packed Gram and the columns
    (int8) and the spectra (float32); the file adds a header of a few hundred bytes."""
    return 2 * anchors + anchors * (anchors - 1) // 2 + column_anchors * hidden + 4 * layers * 3 * SPECTRUM


# ----------------------------------------------------------------------------- the first pass
class Probes:
    """Fingerprints to hold against many entries (a suspect; the relatives found derived), made
    ready once: their packed anchor Grams centred and stacked per anchor set, their spectra
    stacked per depth, their columns as float, so an entry meets all of them in a few array
    operations."""

    def __init__(self, fingerprints):
        self.fingerprints = fingerprints
        self.columns = [_column_side(own) for own in fingerprints]
        self.grams, self.spectra = {}, {}
        for k, own in enumerate(fingerprints):
            self.grams.setdefault(_anchor_key(own), []).append(k)
            self.spectra.setdefault(own["spectra"].shape[0], []).append(k)
        self.grams = {key: (members, *_stacked([fingerprints[k]["anchor_gram"].numpy() for k in members]))
                      for key, members in self.grams.items()}
        self.spectra = {depth: (members, np.stack([fingerprints[k]["spectra"].numpy() for k in members]))
                        for depth, members in self.spectra.items()}

    def first_pass(self, entry):
        """first_pass(probe, entry) for every probe, in their order."""
        embeddings, bodies = self._embeddings(entry), self._bodies(entry)
        own = _column_side(entry)
        columns = [_matched_columns(side, own) for side in self.columns]
        return [first_pass_evidence(*found) for found in zip(embeddings, bodies, columns)]

    def _embeddings(self, entry):
        found = [None] * len(self.fingerprints)
        same_anchors = _anchor_key(entry)
        for key, (members, stacked, squares) in self.grams.items():
            if key == same_anchors:               # the same anchors: the packed Grams align as they are
                if len(entry["anchors"]) >= MIN_ANCHORS:
                    for k, value in zip(members, _correlations(stacked, squares, _centred(entry["anchor_gram"].numpy()[None])[0])):
                        found[k] = value
                continue
            for k in members:
                found[k] = embedding_similarity(self.fingerprints[k]["anchors"], self.fingerprints[k]["anchor_gram"],
                                                entry["anchors"], entry["anchor_gram"])
        return found

    def _bodies(self, entry):
        found = [None] * len(self.fingerprints)
        own = entry["spectra"].numpy()
        for depth, (members, stacked) in self.spectra.items():
            distances = spectra.same_depth_distances(stacked, own) if depth == len(own) else \
                [spectra.body_distance(stacked[i], own) for i in range(len(members))]
            for k, distance in zip(members, distances):
                found[k] = float(distance) if np.isfinite(distance) else None
        return found


def first_pass(suspect, entry):
    """{"embedding", "columns", "body", "alike", "candidate", "why"}: whether the exact stage must
    look at this pair."""
    return Probes([suspect]).first_pass(entry)[0]


def _anchor_key(fingerprint):
    return fingerprint["anchors"].numpy().astype(np.int64).tobytes()


def _centred(packed):
    rows = packed.astype(np.float32)
    return rows - rows.mean(1, keepdims=True) if rows.shape[1] else rows


def _stacked(packed):
    """(packed Grams centred and stacked, each row's sum of squares)."""
    stacked = _centred(np.stack(packed))
    return stacked, np.einsum("ij,ij->i", stacked, stacked)


def _correlations(stacked, squares, centred):
    scales = np.sqrt(squares * np.dot(centred, centred))
    dots = stacked @ centred
    return [float(d / s) if s > 0 else 0.0 for d, s in zip(dots, scales)]


def embedding_similarity(indices_a, packed_a, indices_b, packed_b):
    """Correlation of the two packed anchor Grams over the anchors both hold (None below MIN_ANCHORS)."""
    common, where_a, where_b = np.intersect1d(indices_a.numpy(), indices_b.numpy(), return_indices=True)
    if len(common) < MIN_ANCHORS:
        return None
    a = packed_a.numpy()[packed_positions(where_a, len(indices_a))]
    b = packed_b.numpy()[packed_positions(where_b, len(indices_b))]
    return _correlations(*_stacked([a]), _centred(b[None])[0])[0]


def _column_side(fingerprint):
    """(the column anchors it holds, its columns as float32): what column matching reads."""
    anchors = fingerprint["anchors"].numpy()
    return anchors[anchors < COLUMN_ANCHORS], fingerprint["anchor_columns"].numpy().astype(np.float32)


def column_match(fingerprint_a, fingerprint_b):
    """The median over COLUMN_PROBES evenly spaced columns of the narrower embedding of each
    one's best |cosine| with any column of the other, over the column anchors both hold (None
    below MIN_ANCHORS): near 1 when one embedding's dims are (a subset of) the other's."""
    return _matched_columns(_column_side(fingerprint_a), _column_side(fingerprint_b))


def _matched_columns(side_a, side_b):
    (rows_a, columns_a), (rows_b, columns_b) = side_a, side_b
    if not np.array_equal(rows_a, rows_b):                # else every row in common: no copy
        common, where_a, where_b = np.intersect1d(rows_a, rows_b, return_indices=True)
        rows_a, columns_a, columns_b = common, columns_a[where_a], columns_b[where_b]
    if len(rows_a) < MIN_ANCHORS:
        return None
    narrow, wide = sorted((columns_a, columns_b), key=lambda c: c.shape[1])
    probes = narrow[:, np.unique(np.linspace(0, narrow.shape[1] - 1, COLUMN_PROBES).round().astype(np.int64))]
    probes = probes - probes.mean(0)
    probes /= np.maximum(np.linalg.norm(probes, axis=0), 1e-12)
    # The probes are centred, so their products with the raw wide columns are those with the
    # centred ones; only the norms need the centring.
    norms = np.sqrt(np.maximum(np.einsum("ij,ij->j", wide, wide) - wide.sum(0) ** 2 / len(wide), 1e-24))
    return float(np.median((np.abs(probes.T @ wide) / norms).max(1)))


def first_pass_evidence(embedding, body, columns=None):
    """Only every summary together rules a pair out: with too few anchors in common the
    embedding cannot speak (a pruned or rotated body alone may look unrelated), so the pair
    stays a candidate. embedding: the anchor-Gram correlation; columns: the column match."""
    alike, reasons = [], []
    if embedding is None:
        reasons.append(f"fewer than {MIN_ANCHORS} anchor tokens in common: the embeddings cannot be compared here")
    for kind, close, reason in (
            ("geometry", embedding is not None and embedding >= EMBEDDING_INHERITED, f"anchor-token geometry as inherited ({_shown(embedding, 3)})"),
            ("columns", columns is not None and columns >= COLUMNS_INHERITED, f"anchor-token columns as inherited ({_shown(columns, 3)})"),
            ("body", body is not None and body <= BODY_CANDIDATE, f"layer spectra alike (mean difference {_shown(body, 4)})")):
        if close:
            alike.append(kind)
            reasons.append(reason)
    why = "; ".join(reasons) or (f"neither the anchor-token geometry ({_shown(embedding, 3)}), its columns ({_shown(columns, 3)}) "
                                 f"nor the layer spectra ({_shown(body, 3)}) are as inheritance leaves them")
    return {"embedding": _rounded(embedding, 4), "columns": _rounded(columns, 4), "body": _rounded(body, 5),
            "alike": alike, "candidate": bool(reasons), "why": why}


def _rounded(value, digits):
    return None if value is None else round(value, digits)


def _shown(value, digits):
    return "n/a" if value is None else f"{value:.{digits}f}"


def links(suspect_relative, relative_entry):
    """The summaries on which a relative (found derived from the suspect) is close to an entry
    and unlike the suspect: what the relative carries that the suspect lost. Where the suspect
    and the relative are alike, an entry alike to the relative was within the suspect's own
    reach already. The geometry and the columns are two summaries here: a rotated suspect keeps
    its parent's geometry, a pruned sibling the parent's columns. A link asks for what
    inheritance leaves (the bounds above, LINK_BODY), not the first pass's permissive body
    bound: chance matches of every relative would add up."""
    close = [kind for kind in relative_entry["alike"] if kind != "body"]
    if relative_entry["body"] is not None and relative_entry["body"] <= LINK_BODY:
        close.append("body")
    return [kind for kind in close if kind not in suspect_relative["alike"]]
