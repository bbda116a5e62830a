"""The math against direct implementations of its definitions, and its invariances."""
import itertools

import numpy as np
import pytest
import torch

from awm import method as sm


def hsic_u_statistic(k, l):
    """Song et al. (2012), straight from the definition: the mean over all ordered 4-tuples of
    distinct indices of k_ij l_ij + k_ij l_qr - 2 k_ij l_iq."""
    n = k.shape[0]
    total, count = 0.0, 0
    for i, j, q, r in itertools.permutations(range(n), 4):
        total += k[i, j] * l[i, j] + k[i, j] * l[q, r] - 2 * k[i, j] * l[i, q]
        count += 1
    return total / count


def u_center(matrix):
    """U-centering written out (Szekely & Rizzo 2014), float64."""
    m = matrix.double().clone()
    n = m.shape[0]
    m.diagonal().zero_()
    rows, cols = m.sum(1, keepdim=True), m.sum(0, keepdim=True)
    m = m - rows / (n - 2) - cols / (n - 2) + rows.sum() / ((n - 1) * (n - 2))
    m.diagonal().zero_()
    return m


def cka_by_definition(x, y):
    k, l = (x @ x.T).astype(np.float64), (y @ y.T).astype(np.float64)
    return hsic_u_statistic(k, l) / np.sqrt(hsic_u_statistic(k, k) * hsic_u_statistic(l, l))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_unbiased_hsic_matches_u_statistic_definition(seed):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(9, 5)), rng.normal(size=(9, 7))
    k, l = x @ x.T, y @ y.T
    expected = hsic_u_statistic(k, l)
    assert sm.unbiased_hsic(torch.tensor(k), torch.tensor(l)) == pytest.approx(expected, rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_unbiased_cka_matches_definition(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(8, 6))
    y = x @ rng.normal(size=(6, 4)) + 0.5 * rng.normal(size=(8, 4))  # related, so CKA is not ~0
    expected = cka_by_definition(x, y)
    got = sm.unbiased_cka(torch.tensor(x @ x.T, dtype=torch.float32), torch.tensor(y @ y.T, dtype=torch.float32))
    assert got == pytest.approx(expected, abs=1e-5)


def test_cka_of_weights_uses_hidden_dims_as_samples():
    rng = np.random.default_rng(4)
    w_x, w_y = rng.normal(size=(5, 8)), rng.normal(size=(3, 8))   # (out, hidden)
    expected = cka_by_definition(w_x.T, w_y.T)
    assert sm.cka_of_weights(torch.tensor(w_x), torch.tensor(w_y)) == pytest.approx(expected, abs=1e-6)


def test_u_centering_gives_hsic_as_inner_product():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(12, 4)), rng.normal(size=(12, 6))
    k, l = torch.tensor(x @ x.T), torch.tensor(y @ y.T)
    inner = float((u_center(k) * u_center(l)).sum()) / (12 * 9)
    assert inner == pytest.approx(sm.unbiased_hsic(k, l), rel=1e-9)
    assert sm.u_inner(sm.Kernel(k), sm.Kernel(l)) / (12 * 9) == pytest.approx(inner, rel=1e-9)


@pytest.mark.parametrize("symmetric", [True, False])
def test_u_inner_equals_inner_product_of_u_centered_signed_matrices(symmetric):
    """The sums-only formula against centering explicitly, for signed, non-symmetric (the QK
    circuit) and strongly offset matrices (a large common component cancels in U-centering)."""
    generator = torch.Generator().manual_seed(8)
    a = torch.randn(30, 30, generator=generator, dtype=torch.float64) + 50.0
    b = torch.randn(30, 30, generator=generator, dtype=torch.float64) - 20.0
    if symmetric:
        a, b = a + a.t(), b + b.t()
    sign = torch.where(torch.rand(30, generator=generator) < 0.5, -1.0, 1.0).double()
    signed = a * sign[:, None] * sign[None, :]
    index = torch.randperm(30, generator=generator)[:20]
    selected = signed[index][:, index]
    x, y = sm.Kernel(a, index, sign[index]), sm.Kernel(b[:20, :20])
    assert sm.u_inner(x, y) == pytest.approx(float((u_center(selected) * u_center(b[:20, :20])).sum()), rel=1e-9)
    assert x.norm_squared() == pytest.approx(float(u_center(selected).square().sum()), rel=1e-9)
    assert sm.u_inner(y, x) == pytest.approx(sm.u_inner(x, y), rel=1e-12)
    assert sm.u_inner(x.selected(), y) == pytest.approx(sm.u_inner(x, y), rel=1e-12)
    if symmetric:      # a Gram's column sums taken as its row sums
        x_sym, y_sym = sm.Kernel(a, index, sign[index], symmetric=True), sm.Kernel(b[:20, :20], symmetric=True)
        assert sm.u_inner(x_sym, y_sym) == pytest.approx(sm.u_inner(x, y), rel=1e-12)
        assert x_sym.norm_squared() == pytest.approx(x.norm_squared(), rel=1e-12)


def test_cka_invariant_to_output_rotation_and_scale():
    generator = torch.Generator().manual_seed(0)
    w = torch.randn(32, 40, generator=generator)
    rotation, _ = torch.linalg.qr(torch.randn(32, 32, generator=generator))
    assert sm.cka_of_weights(w, 7.5 * rotation @ w) == pytest.approx(1.0, abs=1e-5)


def test_cka_of_independent_weights_is_near_zero():
    generator = torch.Generator().manual_seed(1)
    values = [sm.cka_of_weights(torch.randn(64, 128, generator=generator), torch.randn(64, 128, generator=generator))
              for _ in range(5)]
    assert abs(np.mean(values)) < 0.02


def test_zero_kernel_gives_undefined_not_a_number_pretending():
    assert np.isnan(sm.unbiased_cka(torch.zeros(6, 6), torch.eye(6)))
    constant = torch.full((6, 6), 3.0)           # U-centering removes a constant entirely
    assert np.isnan(sm.unbiased_cka(constant, torch.rand(6, 6, generator=torch.Generator().manual_seed(0))))


def test_alignment_recovers_permutation_and_signs():
    generator = torch.Generator().manual_seed(2)
    base = torch.randn(500, 24, generator=generator)
    perm = torch.randperm(24, generator=generator)[:16]
    sign = torch.where(torch.rand(16, generator=generator) < 0.5, -1.0, 1.0)
    target = base[:, perm] * sign * 3.0
    cosine = sm.cosine_from_products(sm.column_products(lambda s, e: target[s:e], lambda s, e: base[s:e], torch.device("cpu"), chunk_rows=64))
    base_index, found_sign, quality = sm.align_hidden(cosine)
    assert torch.equal(base_index, perm)
    assert torch.equal(found_sign, sign)
    assert quality == pytest.approx(1.0, abs=1e-5)


def test_embedding_cosine_matches_direct_formula_with_chunking():
    generator = torch.Generator().manual_seed(3)
    a, b = torch.randn(100, 5, generator=generator), torch.randn(100, 7, generator=generator)
    direct = torch.nn.functional.normalize(a, dim=0).T @ torch.nn.functional.normalize(b, dim=0)
    chunked = sm.cosine_from_products(sm.column_products(lambda s, e: a[s:e], lambda s, e: b[s:e], torch.device("cpu"), chunk_rows=7))
    assert torch.allclose(chunked, direct, atol=1e-6)


def test_zero_cosine_counts_as_positive_sign():
    cosine = torch.tensor([[0.0, 0.0], [0.0, -0.5]])
    _, sign, _ = sm.align_hidden(cosine)
    assert sign.tolist() == [1.0, -1.0]


def test_selected_signed_kernel_equals_gram_of_reindexed_weight():
    generator = torch.Generator().manual_seed(4)
    w = torch.randn(10, 8, generator=generator)
    other = torch.randn(6, 4, generator=generator)
    index = torch.tensor([3, 0, 7, 5])
    sign = torch.tensor([1.0, -1.0, -1.0, 1.0])
    selected = sm.Kernel(sm.gram(w), index, sign)
    explicit = sm.Kernel(sm.gram(w[:, index] * sign))
    target = sm.Kernel(sm.gram(other))
    assert selected.norm_squared() == pytest.approx(explicit.norm_squared(), rel=1e-6)
    assert sm.u_cka(selected, target) == pytest.approx(sm.u_cka(explicit, target), abs=1e-6)
    assert sm.u_cka(selected, target) == pytest.approx(cka_by_definition((w[:, index] * sign).T.numpy(), other.T.numpy()), abs=1e-6)


def test_layer_matching_identity_for_equal_depth_and_lap_otherwise():
    equal = np.array([[0.1, 0.9], [0.9, 0.1]])
    assert sm.match_layers(equal) == [(0, 0), (1, 1)]            # the paper: layer i with i
    uneven = np.array([[0.9, 0.1, 0.2], [0.1, 0.2, 0.8]])
    assert sm.match_layers(uneven) == [(0, 0), (1, 2)]


def test_blocked_gram_equals_the_plain_product():
    generator = torch.Generator().manual_seed(6)
    weight = torch.randn(300, 1300, generator=generator)      # wider than two Gram blocks, uneven tail
    assert torch.allclose(sm.gram(weight), weight.t() @ weight, rtol=1e-5, atol=1e-3)
    assert torch.equal(sm.gram(weight), sm.gram(weight).t())
    small = torch.randn(300, 96, generator=generator)           # one product, mirrored as well
    assert torch.equal(sm.gram(small), sm.gram(small).t())
    assert torch.allclose(sm.gram(small), small.t() @ small, rtol=1e-5, atol=1e-4)


def test_cka_exact_where_float32_accumulation_is_not():
    """Entries with a large common offset: U-centering cancels it, so the sums must carry the
    digits float32 accumulation over 4M entries would lose."""
    generator = torch.Generator().manual_seed(7)
    a = torch.full((2048, 2048), 0.1) + torch.randn(2048, 2048, generator=generator) * 1e-3
    b = 0.5 * a + torch.randn(2048, 2048, generator=generator) * 1e-3
    a, b = a + a.t(), b + b.t()
    ua, ub = u_center(a), u_center(b)
    expected = float((ua * ub).sum() / (ua.square().sum() * ub.square().sum()).sqrt())
    assert sm.unbiased_cka(a, b) == pytest.approx(expected, abs=1e-9)
