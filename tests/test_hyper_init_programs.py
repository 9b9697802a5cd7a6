"""Programs that run once: `init_module` builds an NNX module with one cached program."""

import jax
import numpy as np
from flax import nnx

from hyper.init_programs import cached_module_programs, init_module
from metanets.baselines import MLPRegressor
from metanets.models import GraphMetanet


def test_init_module_equals_eager_construction():
    """`init_module` builds an NNX module in one compiled program, shared across seeds: the
    weights equal eager construction up to float rounding (fused multiplies: an ulp);
    unhashable arguments and a call inside a jit fall back to eager construction."""

    def leaves(m):
        return [np.asarray(v) for v in jax.tree.leaves(nnx.state(m))]

    def same(a, b):
        assert type(a) is type(b)
        for x, y in zip(leaves(a), leaves(b), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)

    kw = dict(hidden=8, num_layers=1, readout="layer")
    for seed in (0, 5):
        same(
            init_module(GraphMetanet, 9, seed=seed, **kw),
            GraphMetanet(9, **kw, rngs=nnx.Rngs(seed)),
        )
    programs = cached_module_programs()
    init_module(GraphMetanet, 9, seed=7, **kw)
    assert cached_module_programs() == programs  # one program per arguments, any seed
    eager = MLPRegressor(4, hidden=8, depth=1, rngs=nnx.Rngs(2))
    same(init_module(MLPRegressor, 4, hidden=8, depth=1, seed=2), eager)
    mean = np.arange(4.0)  # unhashable: built eagerly
    same(
        init_module(MLPRegressor, 4, hidden=8, depth=1, mean=mean, seed=2),
        MLPRegressor(4, hidden=8, depth=1, mean=mean, rngs=nnx.Rngs(2)),
    )
    x = jax.numpy.ones((2, 4))
    inside = jax.jit(lambda x: init_module(MLPRegressor, 4, hidden=8, depth=1, seed=2)(x))(x)
    np.testing.assert_allclose(np.asarray(inside), np.asarray(eager(x)), rtol=1e-6)
