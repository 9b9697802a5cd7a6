"""metanets.transformer / predict "gmn_t": the NG-T-style graph transformer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hyper.symmetry import check_equivalent, permute, random_permutations
from metanets import batching, datasets, predict
from metanets.models import GraphMetanet
from metanets.transformer import segment_softmax
from tests.test_metanets_predict import synthetic  # noqa: F401  (fixture)


def test_segment_softmax_masks_padding_and_empty_segments():
    logits = jnp.asarray([[1.0], [2.0], [5.0], [0.0], [3.0]])
    ids = jnp.asarray([0, 0, 0, 2, 2])
    mask = jnp.asarray([True, True, False, True, True])  # row 2 padded; segment 1 empty
    w = np.asarray(segment_softmax(logits, ids, 3, mask))[:, 0]
    e = np.exp([1.0, 2.0])
    np.testing.assert_allclose(w[:2], e / e.sum(), rtol=1e-6)
    assert w[2] == 0.0
    np.testing.assert_allclose(w[3:], np.exp([0.0, 3.0]) / np.exp([0.0, 3.0]).sum(), rtol=1e-6)


def test_graph_transformer_is_invariant_to_hidden_permutations(synthetic):  # noqa: F811
    """Permuting hidden units (a real symmetry of the network, from hyper.symmetry) leaves
    the transformer's prediction unchanged, with edge and global attention, on a residual
    BatchNorm CNN; padding graphs do not leak into real ones."""
    target = synthetic.targets[1]
    one = jax.tree.map(lambda a: a[0], synthetic.populations[1])
    moved = permute(target, one, random_permutations(target, jax.random.key(3)))
    x = np.random.default_rng(1).standard_normal((4, 8, 8)).astype(np.float32)
    assert check_equivalent(target, one, moved, x)
    assert not all(
        bool(jnp.array_equal(a, b))
        for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(moved), strict=True)
    )
    model, _ = predict.build_gmn(synthetic, kind="gmn_t", hidden=16, num_layers=2)
    assert model.layer_kind == "attention" and model.layers[0].global_attention
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda s, g: nnx.merge(graphdef, s)(g))
    both = jax.tree.map(lambda a, b: jnp.stack([a, b]), one, moved)
    bucket = dict(window=(5, 5), min_nodes=128, min_edges=256, min_graphs=4)  # one program
    g = batching.batch_graphs([(target, both)], **bucket)
    y = np.asarray(forward(state, g))
    assert np.all(np.isfinite(y)) and np.abs(y[0]).max() > 0
    np.testing.assert_allclose(y[0], y[1], atol=1e-5, rtol=0)
    # another network in the batch (in place of padding) leaves the prediction as it was
    other = jax.tree.map(lambda a: a[:1], synthetic.populations[0])
    g2 = batching.batch_graphs([(target, both), (synthetic.targets[0], other)], **bucket)
    assert g2.nodes["x"].shape == g.nodes["x"].shape and g2.edges["w"].shape == g.edges["w"].shape
    np.testing.assert_allclose(np.asarray(forward(state, g2))[:2], y[:2], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="layer must be"):
        GraphMetanet(25, layer="transformer", rngs=nnx.Rngs(0))


def test_gmn_t_learns_the_synthetic_label_and_round_trips(synthetic, tmp_path):  # noqa: F811
    """gmn_t: training loss falls, held-out tau far above chance (0), and a saved
    predictor loads to the same predictions."""
    train, test = datasets.split_by_run(synthetic.run, 0.25)
    kw = dict(epochs=20, batch_size=16, hidden=16, num_layers=2, eval_every=5, lr=3e-3)
    pred = predict.fit("gmn_t", synthetic, train, **kw)
    assert pred.kind == "gmn_t" and pred.model.layer_kind == "attention"
    losses = [h["train_loss"] for h in pred.history]
    assert losses[-1] < 0.5 * losses[0], losses
    tau = predict.evaluate(pred, synthetic, test)["tau"]
    assert tau > 0.3, tau  # 30 held-out runs: chance is 0 (sd 0.13)
    y = pred.predict(synthetic, test)
    again = predict.load_predictor(predict.save_predictor(pred, tmp_path / "gmn_t"))
    assert again.kind == "gmn_t" and again.config["heads"] == 4
    np.testing.assert_allclose(again.predict(synthetic, test), y, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="unknown hyperparameters"):
        predict.fit("gmn", synthetic, train, heads=2)
