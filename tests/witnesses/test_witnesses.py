"""Witnesses for the alignment beyond the embedding's permutation: the embedding's rotation and
the body's permutation. Each is checked on its own against planted truths and on independent
data, then end to end on pairs whose embedding no longer carries the lineage."""
import factory
import numpy as np
import pytest
import surgery
import torch

from awm.comparison.alignment import common_axes
from awm.comparison.digest import LayerKernels, digest_path, qk_circuit
from awm.comparison.pair import compare_digests
from awm.method.embedding_stats import principal_axes
from awm.readers.architectures import Heads
from awm.witnesses import body_alignment as body
from awm.witnesses import body_rows, embedding_rotation, verdict

CPU = torch.device("cpu")


def anisotropic_embedding(generator, tokens=6000, hidden=48):
    """Rows with a dominant shared direction and outlier dims, like a trained embedding."""
    scales = torch.exp(0.6 * torch.randn(hidden, generator=generator))
    rows = torch.randn(tokens, hidden, generator=generator) * scales
    return rows + 3.0 * torch.randn(tokens, 1, generator=generator) * torch.randn(1, hidden, generator=generator)


def axes(embedding):
    return principal_axes(embedding.float(), common_axes(embedding.shape[1]))


def rotation_fit(base, target):
    ids = torch.arange(base.shape[0])
    return embedding_rotation.fit(base, ids, target, ids, axes(base), axes(target), CPU)


# ----------------------------------------------------------------------------- the embedding's rotation
def test_polar_is_the_nearest_matrix_with_orthonormal_columns():
    generator = torch.Generator().manual_seed(0)
    matrix = torch.randn(12, 7, generator=generator, dtype=torch.float64)
    nearest = embedding_rotation.polar(matrix)
    torch.testing.assert_close(nearest.t() @ nearest, torch.eye(7, dtype=torch.float64))
    # Procrustes: it maximises <Q, M> over orthonormal Q; random ones never do better.
    best = (nearest * matrix).sum()
    for _ in range(50):
        other = torch.linalg.qr(torch.randn(12, 7, generator=generator, dtype=torch.float64))[0]
        assert (other * matrix).sum() <= best


def test_polar_falls_back_to_float64_when_the_float32_svd_does_not_converge(monkeypatch):
    svd = torch.linalg.svd

    def fails_in_float32(matrix, **kwargs):
        if matrix.dtype == torch.float32:
            raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")
        return svd(matrix, **kwargs)

    matrix = torch.randn(12, 7, generator=torch.Generator().manual_seed(1))
    expected = embedding_rotation.polar(matrix)
    monkeypatch.setattr(torch.linalg, "svd", fails_in_float32)
    nearest = embedding_rotation.polar(matrix)
    assert nearest.dtype == torch.float32
    torch.testing.assert_close(nearest, expected, atol=1e-5, rtol=1e-5)


def test_second_moments_equal_the_direct_covariances():
    generator = torch.Generator().manual_seed(1)
    a, b = torch.randn(700, 6, generator=generator) + 1.0, torch.randn(700, 4, generator=generator)
    moments = embedding_rotation.SecondMoments(a, b, CPU, chunk_rows=160)
    c_aa, c_bb, c_ab = moments.covariances()
    joint = torch.cov(torch.cat([a, b], dim=1).double().t(), correction=0)
    close = dict(atol=1e-5, rtol=0)            # float32 block products, float64 sums
    torch.testing.assert_close(c_aa, joint[:6, :6], **close)
    torch.testing.assert_close(c_bb, joint[6:, 6:], **close)
    torch.testing.assert_close(c_ab, joint[:6, 6:], **close)


def test_a_rotated_embedding_is_recovered_and_confirmed_dim_by_dim():
    generator = torch.Generator().manual_seed(2)
    base = anisotropic_embedding(generator)
    rotation = torch.linalg.qr(torch.randn(48, 48, generator=generator))[0]
    target = base @ rotation + 0.05 * torch.randn(base.shape, generator=generator)     # rotated, then fine-tuned a little
    found, test = rotation_fit(base, target)
    assert (found - rotation).abs().max() < 0.05
    assert test.fraction > 0.8 and test.p_value <= verdict.CORRESPONDENCE_P


def test_a_sliced_rotation_maps_onto_fewer_dims():
    generator = torch.Generator().manual_seed(3)
    base = anisotropic_embedding(generator)
    sliced = torch.linalg.qr(torch.randn(48, 48, generator=generator))[0][:, :40]
    found, test = rotation_fit(base, base @ sliced)
    assert found.shape == (48, 40) and (found - sliced).abs().max() < 1e-3
    assert test.p_value <= verdict.CORRESPONDENCE_P


def test_independent_anisotropic_embeddings_confirm_no_rotation():
    for seed in range(4):
        generator = torch.Generator().manual_seed(10 + seed)
        _, test = rotation_fit(anisotropic_embedding(generator), anisotropic_embedding(generator))
        assert test.p_value > verdict.CORRESPONDENCE_P and test.matched_dims <= 2


# ----------------------------------------------------------------------------- the body's permutation
def gram_kernels(tensors, layer, perm=None, sign=None):
    w_q, w_k = (tensors[f"model.layers.{layer}.self_attn.{p}_proj.weight"].double() for p in ("q", "k"))
    if perm is not None:
        w_q, w_k = w_q[:, perm] * sign, w_k[:, perm] * sign
    return LayerKernels(w_q.t() @ w_q, w_k.t() @ w_k, qk_circuit(w_q, w_k, Heads(4, 2, w_q.shape[0] // 4), dtype=torch.float64))


def structured_tensors(seed, hidden=96, layers=8):
    """Attention weights whose hidden dims differ from layer to layer (per-layer column
    scales), as a trained body's do: the profiles have something to tell apart."""
    tensors = factory.random_llama_tensors(hidden=hidden, layers=layers, heads=4, kv_heads=2, vocab=50, seed=seed)
    generator = torch.Generator().manual_seed(100 + seed)
    for name in list(tensors):
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            tensors[name] = tensors[name] * torch.exp(0.7 * torch.randn(hidden, generator=generator))
    return tensors


def test_profiles_do_not_see_the_order_or_signs_of_the_dims():
    tensors = structured_tensors(0)
    generator = torch.Generator().manual_seed(1)
    perm, sign = torch.randperm(96, generator=generator), torch.where(torch.rand(96, generator=generator) < 0.5, -1.0, 1.0)
    plain = body.layer_profile(gram_kernels(tensors, 2))
    moved = body.layer_profile(gram_kernels(tensors, 2, perm, sign.double()))
    torch.testing.assert_close(moved, plain[perm], atol=1e-5, rtol=1e-4)      # float32 features


def test_the_body_finds_a_permuted_fine_tuned_copy_and_its_signs():
    tensors = structured_tensors(0)
    generator = torch.Generator().manual_seed(2)
    tuned = {k: v + 0.1 * v.std() * torch.randn(v.shape, generator=generator) for k, v in tensors.items()}
    perm, sign = torch.randperm(96, generator=generator), torch.where(torch.rand(96, generator=generator) < 0.5, -1.0, 1.0)
    base = [gram_kernels(tensors, i) for i in range(8)]
    target = [gram_kernels(tuned, i, perm, sign.double()) for i in range(8)]
    match = body.match_dims([body.layer_profile(k) for k in target], [body.layer_profile(k) for k in base])
    assert match.test.p_value <= verdict.CORRESPONDENCE_P and match.test.fraction > 0.5
    assert torch.equal(match.base_index, perm)
    agreement = body.SignAgreement(match.base_index)
    for i in range(0, 8, 2):
        agreement.add(target[i], base[i])
    found = agreement.signs()
    assert torch.equal(found, sign) or torch.equal(found, -sign)          # one global sign is free


def test_independent_bodies_confirm_no_pairing():
    for seed in range(3):
        base = [gram_kernels(structured_tensors(seed), i) for i in range(8)]
        other = [gram_kernels(structured_tensors(seed + 10), i) for i in range(8)]
        match = body.match_dims([body.layer_profile(k) for k in other], [body.layer_profile(k) for k in base])
        assert match.test.p_value > verdict.CORRESPONDENCE_P and match.test.matched_dims <= 2


def test_a_single_layer_leaves_nothing_to_hold_out():
    kernels = gram_kernels(structured_tensors(0, layers=1), 0)
    assert body.match_dims([body.layer_profile(kernels)], [body.layer_profile(kernels)]) is None


def test_sign_layers_spread_over_the_depth_at_the_same_relative_depth():
    assert body.sign_layers(30, 30) == [(0, 0), (10, 10), (19, 19), (29, 29)]
    assert body.sign_layers(4, 2) == [(0, 0), (3, 1)]
    assert body.sign_layers(30, 20)[-1] == (29, 19)


# ----------------------------------------------------------------------------- end to end
def write(tmp_path, name, tensors, hidden=96, vocab=400, tokens=None):
    config = factory.llama_config(hidden, sum(k.endswith("q_proj.weight") for k in tensors), 4, 2, vocab)
    return factory.write_safetensors_model(str(tmp_path / name), tensors, config, tokens or factory.byte_level_tokens(vocab))


def compare(path_a, path_b):
    return compare_digests(digest_path(path_a, CPU), digest_path(path_b, CPU), CPU, verdict.PAPER_NULL, progress=False)


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    tensors = structured_tensors(0)
    tensors["model.embed_tokens.weight"] = anisotropic_embedding(torch.Generator().manual_seed(5), tokens=400, hidden=96)
    return tmp_path_factory.mktemp("parent"), tensors


def test_a_redrawn_embedding_over_the_same_body_is_derived_by_the_body(parent):
    root, tensors = parent
    redrawn = surgery.redraw_embedding(tensors, torch.Generator().manual_seed(6))
    result = compare(write(root, "parent", tensors), write(root, "redrawn", redrawn))
    assert abs(result["scores"]["final"]) < 5.0                          # the paper's score: unchanged method
    assert result["evidence"]["alignment"]["basis"] == "body permutation"
    assert result["aligned_scores"]["final"] > 99.0 and result["verdict"] == "derived"
    assert result["inheritance"] == {"embedding": "not shared", "body": "shared"}
    assert "embedding was redrawn or replaced" in result["verdict_reason"]


def test_a_tokenizer_transplant_sharing_no_token_is_derived_by_the_body(parent):
    root, tensors = parent
    transplant = surgery.redraw_embedding(tensors, torch.Generator().manual_seed(7), rows=300)
    other_tokens = [f"zz{i}\u00e9" for i in range(300)]
    result = compare(write(root, "parent", tensors), write(root, "transplant", transplant, vocab=300, tokens=other_tokens))
    assert result["evidence"]["shared_tokens"] == 0 and result["evidence"]["aligned"] is False
    assert result["evidence"]["alignment"]["basis"] == "body permutation" and result["verdict"] == "derived"
    assert result["inheritance"] == {"embedding": "unknown", "body": "shared"}


def test_a_rotated_residual_stream_is_derived_by_the_embedding_rotation(parent):
    root, tensors = parent
    result = compare(write(root, "parent", tensors), write(root, "rotated", surgery.rotate_residual(tensors, 8)))
    assert result["evidence"]["correspondence"]["p_value"] > verdict.CORRESPONDENCE_P      # no pairing of dims explains it
    assert result["evidence"]["alignment"]["basis"] == "embedding rotation"
    assert result["aligned_scores"]["qk_circuit"] > 99.0 and result["verdict"] == "derived"
    assert result["inheritance"] == {"embedding": "shared", "body": "shared"}


def test_independent_models_with_random_embeddings_stay_independent(parent, tmp_path):
    root, tensors = parent
    other = structured_tensors(3)
    other["model.embed_tokens.weight"] = torch.randn(400, 96, generator=torch.Generator().manual_seed(9))
    result = compare(write(root, "parent", tensors), write(tmp_path, "other", other))
    witnesses = {w["witness"]: w for w in result["evidence"]["alignment"]["witnesses"]}
    assert set(witnesses) == {"embedding permutation", "embedding rotation", "body permutation"}
    assert not any(w["confirmed"] for w in witnesses.values())
    assert result["verdict"] == "independent" and result["aligned_scores"] is None
    assert result["inheritance"] == {"embedding": "not shared", "body": "not shared"}


def test_the_embedding_permutation_needs_no_other_witness(parent, tmp_path):
    root, tensors = parent
    result = compare(write(root, "parent", tensors), write(tmp_path, "copy", factory.permute_sign_scale(tensors)))
    assert [w["witness"] for w in result["evidence"]["alignment"]["witnesses"]] == ["embedding permutation"]
    assert "rotation_s" not in result["timings"]                       # a pass at copy level costs nothing more
    assert result["evidence"]["alignment"]["basis"] == "embedding permutation"
    assert {k: result["scores"][k] for k in result["aligned_scores"]} == result["aligned_scores"]


def test_the_same_grams_from_other_rows_show_an_embedding_inherited_alone(parent, tmp_path):
    """O W has W's Gram for any orthogonal O: the kernels (and the paper's score) cannot tell this
    body from the donor's, its rows can: no row of it is the donor's."""
    root, tensors = parent
    generator = torch.Generator().manual_seed(11)
    mixed = dict(tensors)
    for name, weight in tensors.items():
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            mixed[name] = torch.linalg.qr(torch.randn(weight.shape[0], weight.shape[0], generator=generator))[0] @ weight
    result = compare(write(root, "parent", tensors), write(tmp_path, "mixed", mixed))
    assert result["scores"]["final"] > 99.0                                # identical Grams
    assert result["evidence"]["alignment"]["basis"] == "embedding permutation"
    rows = result["evidence"]["body_weights"]
    assert not rows["confirmed"] and rows["decisive"] and rows["fraction"] < 0.01
    assert result["verdict"] == "inconclusive" and "Only the embedding was inherited" in result["verdict_reason"]
    assert result["inheritance"] == {"embedding": "shared", "body": "not shared"}


def test_a_row_test_too_weak_for_the_score_does_not_overrule_it():
    # Width 128 and a CKA of 4 %: an inherited row would stand about 1.6 sigma out, far below the bound.
    assert body_rows.expected_sigmas(0.04, 128) < 2.0
    assert body_rows.expected_sigmas(0.04, 2048) > 6.0                      # a 1B-wide model would show it


def test_identify_from_stored_entries_finds_the_redrawn_and_the_rotated_copies(parent, tmp_path):
    """The witnesses work on library entries too: stored kernels give the body's profiles and
    signs, stored rows the body-weights test, and batches score them like pairs from weights."""
    from awm.library import identification
    from awm.library import tasks as library_tasks

    root, tensors = parent
    other = structured_tensors(4)
    other["model.embed_tokens.weight"] = anisotropic_embedding(torch.Generator().manual_seed(14), tokens=400, hidden=96)
    entries = [write(tmp_path, "redrawn", surgery.redraw_embedding(tensors, torch.Generator().manual_seed(13))),
               write(tmp_path, "rotated", surgery.rotate_residual(tensors, 12)), write(tmp_path, "other", other)]
    library = str(tmp_path / "lib")
    options = library_tasks.options()
    added = library_tasks.add_models(entries, library, options, CPU)
    assert all("error" not in o for o in added), added
    found = identification.identify(write(root, "parent", tensors), library, options, CPU, verdict.PAPER_NULL)
    by_entry = {r["model_b"]["name"]: r for r in found["matches"]}
    assert by_entry["redrawn"]["evidence"]["alignment"]["basis"] == "body permutation" and by_entry["redrawn"]["verdict"] == "derived"
    assert by_entry["rotated"]["evidence"]["alignment"]["basis"] == "embedding rotation" and by_entry["rotated"]["verdict"] == "derived"
    assert by_entry["rotated"]["evidence"]["body_weights"]["confirmed"]
    assert by_entry["other"]["verdict"] == "independent"


def test_a_rotated_body_under_a_new_embedding_is_derived_by_its_circuit_spectra(parent, tmp_path):
    root, tensors = parent
    disguised = surgery.redraw_embedding(surgery.rotate_residual(tensors, 15), torch.Generator().manual_seed(16))
    result = compare(write(root, "parent", tensors), write(tmp_path, "rotated-redrawn", disguised))
    assert result["evidence"]["alignment"]["basis"] is None                 # no witness pairs the dims
    spectra = result["evidence"]["circuit_spectra"]
    assert spectra["confirmed"] and spectra["distance"] < 1e-3 and spectra["contrast"] < 0.05
    assert result["verdict"] == "derived" and "another residual basis" in result["verdict_reason"]
    assert result["inheritance"] == {"embedding": "not shared", "body": "shared"}


def test_a_depth_pruned_body_under_a_new_embedding_is_derived_by_its_circuit_spectra(parent, tmp_path):
    """Two of eight layers dropped, the residual stream rotated and the embedding redrawn: no
    witness pairs the dims, and the body's witness compares layer i with layer i only; the
    spectra match each kept layer with its own in order."""
    root, tensors = parent
    pruned, _ = surgery.drop_layers(surgery.rotate_residual(tensors, 18), {2, 5})
    disguised = surgery.redraw_embedding(pruned, torch.Generator().manual_seed(19))
    result = compare(write(root, "parent", tensors), write(tmp_path, "pruned-redrawn", disguised))
    spectra = result["evidence"]["circuit_spectra"]
    assert result["evidence"]["alignment"]["basis"] is None
    assert spectra["confirmed"] and tuple(spectra["depths"]) == (6, 8)
    assert result["verdict"] == "derived" and "layers were kept" in result["verdict_reason"]


def test_independent_models_of_different_depth_are_independent(parent, tmp_path):
    """Every derivation two depths allow has a witness that ran: the answer is independent, not
    'no evidence of derivation'."""
    root, tensors = parent
    other = structured_tensors(21, layers=6)
    other["model.embed_tokens.weight"] = torch.randn(400, 96, generator=torch.Generator().manual_seed(22))
    result = compare(write(root, "parent", tensors), write(tmp_path, "other-shallow", other))
    assert not result["evidence"]["circuit_spectra"]["confirmed"]
    assert result["verdict"] == "independent", result["verdict_reason"]


def test_circuit_spectra_match_layers_in_order():
    from awm.witnesses import circuit_spectra

    generator = torch.Generator().manual_seed(17)
    circuits = [torch.randn(64, 64, generator=generator) @ torch.diag(torch.rand(64, generator=generator) ** (k + 1)) for k in range(6)]
    rotation = torch.linalg.qr(torch.randn(64, 64, generator=generator))[0]
    own = np.stack([circuit_spectra.layer_spectrum(c).numpy() for c in circuits])
    rotated = np.stack([circuit_spectra.layer_spectrum(rotation.t() @ c @ rotation).numpy() for c in circuits])
    found = circuit_spectra.match(own, rotated)
    assert found.distance < 1e-4 and found.confirmed
    shuffled = circuit_spectra.match(own, rotated[::-1].copy())      # the same spectra, layers out of order
    assert not shuffled.confirmed and shuffled.distance > 10 * circuit_spectra.COPY_DISTANCE
    pruned = circuit_spectra.match(own, rotated[[0, 2, 3, 5]].copy())   # two layers dropped: matched in order
    assert pruned.confirmed and pruned.distance < 1e-4 and pruned.depths == (4, 6) and pruned.layers == 4
    assert not circuit_spectra.match(own, rotated[[5, 3, 2, 0]].copy()).confirmed   # the same layers out of order


def test_ordered_distance_is_the_best_order_preserving_matching():
    """Against its definition: every way to give each layer of the shallower model its own layer
    of the deeper one, in order, tried one by one."""
    import itertools

    from awm.method import spectra

    generator = np.random.default_rng(3)
    for short, long in ((3, 7), (5, 6), (1, 4), (4, 4)):
        a, b = generator.normal(size=(short, 1, 8)), generator.normal(size=(long, 1, 8))
        a[0, 0, 5:] = np.nan                       # undefined values are left out of a layer's mean
        gap = lambda i, j: np.nanmean(np.abs(a[i, 0] - b[j, 0]))
        slow = min(np.mean([gap(i, j) for i, j in enumerate(chosen)]) for chosen in itertools.combinations(range(long), short))
        assert spectra.ordered_distance(a, b) == pytest.approx(slow) == pytest.approx(spectra.ordered_distance(b, a))


def test_a_block_rotated_copy_rests_on_the_rotation_not_on_the_weak_permutation_pass(tmp_path):
    """96-dim blocks of a 384-wide stream: a quarter of each block's dims stay half in place, so
    the permutation passes below copy level and its AWM score falls under the derived bar; the
    rotation is confirmed at copy level and, kept, calls the copy what it is."""
    from awm.method import disguise

    hidden, vocab, layers = 384, 3000, 2
    tensors = structured_tensors(0, hidden=hidden, layers=layers)
    tensors["model.embed_tokens.weight"] = anisotropic_embedding(torch.Generator().manual_seed(5), tokens=vocab, hidden=hidden)
    rotated = disguise.rotate_residual(tensors, layers, disguise.random_rotation(hidden, torch.Generator().manual_seed(1), block=96))
    result = compare(write(tmp_path, "parent", tensors, hidden, vocab), write(tmp_path, "block-rotated", rotated, hidden, vocab))
    witnesses = {w["witness"]: w for w in result["evidence"]["alignment"]["witnesses"]}
    permutation, rotation = witnesses[verdict.EMBEDDING_PERMUTATION], witnesses[verdict.EMBEDDING_ROTATION]
    assert permutation["confirmed"] and permutation["agreement"] < verdict.COPY_AGREEMENT
    assert not verdict.above_reference(result["scores"]["final"], verdict.PAPER_NULL)       # the permutation's AWM score
    assert rotation["confirmed"] and rotation["agreement"] > permutation["agreement"]
    assert result["evidence"]["alignment"]["basis"] == verdict.EMBEDDING_ROTATION
    assert result["aligned_scores"]["final"] > 90.0 and result["verdict"] == "derived"
    assert result["inheritance"] == {"embedding": "shared", "body": "shared"}


def test_the_strongest_witness_is_the_one_whose_scores_show_derivation_then_the_better_agreement():
    from types import SimpleNamespace

    from awm.comparison.pair import strongest_witness

    def passed(basis, agreement, final):
        return SimpleNamespace(basis=basis, correspondence=SimpleNamespace(agreement=agreement)), {"final": final, "qk_circuit": 0.0}

    high, low = 0.5, 0.004          # fractions: far above and at the null of either alignment
    weak, copy = (verdict.EMBEDDING_PERMUTATION, 0.34), (verdict.EMBEDDING_ROTATION, 0.89)
    assert strongest_witness([passed(*weak, low), passed(*copy, high)], verdict.PAPER_NULL).basis == verdict.EMBEDDING_ROTATION
    assert strongest_witness([passed(*weak, high), passed(*copy, high)], verdict.PAPER_NULL).basis == verdict.EMBEDDING_ROTATION
    assert strongest_witness([passed(*weak, low), passed(*copy, low)], verdict.PAPER_NULL).basis == verdict.EMBEDDING_ROTATION
    # 3 % is derived against the paper's null, not against the rotation's (scores under a fitted map run higher).
    assert strongest_witness([passed(*weak, 0.03), passed(*copy, 0.03)], verdict.PAPER_NULL).basis == verdict.EMBEDDING_PERMUTATION
