"""The entrywise signature of trimmed and sign-elected merges (TIES, DARE, DARE-TIES), as merge
tools save them: over a base b, each entry of the child's change is zero (dropped), one parent's
change times that parent's scale (the only one kept, or the only one of the elected sign), or
both parents' changes mixed with their weights. The scales differ by parent (unequal weights,
DARE's 1 / density), so they are fitted, not assumed; what storage rounding leaves (a bf16 save
rounds each entry by up to half a unit) is not counted against the fit.
"""
import itertools
from dataclasses import dataclass

import torch

from awm.tree.copies import unit

ENTRYWISE_FIT = 0.1          # the share of the change a merge may leave unexplained, rounding aside
SCALED_COPY = 0.5            # one parent's change, scaled, explaining this much makes it a linear relation
REAL_CHANGE = 0.5            # the change must be mostly above storage rounding: a rounding-sized change fits anything
# TIES keeps each change's largest entries: those it kept are on average several times larger
# than those it dropped; DARE drops at random (ratio about 1).
TIES_MAGNITUDE = 2.0
# Where both parents' entries survive, a sign election (TIES, DARE-TIES) keeps only pairs of one
# sign; a plain sum (DARE) keeps about half of opposite signs.
ELECTED_SIGNS = 0.05
# Per base, the relatives whose changes point most along the child's: other merges of the same
# parents point along it too, so more than two are tried.
PARENT_CANDIDATES = 6
# A merge drops entries or keeps one parent's alone in a good share of them; a mix of both
# changes in nearly every entry is a weighted average over the base (the linear tests' case).
MIXED_EVERYWHERE = 0.9
SCREEN_ENTRIES = 1 << 12     # the entries every choice of base and parents is screened on (one start) ...
SCREEN_FIT = 2 * ENTRYWISE_FIT   # ... leaving at most this
REFITTED = 3                 # the best screened choices, fitted on every sampled entry
STARTS = ((1.0, 1.0, 0.5, 0.5), (2.0, 2.0, 1.0, 1.0), (1.0, 1.0, 1.0, 1.0))   # s1, s2, t1, t2 to refit from
BASE_CANDIDATES = 3          # bases tried besides the nearest models: those the child equals most often
CONSISTENT = 0.15            # how far fitted scales may stray from a merge formula (densities are estimates)
ROUNDS = 6                   # alternations of per-entry choice and scale fits


@dataclass
class EntrywiseFit:
    parents: list
    base: str
    residual: float             # the share of the change left unexplained, rounding aside
    method: str                 # "TIES", "DARE" or "DARE-TIES"
    weights: list               # each parent's weight, as the merge's configuration gives it
    densities: list             # the share of each parent's change kept


def entrywise_merge(space, child, candidates, bases):
    """The best TIES / DARE explanation of `child` (EntrywiseFit) within ENTRYWISE_FIT, or None.
    Each base in `bases` is tried with the PARENT_CANDIDATES relatives (from all `candidates`)
    whose changes from it point most along the child's: the parents need not be the nearest
    models. Every choice is screened on a share of the sampled entries, the best few fitted on all."""
    sample = space.samples
    tolerance = _tolerance(sample[child], space.stored_bits(child))
    screened = []
    for base in dict.fromkeys([*bases, *_unchanged_in_most(sample, child, candidates)]):
        change = sample[child] - sample[base]
        if _left(change, tolerance).norm() <= REAL_CHANGE * change.norm():
            continue                         # a change of rounding size: nothing to read
        for first, second in itertools.combinations(_aligned_parents(space, child, base, candidates), 2):
            deltas = torch.stack([sample[first] - sample[base], sample[second] - sample[base]])
            if min(_scaled_residual(change, delta) for delta in deltas) <= SCALED_COPY:
                continue                     # a scaled copy of one change: a linear relation, not a merge of two
            part = slice(0, SCREEN_ENTRIES)
            left = _fit(change[part], deltas[:, part], tolerance[part], starts=STARTS[:1])[0]
            if left <= SCREEN_FIT:
                screened.append((left, base, first, second))
    best = None
    for _, base, first, second in sorted(screened)[:REFITTED]:
        change = sample[child] - sample[base]
        deltas = torch.stack([sample[first] - sample[base], sample[second] - sample[base]])
        residual, picked, scales = _fit(change, deltas, tolerance)
        if residual > ENTRYWISE_FIT or (best is not None and residual >= best.residual):
            continue
        if float((picked == 3).float().mean()) > MIXED_EVERYWHERE:
            continue                         # both changes mixed in every entry: a linear relation
        method, kept = _trimming(deltas * torch.tensor(scales[:2])[:, None], picked, tolerance)
        formula = _formula(scales, kept, method)
        if formula is not None:
            best = EntrywiseFit([first, second], base, residual, method, *formula)
    return best


def _formula(scales, kept, method):
    """(weights, densities) when the fitted scales fit a merge tool's formula, else None.
    Without normalisation an entry keeping one change carries it as a mix of both would
    (s_k = t_k): the weights are t_k times the density (DARE's rescale undone). Normalised by the
    weights of the changes an entry keeps, a change kept alone carries only its rescale (s_k =
    1 / density, 1 for TIES) and the mix's weights t_k / s_k sum to one; a sign election only
    drops entries, so no change is kept more often than its density. The other end of the same
    pattern (the base read as a merge of the merge's parents over the merge) fits neither."""
    s1, s2, t1, t2 = scales
    rescale = [1.0, 1.0] if method == "TIES" else kept
    if max(abs(t1 - s1) / s1, abs(t2 - s2) / s2) <= CONSISTENT:
        return [round(t * r, 3) for t, r in zip((t1, t2), rescale)], kept
    density = [1 / s1, 1 / s2]
    if abs(t1 / s1 + t2 / s2 - 1) > CONSISTENT:
        return None
    if method == "TIES" and max(abs(s1 - 1), abs(s2 - 1)) > CONSISTENT:
        return None
    if method != "TIES" and any(share > d * (1 + CONSISTENT) for share, d in zip(kept, density)):
        return None
    return [round(t1 / s1, 3), round(t2 / s2, 3)], (kept if method == "TIES" else [round(d, 3) for d in density])


def _tolerance(values, bits):
    """Each entry's storage rounding: one unit of the child's format (none for float32 and finer)."""
    if bits is None or bits >= 23:
        return torch.zeros_like(values)
    return unit(values.double(), bits).float()


def _unchanged_in_most(sample, child, candidates):
    """The relatives the child equals exactly in the most entries: a trimmed merge leaves its
    base's value wherever it dropped every change, however far the base lies in weight space."""
    equal = {name: float((sample[child] == sample[name]).float().mean()) for name in candidates if name != child}
    return sorted(equal, key=equal.get, reverse=True)[:BASE_CANDIDATES]


def _aligned_parents(space, child, base, candidates):
    """The relatives whose change from `base` has the largest cosine with the child's (Grams only)."""
    g, i = space.total, space.index
    c, b = i(child), i(base)

    def cosine(name):
        p = i(name)
        inner = g[c, p] - g[c, b] - g[b, p] + g[b, b]
        norms = (g[c, c] - 2 * g[c, b] + g[b, b]) * (g[p, p] - 2 * g[p, b] + g[b, b])
        return inner / norms ** 0.5 if norms > 0 else -1.0
    others = [name for name in candidates if name not in (child, base)]
    return sorted(others, key=cosine, reverse=True)[:PARENT_CANDIDATES]


def _fit(change, deltas, tolerance, starts=None):
    """Per entry the nearest of 0, s1 d1, s2 d2, t1 d1 + t2 d2, the four scales refitted in turns
    from a few starts: (residual share, option picked per entry, [s1, s2, t1, t2])."""
    best = None
    for start in starts or STARTS:
        scales = list(start)
        for _ in range(ROUNDS):
            options = _options(deltas, scales)
            picked = (options - change).abs().argmin(0)
            scales = _refit(change, deltas, picked, scales)
        options = _options(deltas, scales)
        picked = (options - change).abs().argmin(0)
        chosen = options.gather(0, picked[None]).squeeze(0)
        residual = float(_left(change - chosen, tolerance).norm() / change.norm().clamp_min(1e-30))
        if min(scales) <= 0:
            residual = float("inf")          # a merge adds its parents' changes: never takes one away
        if best is None or residual < best[0]:
            best = (residual, picked, scales)
    return best


def _options(deltas, scales):
    s1, s2, t1, t2 = scales
    return torch.stack([torch.zeros_like(deltas[0]), s1 * deltas[0], s2 * deltas[1], t1 * deltas[0] + t2 * deltas[1]])


def _refit(change, deltas, picked, scales):
    """Least-squares scales for the entries each option took (kept where an option took none)."""
    s1, s2, t1, t2 = scales
    for k in (0, 1):
        mask = picked == k + 1
        d = deltas[k][mask].double()
        if float(d @ d) > 0:
            fitted = float(d @ change[mask].double()) / float(d @ d)
            s1, s2 = (fitted, s2) if k == 0 else (s1, fitted)
    mask = picked == 3
    if int(mask.sum()) >= 2:
        a = deltas[:, mask].double().T
        solution = torch.linalg.lstsq(a, change[mask].double()[:, None]).solution.squeeze(1)
        t1, t2 = float(solution[0]), float(solution[1])
    return [s1, s2, t1, t2]


def _left(difference, tolerance):
    """What a difference holds beyond storage rounding."""
    return torch.sign(difference) * (difference.abs() - tolerance).clamp_min(0)


def _trimming(deltas, picked, tolerance):
    """How each parent's change was thinned, from the entries the merge kept of it (picked: per
    entry 0 none, 1 / 2 one parent, 3 both): TIES keeps the largest entries, so the kept share
    is the share above the smallest kept magnitude; DARE keeps entries at random, so its kept
    share is the density itself, counted where a kept entry could be told from a dropped one (a
    bf16 parent's smallest changes round to nothing). Both kept with opposite signs: no sign
    election. deltas: each parent's change times its own scale. (method, densities)."""
    densities, ratios = [], []
    for k, delta in enumerate(deltas):
        visible = delta.abs() > 2 * tolerance
        delta, own = delta[visible], picked[visible]
        kept = (own == k + 1) | (own == 3)
        magnitude = delta.abs()
        if not kept.any() or kept.all():
            densities.append(float(kept.float().mean()))
            ratios.append(1.0)
            continue
        ratios.append(float(magnitude[kept].mean() / magnitude[~kept].mean().clamp_min(1e-30)))
        floor = torch.quantile(magnitude[kept], 0.01)
        densities.append(float((magnitude >= floor).float().mean()))
        if ratios[-1] < TIES_MAGNITUDE:
            densities[-1] = float(kept.float().mean())
    if min(ratios) >= TIES_MAGNITUDE:
        return "TIES", [round(d, 3) for d in densities]
    both = (picked == 3) & (deltas[0] != 0) & (deltas[1] != 0)
    opposite = float((torch.sign(deltas[0][both]) != torch.sign(deltas[1][both])).float().mean()) if both.any() else 0.0
    return ("DARE-TIES" if opposite <= ELECTED_SIGNS else "DARE"), [round(d, 3) for d in densities]


def _scaled_residual(change, option):
    scale = float(option @ change) / max(float(option @ option), 1e-30)
    return float((change - scale * option).norm() / change.norm().clamp_min(1e-30))
