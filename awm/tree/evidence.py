"""What the family tree reads from the models beyond their pair scores: the W_q / W_k rows a
digest keeps (a few layers, as stored) and every layer's Gram matrices.

Models of one shape that share their hidden basis are points in weight space: the inner
products of their rows give every distance (how far a fine-tune moved) and every linear fit
(is this model a weighted average of those, with which coefficients) without touching the rows
again. Layer by layer, Gram distances tell which parent layer each layer of a stacked or
layer-wise merged model came from.
"""
import itertools
from dataclasses import dataclass

import numpy as np
import torch

from awm.method import cka
from awm.witnesses.body_rows import row_layers

# A parent sits between its children: averaging k children cancels their independent changes
# and "explains" the parent to 1/sqrt(k) of the best single child's residual. A merge is taken
# only on evidence a parent cannot fake: a weighted average that leaves at most this share of the
# best single parent's residual (a linear merge: none at all) ...
LINEAR_FIT = 0.05
MIN_WEIGHT = 0.05            # every parent of a linear merge contributes at least this, positively
# A single parent that leaves at most this share of the child's rows holds its weights (up to
# storage rounding): nothing is left for a merge to explain, however well an average also fits.
SAME_WEIGHTS = 1e-4
# ... or the entrywise signature of trimmed and sign-elected merges (TIES, DARE): each entry of
# the child's change from a base is zero, one parent's change, their mean or sum (times one global
# scale), leaving at most this share of the change unexplained.
ENTRYWISE_FIT = 0.1
SCALED_COPY = 0.5            # one parent's change, scaled, explaining this much makes it a linear relation
SAMPLED_ENTRIES = 1 << 18    # the entrywise test reads this many fixed entries of every model's rows
# Only a child that two candidates explain noticeably better than one (a TIES merge: to about
# two thirds) gets the entrywise test; an unrelated change leaves the ratio at one.
SCREEN = 0.9
# TIES keeps each change's largest entries: those it kept are on average several times larger
# than those it dropped; DARE drops at random (ratio about 1).
TIES_MAGNITUDE = 2.0
MERGE_CANDIDATES = 6         # the closest models tried as parents, in sets of two and three
# A layer closer than this (relative Gram distance) to a parent's layer was taken from it.
COPIED_LAYER = 0.02
COPY_MARGIN = 0.1           # ... and ten times closer to it than to the next candidate


class RowSpace:
    """Inner products of several same-shape models' kept rows (raw W_q and W_k as stored), per
    kept layer and in total, float64."""

    def __init__(self, digests):
        self.names = list(digests)
        self.layers = row_layers(next(iter(digests.values())).num_layers)
        count = len(self.names)
        self.per_tensor = np.zeros((len(self.layers), 2, count, count))          # (kept layer, W_q / W_k, model, model)
        rows = {name: digest.kept_rows() for name, digest in digests.items()}
        for position, layer in enumerate(self.layers):
            for kind in (0, 1):
                vectors = [rows[name][layer][kind].double().reshape(-1) for name in self.names]
                for i, j in itertools.combinations_with_replacement(range(count), 2):
                    self.per_tensor[position, kind, i, j] = self.per_tensor[position, kind, j, i] = float(vectors[i] @ vectors[j])
        self.per_layer = self.per_tensor.sum(1)
        self.total = self.per_layer.sum(0)
        self._rows, self._samples = rows, None

    @property
    def samples(self):
        """The same entries of every model's rows, flattened (for the entrywise merge test; drawn
        on first use: most row spaces only measure distances)."""
        if self._samples is None:
            self._samples = self._draw_samples(self._rows)
        return self._samples

    def _draw_samples(self, rows):
        flat = {name: torch.cat([rows[name][layer][kind].float().reshape(-1) for layer in self.layers for kind in (0, 1)])
                for name in self.names}
        size = next(iter(flat.values())).numel()
        picked = torch.randperm(size, generator=torch.Generator().manual_seed(0))[:SAMPLED_ENTRIES]
        return {name: values[picked] for name, values in flat.items()}

    def index(self, name):
        return self.names.index(name)

    def distance(self, a, b, gram=None):
        """||R_a - R_b|| / sqrt(||R_a|| ||R_b||): how far apart the weights are (0 for a copy)."""
        g = self.total if gram is None else gram
        i, j = self.index(a), self.index(b)
        return float(np.sqrt(max(0.0, g[i, i] + g[j, j] - 2 * g[i, j]) / np.sqrt(g[i, i] * g[j, j])))

    def turn(self, parent, middle, child):
        """Cosine of the angle at `middle` between the steps to `parent` and to `child`. Along a
        chain parent -> middle -> child the child keeps the middle's change and adds its own, so
        the angle is right or obtuse (<= 0); a child that moves partly back toward the parent
        (> 0) did not start from the middle."""
        g = self.total
        p, m, c = self.index(parent), self.index(middle), self.index(child)
        inner = g[p, c] - g[p, m] - g[m, c] + g[m, m]
        back, out = g[p, p] - 2 * g[p, m] + g[m, m], g[c, c] - 2 * g[c, m] + g[m, m]
        return float(inner / np.sqrt(back * out)) if back > 0 and out > 0 else 0.0

    def fit(self, child, parents, gram=None):
        """Least-squares child ~ sum_k w_k parent_k: (weights, residual / ||child||)."""
        g = self.total if gram is None else gram
        c, p = self.index(child), [self.index(name) for name in parents]
        normal, target = g[np.ix_(p, p)], g[p, c]
        weights = np.linalg.lstsq(normal, target, rcond=None)[0]
        residual = g[c, c] - 2 * weights @ target + weights @ normal @ weights
        return weights, float(np.sqrt(max(0.0, residual) / g[c, c]))


@dataclass
class MergeFit:
    parents: list
    weights: list           # fitted coefficients, in the parents' order (None: not a linear combination)
    residual: float         # what the fit leaves unexplained, relative
    single: str             # the best single parent
    single_residual: float
    base: str = None        # the base of an entrywise (TIES / DARE) merge
    per_tensor: list = None     # [(layer, "q" / "k", [weight per parent])] when the coefficients vary by tensor
    densities: list = None      # entrywise merges: the share of each parent's change kept
    method: str = None          # "linear", "task arithmetic", "per-tensor linear" (SLERP, gradients), "TIES", "DARE"


def best_merge(space, child, candidates):
    """The parents `child` is a merge of, or None: a weighted average with positive weights that
    leaves almost nothing of the best single parent's residual (one set of coefficients, or one
    per W_q / W_k tensor as SLERP and mergekit's layer gradients give), else the entrywise
    signature of a trimmed or sign-elected merge of two candidates over a third."""
    singles = {name: space.fit(child, [name])[1] for name in candidates}
    if len(singles) < 2:
        return None
    single = min(singles, key=singles.get)
    if singles[single] <= SAME_WEIGHTS:
        return None
    closest = sorted(candidates, key=lambda name: space.distance(child, name))[:MERGE_CANDIDATES]
    best = None
    for size in (2, 3):                      # the fewest parents that explain it
        for parents in itertools.combinations(closest, size):
            weights, residual = space.fit(child, list(parents))
            if min(weights) >= MIN_WEIGHT and (best is None or residual < best.residual):
                best = MergeFit(list(parents), [float(w) for w in weights], residual, single, singles[single], method="linear")
        if best is not None and best.residual <= LINEAR_FIT * best.single_residual:
            return best
    task = task_arithmetic(space, child, closest, single, singles[single])
    if task is not None:
        return task
    varying = per_tensor_merge(space, child, closest, single, singles[single])
    if varying is not None:
        return varying
    if best is None or best.residual > SCREEN * best.single_residual:
        return None                          # no two parents explain much: not worth the entrywise test
    return entrywise_merge(space, child, closest, single, singles[single])


def task_arithmetic(space, child, closest, single, single_residual):
    """Task arithmetic: child = base + l1 (p1 - base) + l2 (p2 - base), the scales summing past
    one (else it is a plain weighted average), so the base's coefficient 1 - l1 - l2 is
    negative. Returns the fit with the parents' scales as weights and the base named."""
    best = None
    for base in closest:
        others = [name for name in closest if name != base]
        for first, second in itertools.combinations(others, 2):
            weights, residual = space.fit(child, [base, first, second])
            if weights[0] < -MIN_WEIGHT and min(weights[1:]) >= MIN_WEIGHT and (best is None or residual < best.residual):
                best = MergeFit([first, second], [float(w) for w in weights[1:]], residual, single, single_residual,
                                base=base, method="task arithmetic")
    return best if best is not None and best.residual <= LINEAR_FIT * single_residual else None


def per_tensor_merge(space, child, closest, single, single_residual):
    """A linear merge whose coefficients change from tensor to tensor (SLERP is per tensor a
    weighted sum of its two ends; mergekit spreads t over the layers): each kept W_q / W_k
    fitted on its own, the residuals pooled. Every parent weighs at least MIN_WEIGHT somewhere
    and no coefficient is clearly negative."""
    best = None
    for size in (2, 3):
        if best is not None and best.residual <= LINEAR_FIT * single_residual:
            break                            # the fewest parents that explain it
        for parents in itertools.combinations(closest, size):
            fits, left = [], 0.0
            for position, layer in enumerate(space.layers):
                for kind in (0, 1):
                    gram = space.per_tensor[position, kind]
                    weights, residual = space.fit(child, list(parents), gram)
                    fits.append((layer, "qk"[kind], [float(w) for w in weights]))
                    left += residual ** 2 * gram[space.index(child), space.index(child)]
            residual = float(np.sqrt(left / space.total[space.index(child), space.index(child)]))
            weights = np.array([w for *_, w in fits])
            if weights.min() < -MIN_WEIGHT or weights.max(0).min() < MIN_WEIGHT:
                continue
            if best is None or residual < best.residual:
                best = MergeFit(list(parents), [float(w) for w in weights.mean(0)], residual, single, single_residual,
                                per_tensor=fits, method="per-tensor linear")
    return best if best is not None and best.residual <= LINEAR_FIT * single_residual else None


def entrywise_merge(space, child, closest, single, single_residual):
    """TIES / DARE: over a base b, each entry of child - b is 0, one parent's change, or the
    parents' mean, up to one global scale. Tried with parents and base among the closest models."""
    sample = space.samples
    best = None
    for first, second in itertools.combinations(closest[:3], 2):
        for base in closest:
            if base in (first, second):
                continue
            change = sample[child] - sample[base]
            options = torch.stack([torch.zeros_like(change), sample[first] - sample[base], sample[second] - sample[base]])
            if min(_scaled_residual(change, option) for option in options[1:]) <= SCALED_COPY:
                continue                     # a scaled copy of one change: a linear relation, not a merge of two
            both = options[1:2] + options[2:3]
            options = torch.cat([options, both / 2, both])          # TIES averages agreeing entries, DARE adds them
            residual, picked = _entrywise_residual(change, options)
            if best is None or residual < best.residual:
                best = MergeFit([first, second], None, residual, single, single_residual, base)
                best.method, best.densities = _trimming(options[1:3], picked)
    return best if best is not None and best.residual <= ENTRYWISE_FIT else None


def _trimming(changes, picked):
    """How each parent's change was thinned, from the entries the merge kept of it (picked: per
    entry 0 none, 1 / 2 one parent, 3 / 4 both): TIES keeps the largest entries, so the kept share
    is the share above the smallest kept magnitude; DARE keeps entries at random, so its kept
    share is the density itself. (method, [density per parent])."""
    densities, ratios = [], []
    for k, change in enumerate(changes):
        kept = (picked == k + 1) | (picked >= 3)
        magnitude = change.abs()
        if not kept.any() or kept.all():
            densities.append(float(kept.float().mean()))
            ratios.append(1.0)
            continue
        ratios.append(float(magnitude[kept].mean() / magnitude[~kept].mean().clamp_min(1e-30)))
        floor = torch.quantile(magnitude[kept], 0.01)
        densities.append(float((magnitude >= floor).float().mean()))
        if ratios[-1] < TIES_MAGNITUDE:
            densities[-1] = float(kept.float().mean())
    method = "TIES" if min(ratios) >= TIES_MAGNITUDE else "DARE"
    return method, [round(d, 3) for d in densities]


def _scaled_residual(change, option):
    scale = float(option @ change) / max(float(option @ option), 1e-30)
    return float((change - scale * option).norm() / change.norm().clamp_min(1e-30))


def _entrywise_residual(change, options, rounds=3):
    """Per entry the nearest option, with one global scale refitted a few times: the share of
    the change's norm the best choice leaves, and the option picked per entry."""
    scale = 1.0
    for _ in range(rounds):
        picked = options.mul(scale).sub(change).abs().argmin(0)
        chosen = options.gather(0, picked[None]).squeeze(0)
        norm = float(chosen @ chosen)
        if norm > 0:
            scale = float(chosen @ change) / norm
    left = change - scale * chosen
    return float(left.norm() / change.norm().clamp_min(1e-30)), picked


def per_layer_sources(space, child, candidates):
    """For each kept layer, the candidate the child's layer is closest to, whether it is a copy of
    it: a layer-wise merge takes different layers from different parents, each nearly verbatim
    (within COPIED_LAYER, and much closer to its source than to any other candidate: a layer
    interpolated between relatives is close to all of them)."""
    sources = []
    for position in range(len(space.layers)):
        gram = space.per_layer[position]
        distances = sorted((space.distance(child, name, gram), name) for name in candidates)
        nearest, name = distances[0]
        runner_up = distances[1][0] if len(distances) > 1 else float("inf")
        sources.append((name, nearest <= COPIED_LAYER and nearest <= COPY_MARGIN * runner_up))
    return sources


SKETCH_COLUMNS = 32         # a Gram is compared through K S, S a fixed random d x 32 matrix


def _sketch(kernels, probe):
    """W_q and W_k Grams of one layer through the probe: distances between sketches track the
    distances between the Grams (exactly 0 for a copied layer) at a fraction of the memory."""
    return torch.cat([kernels.query.float() @ probe, kernels.key.float() @ probe], dim=1)


def _sketch_distance(a, b):
    return float((a - b).norm() / (a.norm() * b.norm()).sqrt().clamp_min(1e-30))


def layer_sources(child, parents):
    """Every layer of the child with the parent layer it came from: [(parent, layer, distance,
    CKA %)] per child layer, from the W_q / W_k Grams (a shared hidden basis is assumed).
    parents: {name: digest}. Each parent layer is read once; the CKA of each chosen pair once."""
    probe = torch.randn(child.hidden_size, SKETCH_COLUMNS, generator=torch.Generator().manual_seed(0))
    child_sketches = [_sketch(child.layer(j), probe.to(child.device)) for j in range(child.num_layers)]
    best = [None] * child.num_layers
    for name, digest in parents.items():
        for i in range(digest.num_layers):
            sketch = _sketch(digest.layer(i), probe.to(digest.device))
            for j, own in enumerate(child_sketches):
                distance = _sketch_distance(own, sketch)
                if best[j] is None or distance < best[j][2]:
                    best[j] = (name, i, distance)
    sources = []
    for j, (name, i, distance) in enumerate(best):
        own, other = child.layer(j), parents[name].layer(i)
        score = 50.0 * sum(cka.u_cka(cka.Kernel(x, symmetric=True), cka.Kernel(y, symmetric=True))
                           for x, y in ((own.query, other.query), (own.key, other.key)))
        sources.append((name, i, distance, round(score, 4)))
    return sources


def gram_distance(a, b, layers):
    """How far two same-shape models' W_q / W_k Grams lie apart over `layers`, relative: blind to
    how each stores the rows of a head (a GGUF's rotary row order, a quantizer's row permutation),
    so a quantized copy is measured against float models as against its own kind."""
    total = own_a = own_b = 0.0
    for layer in layers:
        ka, kb = a.layer(layer), b.layer(layer)
        for x, y in ((ka.query, kb.query), (ka.key, kb.key)):
            x, y = x.double(), y.double().to(x.device)
            total += float((x - y).pow(2).sum())
            own_a, own_b = own_a + float(x.pow(2).sum()), own_b + float(y.pow(2).sum())
    return (total / max((own_a * own_b) ** 0.5, 1e-300)) ** 0.5


def layer_records(traced):
    """layer_sources' answer as the tree records it: [{"layer", "source", "source_layer", "score"}]."""
    return [{"layer": j, "source": name, "source_layer": i, "score": score} for j, (name, i, _, score) in enumerate(traced)]
