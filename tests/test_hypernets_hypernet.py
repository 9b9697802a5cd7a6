"""HyperNet: the MIP mechanism, residual θ0, shared leaves, head inits, heads, conditions,
generation, bad input before compilation, and HyperTrainer."""

from unittest import mock

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hyper import sharding
from hyper.architectures import make_target
from hyper.hypernets import hypernet as hn
from hyper.hypernets.conditions import Categorical, Continuous, Noise, Vector
from hyper.hypernets.hypernet import (
    Frozen,
    HyperNet,
    delta_ratio,
    generate,
    generate_and_evaluate,
    norm_slope,
)
from hyper.hypernets.train import HyperTrainer, NonFiniteLossError
from hyper.train import evaluate
from hyper.tree import flatten_dict, nest

GAMMA = [Continuous("gamma")]


def leaves_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb, strict=True))


def params_of(h):
    return jax.tree.leaves(nnx.state(h, nnx.Param))


def num_params(h):
    return sum(v.size for v in params_of(h))


@pytest.fixture(scope="module")
def mip(mlp_target):
    """MIP defaults (cos|sin, residual, split fan-out) on the 64-16-10 MLP."""
    return HyperNet(mlp_target, GAMMA, hidden=(8, 16), rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def multi(mlp_target):
    """Every kind of condition at once."""
    specs = [
        Continuous("g", (3,), low=-1.0, high=2.0),
        Categorical("task", num_classes=4, dim=3),
        Vector("v", 2),
        Noise("z", 5),
    ]
    return HyperNet(mlp_target, specs, hidden=(8,), rngs=nnx.Rngs(1))


def multi_batch(m, seed=0):
    r = np.random.default_rng(seed)
    return {
        "g": r.uniform(-1, 2, (m, 3)).astype(np.float32),
        "task": np.arange(m) % 4,
        "v": r.normal(size=(m, 2)).astype(np.float32),
    }


@pytest.fixture()
def no_compile():
    """Fails a test that reaches the jitted generation: bad input must be refused before."""
    with (
        mock.patch.object(hn, "_generate_jit", side_effect=AssertionError("compiled")),
        mock.patch.object(hn, "_gen_eval_jit", side_effect=AssertionError("compiled")),
    ):
        yield


# --- the MIP mechanism --------------------------------------------------------------------


def test_norm_slope_is_one_for_the_default_parametrization(mlp_target):
    h = HyperNet(
        mlp_target,
        GAMMA,
        hidden=(8, 16),
        encoding="raw",
        residual=False,
        head_init="default",
        rngs=nnx.Rngs(0),
    )
    assert abs(norm_slope(h, "gamma", np.linspace(0.05, 1.0, 12)) - 1.0) < 0.05


def test_norm_slope_is_near_zero_for_mip(mip, mlp_target):
    sweep = np.linspace(0.05, 1.0, 12)
    assert abs(norm_slope(mip, "gamma", sweep)) < 0.1
    other = HyperNet(mlp_target, GAMMA, hidden=(8, 16), rngs=nnx.Rngs(7))
    assert abs(norm_slope(other, "gamma", sweep)) < 0.1


def test_norm_slope_refuses_a_non_continuous_condition(multi):
    with pytest.raises(ValueError, match="'task' is not a continuous"):
        norm_slope(multi, "task", np.linspace(0.1, 1, 4))


# --- residual θ0, shared and frozen leaves, running statistics ----------------------------


@pytest.mark.parametrize("head", ["per_tensor", "chunked", "lowrank"])
def test_zero_head_generates_theta0_exactly(mlp_target, head):
    theta0 = mlp_target.init(jax.random.key(5))  # e.g. a trained zoo member
    h = HyperNet(
        mlp_target,
        GAMMA,
        hidden=(8,),
        head=head,
        head_init="zero",
        theta0=theta0,
        chunk_size=100,
        rngs=nnx.Rngs(0),
    )
    assert leaves_equal(h.theta0_params(), theta0)
    pop = generate(h, {"gamma": np.array([0.0, 0.3, 1.0], np.float32)})
    for path, v in flatten_dict(pop).items():
        want = np.broadcast_to(flatten_dict(theta0)[path], v.shape)
        np.testing.assert_array_equal(v, want, err_msg=path)


def test_default_theta0_is_initialised_by_role(rescnn_target):
    h = HyperNet(rescnn_target, GAMMA, hidden=(8,), rngs=nnx.Rngs(0))
    t0 = flatten_dict(h.theta0_params())
    np.testing.assert_array_equal(t0["stem_bn/scale"], 1.0)  # hyperlight crashes on BN scales
    np.testing.assert_array_equal(t0["dense/bias"], 0.0)
    assert 0.05 < float(np.std(t0["blocks/0/conv1/kernel"])) < 1.0


def test_batchnorm_running_stats_are_carried(rescnn_target):
    theta0 = flatten_dict(rescnn_target.init(jax.random.key(2)))
    theta0["stem_bn/mean"] = jnp.full((4,), 0.25)  # as after training
    h = HyperNet(rescnn_target, GAMMA, hidden=(8,), theta0=nest(theta0), rngs=nnx.Rngs(0))
    stats = [s.path for s in rescnn_target.spec if not s.trainable]
    assert stats and set(stats) <= set(h.shared_paths)
    assert not set(stats) & set(h.gen_paths)
    for p, v in zip(h.shared_paths, h.shared, strict=True):
        assert isinstance(v, Frozen) == (p in stats), p  # running stats are never trained
    pop = generate(h, {"gamma": np.linspace(0, 1, 5)})
    assert rescnn_target.validate(pop, batched=True) == 5
    flat = flatten_dict(pop)
    for p in stats:
        np.testing.assert_array_equal(flat[p], np.broadcast_to(theta0[p], flat[p].shape))
    y = rescnn_target.apply_population(pop, jnp.ones((3, 8, 8, 1)))
    assert y.shape == (5, 3, 10) and bool(jnp.all(jnp.isfinite(y)))
    assert not np.allclose(y[0], y[-1])  # the generated convs depend on γ


def test_generate_glob_shares_and_broadcasts_the_other_leaves(mlp_target):
    theta0 = mlp_target.init(jax.random.key(3))
    h = HyperNet(
        mlp_target, GAMMA, generate="layers/0/*", hidden=(8,), theta0=theta0, rngs=nnx.Rngs(0)
    )
    assert h.gen_paths == ("layers/0/bias", "layers/0/kernel")
    assert h.shared_paths == ("layers/1/bias", "layers/1/kernel")
    assert all(isinstance(v, nnx.Param) for v in h.shared)  # train_shared=True
    pop = generate(h, {"gamma": np.array([0.1, 0.9], np.float32)})
    k1 = pop["layers"]["1"]["kernel"]
    np.testing.assert_array_equal(k1, np.broadcast_to(theta0["layers"]["1"]["kernel"], k1.shape))
    k0 = pop["layers"]["0"]["kernel"]
    assert not np.allclose(k0[0], k0[1])


def test_frozen_theta0_and_shared_are_not_params(mlp_target):
    h = HyperNet(
        mlp_target,
        GAMMA,
        generate="layers/0/kernel",
        hidden=(8,),
        train_theta0=False,
        train_shared=False,
        rngs=nnx.Rngs(0),
    )
    assert all(isinstance(v, Frozen) for v in (*h.theta0, *h.shared))
    frozen = jax.tree.leaves(nnx.state(h, Frozen))
    assert len(frozen) == 4
    param_ids = {id(v) for v in params_of(h)}
    assert not {id(v) for v in frozen} & param_ids
    # backbone + head only: the target's 1210 weights are not trained.
    assert num_params(h) == (2 * 8 + 8) + 8 * 64 * 16


# --- head initialisation -----------------------------------------------------------------


@pytest.fixture(scope="module")
def wide_target():
    return make_target("mlp", input_shape=(8, 8), widths=(32,), out_features=10)


@pytest.mark.parametrize("init", ["split_fan_out", "hyperfan_in", "hyperfan_out", "zero"])
def test_per_tensor_head_init_variances(wide_target, init):
    hdim = 64
    h = HyperNet(wide_target, GAMMA, hidden=(hdim,), head_init=init, rngs=nnx.Rngs(0))
    assert len(h.head_w) == len(h.gen_paths)
    for s, w in zip(h.gen_specs, h.head_w, strict=True):
        w = np.asarray(w[...])
        assert w.shape == (hdim, s.size)
        want = {
            "split_fan_out": 2.0 / s.size,
            "hyperfan_in": 1.0 / (hdim * s.fan_in),
            "hyperfan_out": 1.0 / (hdim * s.fan_out),
            "zero": 0.0,
        }[init]
        if init.startswith("hyperfan") and s.role != "kernel":
            want /= 2
        if want == 0.0:
            assert not w.any()
        else:
            assert abs(w.var() / want - 1.0) < 0.25, (s.path, w.var(), want)
            assert abs(w.mean()) < 4 * np.sqrt(want / w.size)


def test_hidden_layers_use_kaiming_fan_out(wide_target):
    h = HyperNet(wide_target, GAMMA, hidden=(256, 128), rngs=nnx.Rngs(0))
    k = np.asarray(h.layers[1].kernel[...])
    assert k.shape == (256, 128)
    assert abs(k.var() / (2.0 / 128) - 1.0) < 0.1
    np.testing.assert_array_equal(h.layers[1].bias[...], 0.0)


# --- heads ------------------------------------------------------------------------------


@pytest.mark.parametrize("head", ["per_tensor", "chunked", "lowrank"])
def test_heads_generate_valid_populations(cnn_target, head):
    h = HyperNet(cnn_target, GAMMA, hidden=(8,), head=head, chunk_size=64, rngs=nnx.Rngs(0))
    pop = generate(h, {"gamma": np.array([0.0, 0.5, 1.0], np.float32)})
    assert cnn_target.validate(pop, batched=True) == 3
    y = cnn_target.apply_population(pop, jnp.ones((2, 8, 8, 1)))
    assert y.shape == (3, 2, 10) and bool(jnp.all(jnp.isfinite(y)))
    k = flatten_dict(pop)[h.gen_paths[-1]]
    assert not np.allclose(k[0], k[2])  # γ matters with every head


def test_chunked_and_lowrank_heads_do_not_grow_like_hidden_times_theta():
    big = make_target("mlp", input_shape=(8, 8), widths=(256, 320), out_features=10)
    n, hdim = big.num_params, 64
    assert n >= 100_000
    theta0 = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), big.abstract_params())
    counts = {
        head: num_params(
            HyperNet(big, GAMMA, hidden=(hdim,), head=head, theta0=theta0, rngs=nnx.Rngs(0))
        )
        for head in ("per_tensor", "chunked", "lowrank")
    }
    assert counts["per_tensor"] >= hdim * n  # >= 6.4M
    for head in ("chunked", "lowrank"):
        assert counts[head] < 6 * n, counts  # θ0 (n) + a small head


# --- conditions of every kind -------------------------------------------------------------


def test_every_condition_kind(multi, mlp_target):
    c = multi_batch(8)
    key = jax.random.key(0)
    pop = generate(multi, c, key=key)
    assert mlp_target.validate(pop, batched=True) == 8
    k = pop["layers"]["0"]["kernel"]
    # Noise: sampled from the key, deterministic per key, the same as an explicit draw.
    again = generate(multi, c, key=key)
    assert leaves_equal(pop, again)
    other = generate(multi, c, key=jax.random.key(1))
    assert not np.allclose(k, other["layers"]["0"]["kernel"])
    z = jax.random.normal(jax.random.fold_in(key, 3), (8, 5))
    explicit = generate(multi, {**c, "z": z})
    np.testing.assert_allclose(explicit["layers"]["0"]["kernel"], k, atol=1e-6)
    with pytest.raises(ValueError, match="noise condition 'z' not given and no key"):
        generate(multi, c)


def test_categorical_ids_select_learned_embeddings(multi):
    c = multi_batch(4)
    c["g"][:] = c["g"][0]
    c["v"][:] = c["v"][0]
    c["z"] = np.zeros((4, 5), np.float32)
    c["task"] = np.array([0, 1, 2, 0])
    k = np.asarray(generate(multi, c)["layers"]["1"]["kernel"])
    np.testing.assert_array_equal(k[0], k[3])
    assert not np.allclose(k[0], k[1]) and not np.allclose(k[1], k[2])
    e = np.asarray(multi.embeds[0].embedding[...])
    assert e.shape == (4, 3) and np.unique(e.round(6), axis=0).shape[0] == 4


def test_continuous_and_vector_conditions_change_the_weights(multi):
    c = multi_batch(1)
    c["z"] = np.zeros((1, 5), np.float32)
    batch = {k: np.repeat(v, 3, 0) for k, v in c.items()}
    batch["g"][1] += 0.5  # member 1 differs in g, member 2 in v
    batch["v"][2] += 0.5
    b = np.asarray(generate(multi, batch)["layers"]["0"]["bias"])
    assert not np.allclose(b[0], b[1]) and not np.allclose(b[0], b[2])
    same = np.asarray(
        generate(multi, {k: np.repeat(v, 2, 0) for k, v in c.items()})["layers"]["0"]["bias"]
    )
    np.testing.assert_array_equal(same[0], same[1])


def test_from_config_rebuilds_the_same_hypernet(multi):
    again = HyperNet.from_config(multi.config, rngs=nnx.Rngs(1))
    assert leaves_equal(nnx.state(again), nnx.state(multi))
    assert again.config == multi.config


# --- generation ---------------------------------------------------------------------------


@pytest.mark.parametrize("m, batch_size", [(7, 3), (7, 7), (5, 64)])
def test_chunked_generation_equals_unchunked(multi, m, batch_size):
    c = multi_batch(m)
    key = jax.random.key(4)
    full = generate(multi, c, key=key)
    chunked = generate(multi, c, key=key, batch_size=batch_size)
    chex.assert_trees_all_close(full, chunked, rtol=1e-5, atol=1e-6)


def test_generate_and_evaluate_equals_generate_then_evaluate(multi, mlp_target, digits):
    c = multi_batch(5)
    key = jax.random.key(2)
    x, y = jnp.asarray(digits.x_test[:100]), jnp.asarray(digits.y_test[:100])
    got = generate_and_evaluate(multi, c, x, y, key=key, batch_size=2)
    want = evaluate(mlp_target, generate(multi, c, key=key), x, y)
    assert got["loss"].shape == (5,)
    for k in ("loss", "acc"):
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)


def test_a_thousand_conditions_in_one_call(mip, mlp_target):
    g = np.linspace(0, 1, 1000, dtype=np.float32)
    pop = generate(mip, {"gamma": g})
    assert mlp_target.validate(pop, batched=True) == 1000
    direct = mip({"gamma": jnp.asarray(g[[0, 999]])})
    for a, b in zip(jax.tree.leaves(pop), jax.tree.leaves(direct), strict=True):
        np.testing.assert_allclose(np.asarray(a)[[0, 999]], b, rtol=1e-5, atol=1e-6)


# --- bad input, before compilation --------------------------------------------------------


def _edit(m=2, **changes):
    c = multi_batch(m)
    for k, v in changes.items():
        if v is None:
            del c[k]
        else:
            c[k] = v
    return c


@pytest.mark.parametrize(
    "conds, match",
    [
        (_edit(g=np.full((2, 3), 3.0)), r"'g'.*\[-1.0, 2.0\]"),
        (_edit(g=np.zeros((2, 4))), r"'g' has shape \(2, 4\), expected \(M, 3\)"),
        (_edit(taks=np.zeros(2, int)), r"unknown conditions \['taks'\]"),
        (_edit(task=None), "missing condition 'task'"),
        (_edit(task=np.array([4, 0])), r"'task'.*ids must lie in \[0, 4\)"),
        (_edit(task=np.array([1.0, 0.0])), "'task'.*integers"),
        (_edit(v=np.array([[0.0, np.nan], [0.0, 0.0]])), "'v'.*finite"),
        (_edit(m=0), "empty batch"),
    ],
)
def test_bad_conditions_raise_before_compilation(multi, no_compile, conds, match):
    with pytest.raises(ValueError, match=match):
        generate(multi, conds, key=jax.random.key(0))
    with pytest.raises(ValueError, match=match):
        generate_and_evaluate(multi, conds, jnp.ones((2, 8, 8)), jnp.zeros(2, jnp.int32))


def test_bad_evaluation_data_raises_before_compilation(multi, no_compile):
    c = multi_batch(2)
    x, y = jnp.ones((3, 8, 8)), jnp.zeros(3, jnp.int32)
    with pytest.raises(ValueError, match=r"inputs have shape \(64,\), target mlp"):
        generate_and_evaluate(multi, c, x.reshape(3, 64), y, key=jax.random.key(0))
    for bad in (jnp.zeros(2, jnp.int32), jnp.zeros(3, jnp.float32), jnp.zeros((3, 1), jnp.int32)):
        with pytest.raises(ValueError, match=r"labels must be ints of shape \(3,\)"):
            generate_and_evaluate(multi, c, x, bad, key=jax.random.key(0))


def test_bad_batch_sizes_raise(multi, no_compile):
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            generate(multi, multi_batch(2), key=jax.random.key(0), batch_size=bad)


def _bad_batches():
    """Condition batches for `multi` with one thing wrong: a shape, a range, a dtype, a name."""
    m = st.integers(1, 4)
    shape = st.lists(st.integers(0, 4), max_size=3).map(tuple)
    wrong_g = st.one_of(
        st.tuples(m, shape)
        .map(lambda t: np.zeros((t[0], *t[1])))
        .filter(lambda a: a.shape[1:] != (3,)),
        st.tuples(m, st.sampled_from([-1.5, 2.5, np.inf, -np.inf, np.nan, 1e30])).map(
            lambda t: np.full((t[0], 3), t[1])
        ),
        st.just(np.zeros((2, 3), np.complex64)),
    )
    wrong_task = st.one_of(
        st.tuples(m, st.sampled_from([-1, 4, 100, 2**40])).map(lambda t: np.full(t[0], t[1])),
        st.tuples(m, shape)
        .map(lambda t: np.zeros((t[0], *t[1]), int))
        .filter(lambda a: a.ndim != 1),
        st.just(np.array([0.5, 1.0])),
    )

    def corrupt(t):
        kind, m_, g, task = t
        c = multi_batch(m_)
        if kind == "g":
            c["g"] = g
        elif kind == "task":
            c["task"] = task
        elif kind == "missing":
            del c["v"]
        elif kind == "extra":
            c["w"] = np.zeros(m_)
        else:  # mismatched batch
            c["v"] = np.zeros((m_ + 1, 2))
        return c

    return st.tuples(
        st.sampled_from(["g", "task", "missing", "extra", "batch"]), m, wrong_g, wrong_task
    ).map(corrupt)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_bad_batches())
def test_bad_condition_batches_raise_value_or_type_errors(multi, conds):
    with (
        mock.patch.object(hn, "_generate_jit", side_effect=AssertionError("compiled")),
        pytest.raises((ValueError, TypeError)),
    ):
        generate(multi, conds, key=jax.random.key(0))


def test_population_of_another_target_is_refused(mip, cnn_target, wide_target):
    pop = generate(mip, {"gamma": np.array([0.5], np.float32)})
    with pytest.raises(ValueError, match="layers/0/bias|missing leaves"):
        cnn_target.validate(pop, batched=True)
    with pytest.raises(ValueError, match="leaf 'layers/0/bias' has shape"):
        wide_target.validate(pop, batched=True)
    with pytest.raises(ValueError, match="'layers/0/bias' has shape"):  # θ0 of another target
        HyperNet(wide_target, GAMMA, theta0=mip.theta0_params(), rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"encoding": "sin|cos"}, "unknown encoding 'sin|cos'"),
        ({"head": "chunk"}, "unknown head 'chunk'"),
        ({"head_init": "xavier"}, "unknown head_init 'xavier'"),
        ({"hidden_init": "xavier"}, "unknown hidden_init"),
        ({"activation": "swish"}, "unknown activation 'swish'"),
        ({"head_init": "zero", "residual": False}, "head_init='zero' needs residual=True"),
        ({"generate": "layer/*"}, r"no trainable leaf .* matches \['layer/\*'\]"),
        ({"generate": ["*/mean"]}, "no trainable leaf"),
        ({"hidden": (8, 0)}, "hidden sizes must be positive"),
        ({"hidden": ()}, "hidden sizes must be positive"),
        ({"hidden": (-3,)}, "hidden sizes must be positive"),
        ({"chunk_size": 0}, "chunk_size must be >= 1"),
        ({"rank": 0}, "rank must be >= 1"),
    ],
)
def test_bad_hypernet_options_raise(mlp_target, kwargs, match):
    with pytest.raises(ValueError, match=match):
        HyperNet(mlp_target, GAMMA, rngs=nnx.Rngs(0), **kwargs)


# --- HyperTrainer --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trainer(mlp_target, digits):
    h = HyperNet(mlp_target, GAMMA, hidden=(8,), rngs=nnx.Rngs(0))
    tr = HyperTrainer(
        h,
        digits.x_train,
        digits.y_train,
        optimizer=optax.adam(1e-2),
        conditions_per_step=4,
        batch_size=32,
    )
    return h, tr


def test_trainer_loss_decreases_and_leaves_the_callers_hnet_alive(trainer, mlp_target):
    h, tr = trainer
    before = [np.asarray(v) for v in params_of(h)]
    losses = tr.run(jax.random.key(0), 50)
    assert np.all(np.isfinite(losses))
    assert losses[-10:].mean() < 0.6 * losses[:5].mean(), losses
    # The steps donate their buffers: the hypernet given to the trainer is untouched.
    after = [np.asarray(v) for v in params_of(h)]
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    trained = tr.hnet
    assert not leaves_equal(nnx.state(trained, nnx.Param), nnx.state(h, nnx.Param))
    tr.run(jax.random.key(1), 1)
    assert mlp_target.validate(generate(trained, {"gamma": np.ones(2)}), batched=True) == 2


def test_trainer_arrays_round_trip_exactly(trainer):
    _, tr = trainer
    saved = tr.arrays()
    first = tr.step(jax.random.key(9))
    tr.step(jax.random.key(10))
    tr.load_arrays(saved)
    for group in saved:
        for k, v in tr.arrays()[group].items():
            np.testing.assert_array_equal(v, saved[group][k])
    assert tr.step(jax.random.key(9)) == first  # same state, same key: the same step


def test_trainer_load_arrays_refuses_other_shapes(trainer):
    _, tr = trainer
    saved = tr.arrays()
    bad = {g: dict(v) for g, v in saved.items()}
    bad["params"]["0"] = np.zeros((3,), np.float32)
    with pytest.raises(ValueError, match=r"params\[0\] has shape \(3,\)"):
        tr.load_arrays(bad)
    fewer = {g: dict(v) for g, v in saved.items()}
    fewer["opt_state"].pop("1")
    with pytest.raises(ValueError, match="'opt_state' holds"):
        tr.load_arrays(fewer)
    for group in saved:  # nothing was loaded
        for k, v in tr.arrays()[group].items():
            np.testing.assert_array_equal(v, saved[group][k])


def test_trainer_per_condition_batches_frozen_leaves_and_divergence(mlp_target, digits):
    h = HyperNet(
        mlp_target,
        GAMMA,
        generate="layers/0/*",
        hidden=(8,),
        train_theta0=False,
        train_shared=False,
        rngs=nnx.Rngs(0),
    )
    frozen = [np.asarray(v) for v in jax.tree.leaves(nnx.state(h, Frozen))]
    assert len(frozen) == 4
    tr = HyperTrainer(
        h,
        digits.x_train,
        digits.y_train,
        optimizer=optax.sgd(1e6),
        conditions_per_step=3,
        batch_size=8,
        shared_batch=False,
    )
    good = tr.arrays()
    first = tr.step(jax.random.key(0))  # one batch per condition; the first step is fine
    assert np.isfinite(first["loss"])
    for s in range(1, 20):  # then a learning rate of 1e6 diverges
        good = tr.arrays()
        try:
            tr.step(jax.random.key(s))
        except NonFiniteLossError as e:
            assert "not finite" in str(e)
            break
    else:
        pytest.fail("a learning rate of 1e6 never diverged")
    now = tr.arrays()  # the weights (and optimizer state) of the last good step
    for group in good:
        for k, v in good[group].items():
            np.testing.assert_array_equal(now[group][k], v)
    trained = tr.hnet
    assert not leaves_equal(nnx.state(trained, nnx.Param), nnx.state(h, nnx.Param))
    after = [np.asarray(v) for v in jax.tree.leaves(nnx.state(trained, Frozen))]
    assert all(np.array_equal(a, b) for a, b in zip(frozen, after, strict=True))


def test_trainer_run_scan_matches_run_and_stops_at_divergence(mlp_target, digits):
    h = HyperNet(mlp_target, GAMMA, hidden=(8,), rngs=nnx.Rngs(0))

    def make(lr):
        return HyperTrainer(
            h, digits.x_train, digits.y_train, optimizer=optax.sgd(lr), conditions_per_step=3
        )

    loop, fused = make(1e-2), make(1e-2)
    key = jax.random.key(3)
    np.testing.assert_array_equal(loop.run(key, 4, start=2), fused.run_scan(key, 4, start=2))
    assert loop.step_count == fused.step_count == 4
    for group, arrays in loop.arrays().items():
        for k, v in arrays.items():
            np.testing.assert_array_equal(fused.arrays()[group][k], v)
    loop, fused = make(1e6), make(1e6)
    with pytest.raises(NonFiniteLossError) as e_loop:
        loop.run(key, 30)
    with pytest.raises(NonFiniteLossError) as e_fused:
        fused.run_scan(key, 30)
    assert str(e_fused.value) == str(e_loop.value)
    assert fused.step_count == loop.step_count < 30
    for group, arrays in loop.arrays().items():  # the weights of the last good step
        for k, v in arrays.items():
            np.testing.assert_array_equal(fused.arrays()[group][k], v)
    with pytest.raises(ValueError, match="positive int"):
        fused.run_scan(key, 0)


def test_delta_ratio_zero_head_is_zero_and_split_init_is_small():
    t = make_target("mlp", input_shape=(8, 8), widths=(16,), out_features=10)
    conds = {"gamma": jnp.linspace(0.0, 1.0, 4)}
    zero = HyperNet(t, [Continuous("gamma")], hidden=(8,), head_init="zero", rngs=nnx.Rngs(0))
    assert all(r == 0.0 for r in delta_ratio(zero, conds).values())
    mip = HyperNet(t, [Continuous("gamma")], hidden=(8,), rngs=nnx.Rngs(0))
    ratios = delta_ratio(mip, conds)
    assert set(ratios) == set(mip.gen_paths)
    assert 0.0 < ratios["layers/0/kernel"] < 1.0


def test_trainer_sharded_over_the_mesh_matches_one_device(mlp_target, digits):
    """Hypernet training with the M targets of each step split over the 8 test devices
    gives the single-device losses and weights (up to the order of float sums)."""
    h = HyperNet(mlp_target, GAMMA, hidden=(8,), rngs=nnx.Rngs(0))
    mesh = sharding.targets_mesh()
    key = jax.random.key(5)
    kw = dict(optimizer=optax.adam(1e-2), conditions_per_step=8, batch_size=16)
    one = HyperTrainer(h, digits.x_train, digits.y_train, **kw)
    many = HyperTrainer(h, digits.x_train, digits.y_train, mesh=mesh, **kw)
    np.testing.assert_allclose(many.run_scan(key, 3), one.run_scan(key, 3), rtol=1e-5)
    np.testing.assert_allclose(many.step(key)["loss"], one.step(key)["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(many.params), jax.tree.leaves(one.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=2e-5)
    assert len(jax.tree.leaves(many.params)[0].sharding.device_set) == mesh.devices.size
    # the step's compiled program does split the targets: it has cross-device sums
    hlo = many.lower_step(key).compile().as_text()
    assert "all-reduce" in hlo
    with pytest.raises(ValueError, match="multiple of the mesh size"):
        HyperTrainer(h, digits.x_train, digits.y_train, mesh=mesh, conditions_per_step=3)


@pytest.mark.xla_fusion_emitters
@pytest.mark.parametrize("shared_batch", [True, False])
def test_trainer_with_reduce_groups_is_bit_identical_on_the_mesh(mlp_target, digits, shared_batch):
    """With `reduce_groups`, the gradient is summed group by group in a fixed order: one
    device, 8 devices (one group each) and 4 devices (two each) give the same bits."""
    h = HyperNet(mlp_target, GAMMA, hidden=(8,), rngs=nnx.Rngs(0))
    key = jax.random.key(5)
    kw = dict(
        optimizer=optax.adam(1e-2),
        conditions_per_step=16,
        batch_size=16,
        reduce_groups=8,
        shared_batch=shared_batch,
    )
    one = HyperTrainer(h, digits.x_train, digits.y_train, **kw)
    losses = one.run_scan(key, 3)
    for devices in (jax.devices(), jax.devices()[:4]):
        many = HyperTrainer(
            h, digits.x_train, digits.y_train, mesh=sharding.targets_mesh(devices), **kw
        )
        np.testing.assert_array_equal(many.run_scan(key, 3), losses)
        for a, b in zip(jax.tree.leaves(many.params), jax.tree.leaves(one.params), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the groups run on their own devices: no gradient is all-reduced, terms are gathered
    hlo = many.lower_step(key).compile().as_text()
    assert "all-gather" in hlo or "collective-permute" in hlo or "all-to-all" in hlo
    # and it trains: the grouped loss follows the ungrouped one closely
    plain = HyperTrainer(h, digits.x_train, digits.y_train, **{**kw, "reduce_groups": None})
    np.testing.assert_allclose(plain.run_scan(key, 3), losses, rtol=1e-4)
    with pytest.raises(ValueError, match="positive divisor"):
        HyperTrainer(h, digits.x_train, digits.y_train, **{**kw, "reduce_groups": 3})
    with pytest.raises(ValueError, match="multiple of the mesh size"):
        HyperTrainer(
            h,
            digits.x_train,
            digits.y_train,
            mesh=sharding.targets_mesh(),
            **{**kw, "reduce_groups": 4},
        )


def _np_leaky_relu(x):
    return np.where(x >= 0, x, 0.01 * x)


@pytest.mark.parametrize("head", ["per_tensor", "chunked", "lowrank"])
def test_head_deltas_match_a_numpy_reference(cnn_target, head):
    """Δθ = θ - θ0 of every generated leaf, recomputed in float64 NumPy from the last hidden
    features and the head's weights (per-tensor: a W; low-rank: (a U)(a V) with U
    ``[h, rows * r]`` and V ``[h, r * cols]``, rows the kernel's leading axes flattened;
    chunked: leaky-relu(a U_a + E U_e + b) V, chunks laid end to end in leaf order). Low-rank
    kernels have rank <= r."""
    rank = 2
    h = HyperNet(
        cnn_target, GAMMA, hidden=(8,), head=head, chunk_size=64, rank=rank, rngs=nnx.Rngs(3)
    )
    conds = {"gamma": np.array([0.1, 0.5, 0.9], np.float32)}
    a = np.asarray(h.features(conds), np.float64)
    m = a.shape[0]
    pop = flatten_dict(h(conds))
    theta0 = flatten_dict(h.theta0_params())
    specs = h.gen_specs
    if head == "chunked":
        f64 = lambda v: np.asarray(v[...], np.float64)  # noqa: E731
        z = _np_leaky_relu(
            (a @ f64(h.chunk_u_a))[:, None, :]
            + (f64(h.chunk_emb) @ f64(h.chunk_u_e))[None]
            + f64(h.chunk_b)[None, None]
        )
        flat = (z @ f64(h.chunk_v)).reshape(m, -1)
        sizes = np.cumsum([0] + [s.size for s in specs])
        want = [flat[:, sizes[i] : sizes[i + 1]].reshape(m, *s.shape) for i, s in enumerate(specs)]
    else:
        want = []
        for s, w in zip(specs, h.head_w, strict=True):
            ws = [np.asarray(x[...], np.float64) for x in (w if head == "lowrank" else [w])]
            if len(ws) == 2:
                n = s.shape[-1]
                u = (a @ ws[0]).reshape(m, s.size // n, rank)
                v = (a @ ws[1]).reshape(m, rank, n)
                d = np.einsum("mir,mrj->mij", u, v)
                for k in range(m):  # the rank bound of the low-rank head
                    assert np.linalg.matrix_rank(d[k], tol=1e-9) <= rank, s.path
                want.append(d.reshape(m, *s.shape))
            else:
                want.append((a @ ws[0]).reshape(m, *s.shape))
    assert head != "lowrank" or any(len(w) == 2 for w in h.head_w)
    for s, d in zip(specs, want, strict=True):
        got = np.asarray(pop[s.path], np.float64) - np.asarray(theta0[s.path], np.float64)[None]
        np.testing.assert_allclose(got, d, rtol=2e-4, atol=2e-5, err_msg=f"{head} {s.path}")
