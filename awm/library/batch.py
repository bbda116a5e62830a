"""One digest against many: its layers read once for all the equal-depth pairs of a batch."""
from tqdm import tqdm

from awm import allocator
from awm.comparison.pair import RESIDUAL, PairScoring, digest_work, pair_record
from awm.errors import AwmError
from awm.witnesses.verdict import PAPER_NULL


def compare_many(shared, openers, device, null=PAPER_NULL, progress=False, residual="auto"):
    """compare(shared, other) for every digest that an opener returns, with the shared
    digest's layers read once for all equal-depth pairs: layer i of every pair is scored
    before layer i + 1 is read. The others are opened one at a time and keep only what the
    layer pass needs after their alignment, so memory does not grow with their number.

    Returns one JSON-ready report per opener (as compare_digests), or the AwmError that pair
    met (the others go on).
    """
    outcomes, pairs = [None] * len(openers), {}
    for number, opener in enumerate(tqdm(openers, desc="alignments", unit="model", leave=False, disable=None if progress else True)):
        try:
            other = opener()
            pairs[number] = PairScoring(shared, other, device)
            other.release_embedding()
        except AwmError as err:
            outcomes[number] = err
    with allocator.reusing_freed_memory():
        _layer_passes(shared, pairs, outcomes, lambda pair: pair.groups(residual), progress)
        for number, pair in pairs.items():          # the strongest witness, the body's when the embedding is none
            if outcomes[number] is None:
                try:
                    pair.settle(null, progress)
                except AwmError as err:
                    outcomes[number] = err
        if residual == "auto":
            needing = {n: p for n, p in pairs.items() if outcomes[n] is None and p.needs_residual(null)}
            _layer_passes(shared, needing, outcomes, lambda pair: (RESIDUAL,), progress)
    # The shared digest's reading is split evenly over the pairs that used it.
    scored = [n for n in pairs if outcomes[n] is None]
    shared_work = [seconds / max(1, len(scored)) for seconds in digest_work(shared)]
    for number in scored:
        pair = pairs[number]
        result = pair.result([own + part for own, part in zip(digest_work(pair.digest_b), shared_work)])
        outcomes[number] = pair_record(result, shared, pair.digest_b, device, null)
    return outcomes


def _layer_passes(shared, pairs, outcomes, groups_of, progress):
    """Fill the similarities of {number: PairScoring}: equal-depth pairs in one pass over the
    shared digest's layers, the others each in a pass of its own."""
    equal = {n: p for n, p in pairs.items() if p.same_depth}
    bar = dict(disable=None if progress else True, leave=False, unit="layer")
    for i in tqdm(range(shared.num_layers) if equal else (), desc=f"layers ({len(equal)} models)", **bar):
        going = [(n, p) for n, p in equal.items() if outcomes[n] is None]
        if not going:
            break                       # every pair has failed: the shared layers are not needed
        kernels = shared.layer(i)
        for number, pair in going:
            try:
                pair.add_layer(i, kernels, pair.digest_b.layer(i), groups_of(pair))
            except AwmError as err:
                outcomes[number] = err
    for number, pair in pairs.items():
        if number not in equal:
            try:
                pair.pass_over_layers(groups_of(pair), progress)
            except AwmError as err:
                outcomes[number] = err
