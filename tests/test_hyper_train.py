"""Trainer: a tiny digits population trains, quarantines a diverging member, honours
per-member hyperparameters, gives the same result sharded over 8 devices, and compiles its
epoch once."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hyper import population as pop_ops
from hyper import sharding, train
from hyper.architectures import make_target
from hyper.hypernets import train as hypertrain
from hyper.train import TrainConfig, Trainer, make_optimizer, shuffled_order

N = 8  # a multiple of the 8 fake devices
EPOCHS = 3
STEPS = 20
HUGE = 1e30  # SGD overflows at once; 1e6 does not (ReLUs die, the loss stays finite)
LR_A = [0.5, 0.5, 0.2, 0.2, 0.5, HUGE, 0.5, 0.5]
LR_B = [0.5, 0.5, 0.05, 0.2, 0.5, HUGE, 0.5, 0.5]  # member 2: another learning rate
WD_B = [0, 0, 0, 0.05, 0, 0, 0, 0]  # member 3: weight decay
FRAC_B = [1, 1, 1, 1, 0.05, 1, 1, 1]  # member 4: 5% of the train split


def _host(tree):
    """NumPy copies (the trainer donates device buffers); PRNG keys stay as they are."""
    return jax.tree.map(
        lambda v: v if jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key) else np.asarray(v),
        tree,
    )


def _train(trainer, state):
    metrics = []
    for e in range(EPOCHS):
        state, m = trainer.train_epoch(state, e)
        metrics.append(_host(m))
    return _host(state), metrics


@pytest.fixture(scope="module")
def run(digits):
    """Trains populations A (unsharded and sharded) and B once; the tests read the results."""
    # Dropout on: a jitted, vmapped train step of an NNX module with RNG streams.
    target = make_target("mlp", input_shape=(8, 8), widths=(16,), out_features=10, dropout=0.1)
    config = TrainConfig(optimizer="sgd", batch_size=32, steps_per_epoch=STEPS, eval_batch_size=128)
    trainer = Trainer(target, digits, config)
    key = jax.random.key(0)
    out = {"trainer": trainer, "target": target}
    a0 = trainer.init(key, N, learning_rate=LR_A, shard=False)
    out["a_init"] = _host(a0.params)
    out["a"], out["a_metrics"] = _train(trainer, a0)
    out["traces_unsharded"] = trainer.epoch_traces
    out["cache_unsharded"] = trainer.epoch_programs
    # The same members (keys) from the same initial weights; passing them skips compiling
    # the initialiser again.
    sharded = trainer.init(key, N, learning_rate=LR_A, params=out["a_init"], shard=True)
    out["sharding"] = jax.tree.leaves(sharded.params)[0].sharding
    out["a_sharded"], out["a_sharded_metrics"] = _train(trainer, sharded)
    out["traces_total"] = trainer.epoch_traces
    hp_b = dict(learning_rate=LR_B, weight_decay=WD_B, train_fraction=FRAC_B)
    b0 = trainer.init(key, N, **hp_b, params=out["a_init"], shard=True)
    out["b_subset_sizes"] = np.asarray(b0.subset).sum(1)
    out["b"], _ = _train(trainer, b0)
    out["eval_a"] = _host(trainer.evaluate(out["a"].params))
    return out


def _member(tree, i):
    return [np.asarray(v)[i] for v in jax.tree.leaves(tree)]


def test_population_learns_digits(run):
    ev = run["eval_a"]
    assert set(ev) == {"train_loss", "train_acc", "test_loss", "test_acc"}
    assert all(v.shape == (N,) for v in ev.values())
    healthy = np.array(LR_A) < HUGE
    assert (ev["test_acc"][healthy] > 0.6).all(), ev["test_acc"]  # chance is 0.1
    first, last = run["a_metrics"][0]["batch_loss"], run["a_metrics"][-1]["batch_loss"]
    assert (last[healthy] < first[healthy]).all()
    # Initial weights differ between members (own seeds) and from the trained ones.
    assert not np.allclose(_member(run["a_init"], 0)[1], _member(run["a_init"], 1)[1])
    assert not np.allclose(_member(run["a_init"], 0)[1], _member(run["a"].params, 0)[1])


def test_evaluate_matches_apply_population(run, digits):
    # Trainer.evaluate runs both splits in one program: each split's figures are its own.
    t = run["target"]
    params = run["a"].params
    healthy = np.array(LR_A) < HUGE  # the quarantined member's logits may overflow
    for split, x, y in (
        ("test", digits.x_test, digits.y_test),
        ("train", digits.x_train, digits.y_train),
    ):
        logits = np.asarray(t.apply_population(params, x))
        acc = (logits.argmax(-1) == y[None]).mean(1)
        np.testing.assert_allclose(run["eval_a"][f"{split}_acc"], acc, atol=1e-6)
        logits = logits[healthy]
        shifted = logits - logits.max(-1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        ce = -np.take_along_axis(logp, y[None, :, None], -1)[..., 0].mean(1)
        np.testing.assert_allclose(run["eval_a"][f"{split}_loss"][healthy], ce, rtol=1e-4)


def test_diverging_member_is_quarantined(run):
    a = run["a"]
    diverged = np.asarray(a.diverged)
    np.testing.assert_array_equal(diverged, np.array(LR_A) == HUGE)
    for v in jax.tree.leaves(a.params):
        assert np.isfinite(v).all()  # the NaN step was never applied, to anyone
    steps = np.asarray(a.step)
    np.testing.assert_array_equal(steps[~diverged], EPOCHS * STEPS)
    assert (steps[diverged] < EPOCHS * STEPS).all()
    for m in run["a_metrics"]:
        assert np.isfinite(m["batch_loss"][~diverged]).all()
    assert np.isfinite(run["eval_a"]["test_loss"][~diverged]).all()


def test_sharded_equals_unsharded(run):
    assert len(run["sharding"].device_set) == 8
    a, s = run["a"], run["a_sharded"]
    np.testing.assert_array_equal(a.diverged, s.diverged)
    np.testing.assert_array_equal(a.step, s.step)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(s.params), strict=True):
        np.testing.assert_allclose(x, y, rtol=2e-5, atol=1e-6)
    for m, n in zip(run["a_metrics"], run["a_sharded_metrics"], strict=True):
        ok = ~np.asarray(a.diverged)
        np.testing.assert_allclose(m["batch_loss"][ok], n["batch_loss"][ok], rtol=2e-5)


def test_cpu_placement_copies_without_compiling():
    compiles = []

    def listen(event, duration, **kw):
        # lowering precedes every compile, also one the persistent cache answers
        if event in (
            "/jax/core/compile/backend_compile_duration",
            "/jax/core/compile/jaxpr_to_mlir_module_duration",
        ):
            compiles.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        mesh = sharding.targets_mesh()
        tree = {
            "w": jax.numpy.arange(8 * 3, dtype=jax.numpy.float32).reshape(8, 3) + 0.5,
            "key": jax.random.split(jax.random.key(1), 8),
            "ok": jax.numpy.zeros((8,), bool),
        }
        jax.block_until_ready(tree)
        compiles.clear()
        placed = jax.block_until_ready(sharding.shard_targets(tree, mesh))
        again = sharding.put(placed, sharding.targets_sharding(mesh))  # already there
        rep = jax.block_until_ready(sharding.put(tree, sharding.replicated(mesh)))
        assert compiles == []
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    for t in (placed, rep):
        np.testing.assert_array_equal(t["w"], tree["w"])
        np.testing.assert_array_equal(t["ok"], tree["ok"])
        np.testing.assert_array_equal(
            jax.random.key_data(t["key"]), jax.random.key_data(tree["key"])
        )
    assert len(placed["w"].sharding.device_set) == 8 and again["w"] is placed["w"]
    # a new buffer: donating the placed copy leaves the original readable
    jax.jit(lambda x: x * 2, donate_argnums=0)(placed["w"]).block_until_ready()
    np.testing.assert_array_equal(tree["w"][0], [0.5, 1.5, 2.5])


def test_per_member_hyperparameters(run):
    a, b = run["a_sharded"].params, run["b"].params  # both sharded: one program
    # Same seed and same hyperparameters: identical, whatever the other members do.
    for i in (0, 1, 6, 7):
        for x, y in zip(_member(a, i), _member(b, i), strict=True):
            np.testing.assert_array_equal(x, y)
    for i in (2, 3, 4):  # another learning rate, weight decay, train fraction
        assert not np.allclose(_member(a, i)[1], _member(b, i)[1]), i
    ka = np.abs(pop_ops.to_numpy(a)["layers/0/kernel"][3]).sum()
    kb = np.abs(pop_ops.to_numpy(b)["layers/0/kernel"][3]).sum()
    assert kb < ka  # decay shrinks kernels
    expect = np.full(N, 1347)
    expect[4] = round(0.05 * 1347)
    np.testing.assert_array_equal(run["b_subset_sizes"], expect)


def test_subsets_compiled_for_speed_are_the_same(default_compile):
    """The training subsets come from a program compiled like the initialisation
    (`init_compiler_options`): the same subsets as at the default optimisation level."""
    keys = jax.random.split(jax.random.key(3), 6)
    n_sub = jax.numpy.asarray([1, 5, 50, 99, 100, 37])
    args = (keys, n_sub, jax.numpy.arange(100), False)
    fast = np.asarray(train.subsets_program()(*args))
    np.testing.assert_array_equal(
        fast,
        jax.jit(train.member_subsets, static_argnums=3, compiler_options=default_compile)(*args),
    )
    np.testing.assert_array_equal(fast.sum(1), n_sub)


def test_epoch_compiles_once(run):
    assert run["traces_unsharded"] == 1  # three epochs, one trace
    assert run["cache_unsharded"] == 1
    assert run["traces_total"] == 2  # sharded inputs: one more program, also for 3 epochs


@pytest.mark.parametrize("shard", [False, True])
def test_given_params_survive_training(run, random_params, shard):
    """Also when the caller's arrays are already split like the state (placing them again
    moves nothing, so init must copy them)."""
    trainer = run["trainer"]
    pop = random_params(run["target"], 0, n=N)
    if shard:
        pop = trainer.place(pop)
    before = pop_ops.to_numpy(pop)
    state = trainer.init(jax.random.key(1), N, learning_rate=0.1, params=pop, shard=shard)
    state, _ = trainer.train_epoch(state, 0)  # donates the state's buffers
    after = pop_ops.to_numpy(pop)  # the caller's arrays are still alive and unchanged
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])
    assert not np.allclose(
        np.asarray(state.params["layers"]["1"]["kernel"]), before["layers/1/kernel"]
    )


def test_invalid_hyperparameters(run, cnn1d_target, digits):
    trainer = run["trainer"]
    key = jax.random.key(0)
    cases = [
        (dict(learning_rate=0.0), "learning_rate must be > 0"),
        (dict(learning_rate=[0.1] * 7 + [-1.0]), "learning_rate must be > 0"),
        (dict(learning_rate=float("nan")), "learning_rate: values must be finite"),
        (dict(train_fraction=0.0), r"train_fraction must be in \(0, 1\]"),
        (dict(train_fraction=1.5), r"train_fraction must be in \(0, 1\]"),
        (dict(weight_decay=-1e-4), "weight_decay must be >= 0"),
        (dict(learning_rate=[0.1, 0.2]), r"learning_rate: expected a scalar or shape \(8,\)"),
        (dict(init_scale=np.ones((8, 1))), r"init_scale: expected a scalar or shape \(8,\)"),
        (dict(member_keys=jax.random.split(key, 3)), "member_keys: expected 8 typed PRNG keys"),
    ]
    for kwargs, msg in cases:
        with pytest.raises(ValueError, match=msg):
            trainer.init(key, N, **kwargs)
    with pytest.raises(ValueError, match="n must be >= 1"):
        trainer.init(key, 0)
    with pytest.raises(ValueError, match="params hold 8 targets, n=4"):
        trainer.init(key, 4, params=run["a"].params)
    with pytest.raises(ValueError, match="unknown optimizer 'lbfgs'"):
        TrainConfig(optimizer="lbfgs")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="steps_per_epoch must be >= 1"):
        TrainConfig(steps_per_epoch=0)
    with pytest.raises(ValueError, match=r"takes inputs \(40,\), dataset digits has \(8, 8\)"):
        Trainer(cnn1d_target, digits)


def test_member_chunks_give_the_same_epoch(digits):
    """32 members stepping in two chunks of 16 (two per fake device) or all at once: the
    same bits, NaN quarantine included. (Not one member per device: XLA's CPU code for a
    vmapped batch of one rounds differently on some CPUs, e.g. AMD Zen 3.) The "memory"
    rule picks 16 here: an epoch's temporaries are several times a member's state, and
    16 is the narrowest usable chunk."""
    target = make_target("mlp", input_shape=(8, 8), widths=(8,), out_features=10)
    lrs = [0.3] * 5 + [HUGE] + [0.1] * 26
    results = []
    for chunk, picked in ((32, 32), (16, 16), ("memory", 16)):
        config = TrainConfig(optimizer="sgd", batch_size=16, steps_per_epoch=5, member_chunk=chunk)
        trainer = Trainer(target, digits, config)
        state = trainer.init(jax.random.key(1), 32, learning_rate=lrs)
        assert trainer.member_chunk(state) == picked
        state, metrics = trainer.train_epoch(state, 0)
        results.append((_host(state), _host(metrics)))
    assert trainer.memory_chunks == {32: 16}  # decided once per population size
    (a, ma), *others = results
    for b, mb in others:
        for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
            np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(a.diverged, b.diverged)
        for k in ma:  # epoch means: the reduction may round differently in the last bit
            np.testing.assert_allclose(ma[k], mb[k], rtol=1e-6)
    assert np.asarray(a.diverged).tolist() == [i == 5 for i in range(32)]
    for bad in (0, 2.5, "auto"):
        with pytest.raises(ValueError, match="member_chunk"):
            TrainConfig(member_chunk=bad)


def test_one_member_matches_a_hand_written_optax_loop(mlp_target, digits):
    """The update rule against an independent reference: a plain optax AdamW loop over the
    same batches (the member's data order from its key, as `train_epoch` documents), with
    weight decay on the kernels only, gives member 0's weights to 1e-6."""
    batch, steps, epochs, lr, wd = 32, 4, 2, 1e-2, 0.1
    trainer = Trainer(mlp_target, digits, TrainConfig(batch_size=batch, steps_per_epoch=steps))
    state = trainer.init(
        jax.random.key(7), 2, learning_rate=[lr, 3e-3], weight_decay=[wd, 0.0], shard=False
    )
    p0 = jax.tree.map(lambda v: np.array(v[0]), state.params)  # before the buffers are donated
    key0, subset0 = state.key[0], np.asarray(state.subset[0])
    for e in range(epochs):
        state, _ = trainer.train_epoch(state, e)
    got = jax.tree.map(lambda v: np.asarray(v[0]), state.params)

    mask = jax.tree.unflatten(mlp_target.treedef, [s.role == "kernel" for s in mlp_target.spec])
    x_all, y_all = jnp.asarray(digits.x_train), jnp.asarray(digits.y_train)
    n_sub = int(subset0.sum())

    def loss_fn(p, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(mlp_target.apply(p, x), y).mean()

    def reference(weight_decay):
        tx = optax.adamw(lr, weight_decay=weight_decay, mask=mask)
        params = jax.tree.map(jnp.asarray, p0)
        opt_state = tx.init(params)
        for e in range(epochs):
            order = np.asarray(
                shuffled_order(jax.random.fold_in(jax.random.fold_in(key0, 2), e), subset0)
            )
            for j in range(steps):
                idx = order[(j * batch + np.arange(batch)) % n_sub]
                grads = jax.grad(loss_fn)(params, x_all[idx], y_all[idx])
                updates, opt_state = tx.update(grads, opt_state, params)
                params = optax.apply_updates(params, updates)
        return params

    chex.assert_trees_all_close(got, reference(wd), atol=1e-6, rtol=1e-6)
    # the weight decay is part of what is checked: without it the weights end elsewhere
    with pytest.raises(AssertionError):
        chex.assert_trees_all_close(got, reference(0.0), atol=1e-6, rtol=1e-6)


def _reference_chains(steps: int):
    """Today's optax chains of every training loop, as they were written at their sites, and
    the `make_optimizer` call that replaces each."""
    lr, wd = 3e-3, 1e-3
    mask = {"w": True, "b": False}
    warmup = optax.warmup_cosine_decay_schedule(0.0, lr, max(1, steps // 20), max(steps, 2))
    trainer_wd = {"weight_decay": wd, "decay_mask": mask}
    return {
        "trainer adam": (
            optax.chain(
                optax.scale_by_adam(),
                optax.add_decayed_weights(wd, mask=mask),
                optax.scale_by_learning_rate(lr),
            ),
            make_optimizer("adam", lr, **trainer_wd),
        ),
        "trainer sgd": (
            optax.chain(optax.add_decayed_weights(wd, mask=mask), optax.scale_by_learning_rate(lr)),
            make_optimizer("sgd", lr, **trainer_wd),
        ),
        "trainer momentum": (
            optax.chain(
                optax.add_decayed_weights(wd, mask=mask),
                optax.trace(decay=0.9),
                optax.scale_by_learning_rate(lr),
            ),
            make_optimizer("momentum", lr, **trainer_wd),
        ),
        "trainer rmsprop": (
            optax.chain(
                optax.add_decayed_weights(wd, mask=mask),
                optax.scale_by_rms(decay=0.9),
                optax.scale_by_learning_rate(lr),
            ),
            make_optimizer("rmsprop", lr, **trainer_wd),
        ),
        "hypertrain adam": (optax.adam(lr), hypertrain.make_optimizer("adam", lr)),
        "hypertrain adam b1": (
            optax.adam(lr, b1=0.8),
            hypertrain.make_optimizer("adam", lr, b1=0.8),
        ),
        "hypertrain sgd": (optax.sgd(lr, momentum=0.9), hypertrain.make_optimizer("sgd", lr)),
        "hypertrain sgd nesterov": (
            optax.sgd(lr, momentum=0.5, nesterov=True),
            hypertrain.make_optimizer("sgd", lr, momentum=0.5, nesterov=True),
        ),
        "metanets predict": (
            optax.adamw(warmup, weight_decay=wd),
            make_optimizer("adam", lr, schedule="warmup_cosine", steps=steps, weight_decay=wd),
        ),
        "metanets meta_train": (
            optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(warmup, weight_decay=wd)),
            make_optimizer(
                "adam", lr, schedule="warmup_cosine", steps=steps, weight_decay=wd, clip_norm=1.0
            ),
        ),
        "metanets predict, 0 steps": (
            optax.adamw(optax.warmup_cosine_decay_schedule(0.0, lr, 1, 2), weight_decay=wd),
            make_optimizer("adam", lr, schedule="warmup_cosine", steps=0, weight_decay=wd),
        ),
        "generators": (
            optax.adam(optax.cosine_decay_schedule(lr, steps)),
            make_optimizer("adam", lr, schedule="cosine", steps=steps),
        ),
    }


@pytest.mark.parametrize("name", list(_reference_chains(6)))
def test_make_optimizer_equals_each_chain_it_replaces(name):
    """The same state structure (checkpoints of either restore into the other) and the same
    updates, bit for bit, over six steps of random gradients."""
    steps = 6
    ref, got = _reference_chains(steps)[name]
    params = {"w": jnp.ones((3, 4)), "b": jnp.full((4,), 0.5)}
    s_ref, s_got = ref.init(params), got.init(params)
    assert jax.tree.structure(s_ref) == jax.tree.structure(s_got)
    for i in range(steps):
        k = jax.random.key(i)
        grads = {"w": 3 * jax.random.normal(k, (3, 4)), "b": jax.random.normal(k, (4,))}
        u_ref, s_ref = jax.jit(ref.update)(grads, s_ref, params)
        u_got, s_got = jax.jit(got.update)(grads, s_got, params)
        for a, b in zip(jax.tree.leaves(u_ref), jax.tree.leaves(u_got), strict=True):
            np.testing.assert_array_equal(a, b)
        params = optax.apply_updates(params, u_ref)


def test_make_optimizer_rejects_bad_options():
    with pytest.raises(ValueError, match="unknown optimizer 'adagrad'"):
        make_optimizer("adagrad")
    with pytest.raises(ValueError, match="learning_rate must be > 0"):
        make_optimizer("adam", 0.0)
    with pytest.raises(ValueError, match="needs steps"):
        make_optimizer("adam", 1e-3, schedule="cosine")
    with pytest.raises(ValueError, match="unknown schedule"):
        make_optimizer("adam", 1e-3, schedule="linear", steps=3)
    with pytest.raises(TypeError):
        make_optimizer("sgd", 1e-3, nesterov=True)  # plain sgd has no options
    with pytest.raises(TypeError):
        hypertrain.make_optimizer("adam", 1e-3, weight_decay=0.1)  # not a run-config option
