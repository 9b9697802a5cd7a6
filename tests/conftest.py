"""Test settings: 8 fake CPU devices (set before JAX starts its backend), strict promotion."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(scope="session")
def digits():
    from hyper import data

    return data.load("digits")


@pytest.fixture(scope="session")
def mlp_target():
    from hyper.architectures import make_target

    return make_target("mlp", input_shape=(8, 8), widths=(16,), out_features=10)


@pytest.fixture(scope="session")
def cnn_target():
    from hyper.architectures import make_target

    return make_target("cnn2d", input_shape=(8, 8), channels=(4, 4), out_features=10)


@pytest.fixture(scope="session")
def rescnn_target():
    from hyper.architectures import make_target

    return make_target("rescnn", input_shape=(8, 8), channels=4, num_blocks=1, out_features=10)
