"""Secure aggregation: exact ring sums with dropouts, hiding, costs, composition, training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import chisquare

import fljax
from fljax import privacy as P


def _ring_case(seed, secagg, k=None, d=40):
    rng = np.random.default_rng(seed)
    k = k or int(rng.integers(3, 13))
    enc = rng.integers(0, 2**secagg.bits, size=(k, d), dtype=np.uint64).astype(np.uint32)
    included = rng.random(k) < 0.7
    included[rng.integers(k)] = True
    ids = rng.choice(1000, k, replace=False).astype(np.int32)
    return enc, included, ids


@pytest.mark.parametrize(
    "secagg",
    [
        P.get("secagg"),
        P.get("secagg", bits=16, self_masks=False),
        P.get("secagg_plus", degree=2),
        P.get("secagg_plus", bits=20),
    ],
    ids=["secagg32", "secagg16-noself", "plus-k2", "plus20"],
)
def test_secure_sum_is_exact_with_dropouts_for_many_seeds(secagg):
    """Decoded protocol output == sum of the survivors' ring elements mod 2^b, bit for bit."""
    run = jax.jit(lambda e, inc, ids, key: P.secure_ring_sum(e, inc, ids, key, secagg))
    for seed in range(12):
        enc, included, ids = _ring_case(seed, secagg, k=9)
        ring_sum, sent, stats = run(enc, included, ids, jax.random.key(seed))
        expected = enc[included].astype(np.uint64).sum(0) % (2**secagg.bits)
        np.testing.assert_array_equal(np.asarray(ring_sum, np.uint64), expected)
        assert int(stats.survivors) == included.sum()
        assert int(stats.dropped) == (~included).sum()
        # A survivor's message alone is not its input (masked).
        i = int(np.argmax(included))
        assert np.mean(np.asarray(sent[i]) == enc[i]) < 0.05


def test_decoded_secure_sum_equals_the_quantized_plain_sum():
    rng = np.random.default_rng(0)
    k, d, r = 6, 300, 2.0
    x = rng.uniform(-r, r, size=(k, d)).astype(np.float32)
    included = np.array([True, True, False, True, True, True])
    ids = np.arange(k, dtype=np.int32)
    secagg = P.get("secagg", bits=32, clip_range=r)
    ranges = jnp.full((d,), r)
    out, _ = P.secure_sum(jnp.asarray(x), jnp.asarray(included), ids, jax.random.key(1), secagg,
                          ranges)  # fmt: skip
    step = r / P.ring_levels(32, k)  # one quantization level per client at most, plus the
    float32 = k * r * 2.0**-23  # float32 rounding of x * scale (values near 2^31 / k)
    np.testing.assert_allclose(np.asarray(out), x[included].sum(0), atol=k * step + float32)
    secagg8 = P.get("secagg", bits=8, clip_range=r)  # coarse ring: error up to k levels
    out8, _ = P.secure_sum(jnp.asarray(x), jnp.asarray(included), ids, jax.random.key(1),
                           secagg8, ranges)  # fmt: skip
    err = np.abs(np.asarray(out8) - x[included].sum(0))
    assert err.max() <= k * r / P.ring_levels(8, k) and err.max() > 0.05


def test_a_masked_message_looks_uniform_on_the_ring():
    """Chi-square on the top 8 bits of one masked message passes; the plain encoding fails."""
    k, d = 5, 50_000
    rng = np.random.default_rng(0)
    x = rng.normal(scale=0.1, size=(k, d)).astype(np.float32)
    levels = P.ring_levels(32, k)
    scale = jnp.full((d,), levels / 1.0)
    enc = jax.vmap(lambda v, i: P.encode(v, scale, levels, 32, jax.random.key(i)))(
        jnp.asarray(x), jnp.arange(k)
    )
    _, sent, _ = P.secure_ring_sum(enc, jnp.ones(k, bool), jnp.arange(k), jax.random.key(3),
                                   P.get("secagg"))  # fmt: skip
    for vec, should_pass in ((sent[0], True), (enc[0], False)):
        top = np.asarray(vec) >> 24
        p = chisquare(np.bincount(top, minlength=256)).pvalue
        assert (p > 1e-3) == should_pass, p


def test_overflow_is_refused_naming_the_setting():
    with pytest.raises(ValueError, match="bits=4 cannot hold the sum of 100 clients"):
        P.ring_levels(4, 100)
    with pytest.raises(ValueError, match="bits must be"):
        P.get("secagg", bits=40)
    with pytest.raises(ValueError, match="degree must be an even"):
        P.get("secagg_plus", degree=3)


@pytest.mark.parametrize("k", [2, 3, 4, 5, 6, 8])
def test_secagg_plus_is_exact_for_every_small_cohort(k):
    """The default Harary degree 2 ceil(log2 K) is capped at K - 1, odd for K = 2, 4, 6: that
    graph must be the complete one (a ring one column short read past its last neighbour:
    the sum was off by whole ring elements), with and without dropouts."""
    secagg = P.get("secagg_plus")
    run = jax.jit(lambda e, inc, ids, key: P.secure_ring_sum(e, inc, ids, key, secagg)[0])
    for seed in range(3):
        enc, included, ids = _ring_case(seed, secagg, k=k)
        for inc in (np.ones(k, bool), included):
            expected = enc[inc].astype(np.uint64).sum(0) % (2**secagg.bits)
            ring_sum = run(enc, inc, ids, jax.random.key(seed))
            np.testing.assert_array_equal(np.asarray(ring_sum, np.uint64), expected)


def test_harary_graph_is_symmetric_and_regular():
    for k, deg in ((10, 4), (33, 6), (7, 6), (6, 5), (4, 3)):
        nbr = np.asarray(P.neighbours(jax.random.key(k), k, deg, "harary"))
        assert nbr.shape == (k, deg)
        for i in range(k):
            assert len(set(nbr[i])) == deg and i not in nbr[i]
            for j in nbr[i]:
                assert i in nbr[j]  # masks are pairwise: the edge is known to both ends


# ------------------------------------------------------------------------------ simulate


def _run(fed, secagg=None, compression=None, stragglers=0.0, privacy=None, k=6, weighting=None):
    algo = fljax.algorithms.get("fedavg", client_lr=0.2, local_epochs=1, batch_size=16,
                                weighting=weighting or "num_examples")  # fmt: skip
    model = fljax.models.get("logistic", num_classes=2)
    return fljax.simulate(algo, model, fed, rounds=4, clients_per_round=k, eval_every=2, seed=0,
                          stragglers=stragglers, secure_aggregation=secagg,
                          compression=compression, privacy=privacy)  # fmt: skip


def test_training_with_secure_aggregation_matches_plain_fedavg(breast_cancer_fed):
    fed = breast_cancer_fed
    for stragglers in (0.0, 0.35):  # 2 of 6 clients drop after masking each round
        plain = _run(fed, stragglers=stragglers)
        secure = _run(fed, P.get("secagg_plus", degree=2), stragglers=stragglers)
        for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(secure.params),
                        strict=True):  # fmt: skip
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
        assert secure.final_metrics["test_accuracy"] == pytest.approx(
            plain.final_metrics["test_accuracy"], abs=1e-3
        )
        info = secure.history[-1]["secagg"]
        assert info["dropped"] == (8 if stragglers else 0)  # 2 per round, 4 rounds
        if stragglers:
            assert info["recovered_pairs"] > 0


def test_costs_scale_as_the_papers_say(breast_cancer_fed):
    """Per round: all-pairs PRG expansions K (K - 1 + 1); SecAgg+ K (k + 1); bytes_up exact."""
    fed = breast_cancer_fed
    full = _run(fed, P.get("secagg"), k=8).history[-1]
    plus = _run(fed, P.get("secagg_plus", degree=2), k=8).history[-1]
    assert full["secagg"]["prg_client"] == 4 * 8 * 8  # 4 rounds
    assert plus["secagg"]["prg_client"] == 4 * 8 * 3
    # No dropouts: every survivor sends one share per neighbour (the self-mask shares).
    assert full["secagg"]["recovery_messages"] == 4 * 8 * 7
    b = full["secagg"]["bytes_per_client"]
    d = 30 * 2 + 2
    assert b["masked_input"] == (d + 1) * 4
    expected = 4 * 8 * (b["advertise_keys"] + b["share_keys"] + b["masked_input"])
    assert full["bytes_up"] == expected + 4 * 8 * 7 * P._secagg.SHARE_BYTES
    # Graph degree, not K, drives a client's cost in SecAgg+ (Bell et al. 2020):
    assert P.message_bytes(P.get("secagg_plus"), d, 1000)["share_keys"] < (
        P.message_bytes(P.get("secagg"), d, 1000)["share_keys"] / 40
    )


def test_secure_aggregation_composes_with_dp_and_refuses_sparsifiers(breast_cancer_fed):
    fed = breast_cancer_fed
    dp = P.get("central_dp", clip_norm=1e9, noise_multiplier=0.0, sampling="fixed")
    plain = _run(fed, privacy=dp, weighting="uniform")
    secure = _run(fed, P.get("secagg", clip_range=1.0), privacy=dp, weighting="uniform")
    for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(secure.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    assert secure.history[-1]["secagg"]["prg_client"] > 0
    with pytest.raises(ValueError, match="topk.*does not compose with secure aggregation"):
        _run(fed, P.get("secagg"), compression=fljax.compress.get("topk", fraction=0.1))
    with pytest.raises(ValueError, match="scaffold"):
        fljax.simulate(
            fljax.algorithms.get("scaffold", client_lr=0.1, local_epochs=1, batch_size=16),
            fljax.models.get("logistic", num_classes=2), fed, rounds=1, clients_per_round=4,
            secure_aggregation=P.get("secagg"),
        )  # fmt: skip
    adaptive = P.get("adaptive_dp", clip_norm=0.5, noise_multiplier=0.5, count_noise=1.0)
    result = _run(fed, P.get("secagg"), privacy=adaptive, weighting="uniform")
    assert result.history[-1]["privacy"]["clip_norm"] != 0.5  # the clip norm adapted
    shared = fljax.compress.get("selective", shared="Dense_0/bias")
    result = _run(fed, P.get("secagg"), compression=shared)
    assert result.history[-1]["secagg"]["bytes_per_client"]["masked_input"] == (2 + 1) * 4


def test_cost_benchmark_runs_and_reports_growth():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "secagg_cost.py"
    spec = importlib.util.spec_from_file_location("secagg_cost", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.main(["--sizes", "8,32"])
    assert out["growth_secagg"] == pytest.approx(2.0, abs=0.05)  # K (K - 1 + 1) = K^2
    assert out["growth_secagg_plus"] < 1.5


def test_values_at_the_edge_of_the_range_do_not_overflow_the_ring():
    """At 32 bits ``levels`` is not a float32; K values at +R must still sum to K R (they
    wrapped to a negative sum when the clip was done in float32 only)."""
    k, r = 3, 1.0
    x = jnp.full((k, 4), r)
    for bits in (32, 20):
        out, _ = P.secure_sum(x, jnp.ones((k,), bool), jnp.arange(k), jax.random.key(0),
                              P.get("secagg", bits=bits, clip_range=r),
                              jnp.full((4,), r))  # fmt: skip
        np.testing.assert_allclose(np.asarray(out), k * r, rtol=1e-6)


def test_clipped_coordinates_are_counted_per_round(breast_cancer_fed):
    """The count is exact on a hand example (only summed clients count) and a run with a
    tiny clip_range reports its clipping per round instead of silently losing accuracy."""
    values = jnp.asarray([[0.5, 2.0, -0.1], [-3.0, 0.2, 1.5], [9.0, 9.0, 9.0]])
    included = jnp.asarray([True, True, False])  # the third dropped out: not summed
    _, stats = P.secure_sum(values, included, jnp.arange(3), jax.random.key(0),
                            P.get("secagg"), jnp.ones(3))  # fmt: skip
    assert int(stats.clipped) == 3
    model = fljax.models.get("logistic", num_classes=2)
    algo = fljax.algorithms.get("fedavg", client_lr=0.1, local_epochs=1, batch_size=16)
    res = fljax.simulate(algo, model, breast_cancer_fed, rounds=2, clients_per_round=4,
                         secure_aggregation=P.get("secagg", clip_range=1e-4))  # fmt: skip
    rec = res.history[-1]["secagg"]
    assert len(rec["clipped_per_round"]) == 1 and rec["clipped_per_round"][0] > 0
    assert rec["clipped"] == sum(e["secagg"]["clipped_per_round"][0] for e in res.history[1:])
