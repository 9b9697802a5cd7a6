"""The core reports bad input with `hyper.WeightspaceError` / `hyper.WeightspaceTypeError`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hyper
from hyper import align, compact, merge, population, symmetry
from hyper.errors import INPUT_ERRORS
from hyper.tree import check_str_keys


def test_the_face_exports_the_errors():
    assert hyper.WeightspaceError in INPUT_ERRORS
    assert hyper.WeightspaceTypeError in INPUT_ERRORS
    assert issubclass(hyper.WeightspaceError, ValueError)
    assert issubclass(hyper.WeightspaceTypeError, TypeError)


@pytest.fixture(scope="module")
def mlp():
    return hyper.make_target("mlp", input_shape=(4,), widths=(3,), out_features=2)


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda t: hyper.make_target("nope", input_shape=(4,)), hyper.WeightspaceError),
        (lambda t: hyper.make_target("mlp", input_shape="4"), hyper.WeightspaceTypeError),
        (lambda t: hyper.target_from_config({"arch": "mlp"}), hyper.WeightspaceError),
        (lambda t: t.init_population(jax.random.key(0), 0), hyper.WeightspaceError),
        (lambda t: t.validate([]), hyper.WeightspaceTypeError),
        (lambda t: t.select(roles=["nope"]), hyper.WeightspaceError),
        (lambda t: check_str_keys({1: jnp.zeros(2)}), hyper.WeightspaceTypeError),
        (lambda t: population.stack([]), hyper.WeightspaceError),
        (lambda t: population.unflatten(t, np.zeros((1, 2), bool)), hyper.WeightspaceTypeError),
        (lambda t: symmetry.permute(t, t.init(jax.random.key(0)), []), hyper.WeightspaceError),
        (
            lambda t: compact.group_importance(t, t.init(jax.random.key(0)), method="nope"),
            hyper.WeightspaceError,
        ),
        (lambda t: align.sinkhorn(jnp.zeros((2, 3))), hyper.WeightspaceError),
        (lambda t: merge.loss_barrier([1.0]), hyper.WeightspaceError),
    ],
)
def test_bad_input_raises_an_input_error(mlp, call, error):
    with pytest.raises(error):
        call(mlp)
