"""Conditions: specs, JSON round trip, batch validation, encodings, sampling."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hyper.hypernets import conditions as cond_lib
from hyper.hypernets.conditions import Categorical, Continuous, Noise, Vector

SPECS = (
    Continuous("lr", (), low=1e-4, high=1e-2),
    Continuous("g", (3,)),
    Categorical("task", num_classes=4, dim=3),
    Vector("emb", 5),
    Noise("z", 2),
)


def good_batch(m=3):
    return {
        "lr": np.full((m,), 1e-3, np.float32),
        "g": np.linspace(0, 1, 3 * m, dtype=np.float32).reshape(m, 3),
        "task": np.arange(m) % 4,
        "emb": np.ones((m, 5), np.float32),
        "z": np.zeros((m, 2), np.float32),
    }


# --- encodings --------------------------------------------------------------------------

_encode_jit = jax.jit(cond_lib.encode, static_argnames="encoding")
unit_batches = hnp.arrays(
    np.float32,
    st.tuples(st.integers(1, 4), st.integers(1, 5)),
    elements=st.floats(0, 1, width=32),
)


@settings(max_examples=25, deadline=None)
@given(unit_batches)
def test_cos_sin_has_constant_l2_norm(gamma):
    e = np.asarray(_encode_jit(gamma, encoding="cos|sin"))
    d = gamma.shape[1]
    assert e.shape == (gamma.shape[0], 2 * d)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), np.sqrt(d), rtol=1e-5)
    ref = np.concatenate([np.cos(np.pi * gamma / 2), np.sin(np.pi * gamma / 2)], 1)
    np.testing.assert_allclose(e, ref, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(unit_batches)
def test_z_one_minus_z_has_constant_l1_norm(gamma):
    e = np.asarray(_encode_jit(gamma, encoding="z|1-z"))
    np.testing.assert_allclose(np.abs(e).sum(1), gamma.shape[1], rtol=1e-5)
    np.testing.assert_array_equal(e[:, : gamma.shape[1]], gamma)


@settings(max_examples=25, deadline=None)
@given(unit_batches)
def test_raw_passes_through_and_normalize_has_unit_norm(gamma):
    np.testing.assert_array_equal(np.asarray(_encode_jit(gamma, encoding="raw")), gamma)
    e = np.asarray(_encode_jit(gamma, encoding="normalize"))
    norms = np.linalg.norm(gamma, axis=1)
    big = norms > 1e-3
    np.testing.assert_allclose(np.linalg.norm(e[big], axis=1), 1.0, rtol=1e-5)
    assert np.all(np.isfinite(e))  # the ε guard: γ = 0 gives 0, not NaN


def test_encoded_width_and_unknown_encoding():
    assert cond_lib.encoded_width(SPECS, "cos|sin") == 2 * (1 + 3)
    assert cond_lib.encoded_width(SPECS, "z|1-z") == 8
    assert cond_lib.encoded_width(SPECS, "raw") == 4
    with pytest.raises(ValueError, match="unknown encoding 'cos'"):
        cond_lib.encode(jnp.zeros((2, 1)), "cos")


# --- specs ------------------------------------------------------------------------------


def test_json_round_trip():
    text = json.dumps(cond_lib.to_json(SPECS))
    back = cond_lib.from_json(json.loads(text))
    assert back == SPECS
    assert back[1].shape == (3,) and isinstance(back[1].shape, tuple)


def test_continuous_shape_is_a_tuple_of_ints():
    assert Continuous("a", 3).shape == (3,)
    assert Continuous("a", [2, np.int64(2)]).shape == (2, 2)
    assert Continuous("a", (2, 3)).size == 6
    for bad in ("x", 2.0, (2, 1.5), (True,)):
        with pytest.raises(TypeError, match="'a'.*shape"):
            Continuous("a", bad)


@pytest.mark.parametrize(
    "specs, match",
    [
        ([], "at least one"),
        ([Continuous("a"), Vector("a", 2)], "unique"),
        ([Continuous("a", (0,))], "'a'.*positive"),
        ([Continuous("a", low=1.0, high=1.0)], "'a'.*low < high"),
        ([Continuous("a", low=0.0, high=float("inf"))], "'a'.*finite"),
        ([Categorical("c", 0)], "'c'.*num_classes"),
        ([Categorical("c", 3.5)], "'c'.*ints"),
        ([Vector("v", 0)], "'v'.*dim"),
        ([Noise("n", -1)], "'n'.*dim"),
        ([Continuous("")], "non-empty"),
    ],
)
def test_check_specs_refuses_bad_declarations(specs, match):
    with pytest.raises(ValueError, match=match):
        cond_lib.check_specs(specs)


def test_check_specs_refuses_non_specs_and_unknown_json_kinds():
    with pytest.raises(TypeError, match="not a condition spec"):
        cond_lib.check_specs([{"name": "a"}])
    with pytest.raises(ValueError, match="unknown condition kind 'cont'"):
        cond_lib.from_json([{"kind": "cont", "name": "a"}])
    assert cond_lib.check_specs(Continuous("a")) == (Continuous("a"),)


# --- batch validation --------------------------------------------------------------------


def test_validate_returns_batch_size_and_allows_missing_noise():
    assert cond_lib.validate(SPECS, good_batch(3)) == 3
    batch = good_batch(2)
    del batch["z"]
    assert cond_lib.validate(SPECS, batch) == 2
    with pytest.raises(ValueError, match="missing condition 'z'"):
        cond_lib.validate(SPECS, batch, allow_missing_noise=False)


def _with(**changes):
    batch = good_batch(3)
    for k, v in changes.items():
        if v is None:
            del batch[k]
        else:
            batch[k] = v
    return batch


@pytest.mark.parametrize(
    "batch, match",
    [
        (_with(lr=np.full((3,), 0.5, np.float32)), r"'lr'.*\[0.0001, 0.01\].*0.5"),
        (_with(g=np.full((3, 3), -0.1, np.float32)), r"'g'.*\[0.0, 1.0\]"),
        (_with(g=np.zeros((3, 2), np.float32)), r"'g' has shape \(3, 2\), expected \(M, 3\)"),
        (_with(lr=np.float32(1e-3)), r"'lr' has shape \(\), expected \(M,\)"),
        (_with(lr=np.full((3, 1), 1e-3)), r"'lr' has shape \(3, 1\)"),
        (_with(emb=np.ones((2, 5))), "'emb' has batch 2, others have 3"),
        (_with(extra=np.ones(3)), r"unknown conditions \['extra'\]"),
        (_with(g=None), "missing condition 'g'"),
        (_with(task=np.array([0, 4, 1])), r"'task'.*\[0, 4\).*\[0, 4\]"),
        (_with(task=np.array([0, -1, 1])), r"'task'.*\[0, 4\)"),
        (_with(task=np.array([0.0, 1.0, 2.0])), "'task'.*integers.*float"),
        (_with(task=np.array([True, False, True])), "'task'.*integers.*bool"),
        (_with(g=np.full((3, 3), np.nan, np.float32)), "'g'.*finite"),
        (_with(emb=np.full((3, 5), np.inf, np.float32)), "'emb'.*finite"),
        (_with(emb=np.full((3, 5), "a")), "'emb'.*real numbers"),
        (_with(emb=np.ones((3, 5), np.complex64)), "'emb'.*real numbers"),
        ({k: v[:0] for k, v in good_batch().items()}, r"empty batch"),
        ({}, "missing condition 'lr'"),
    ],
)
def test_validate_names_the_offending_condition(batch, match):
    with pytest.raises(ValueError, match=match):
        cond_lib.validate(SPECS, batch)


def test_validate_refuses_a_non_mapping_and_skips_values_of_tracers():
    with pytest.raises(TypeError, match="dict of arrays"):
        cond_lib.validate(SPECS, [1, 2, 3])

    def traced(lr):  # shapes are still checked under a trace, values cannot be
        return cond_lib.validate(SPECS[:1], {"lr": lr})

    assert jax.jit(traced).lower(jnp.ones((4,))).compile() is not None
    with pytest.raises(ValueError, match="'lr' has shape"):
        jax.jit(traced).lower(jnp.ones((4, 2)))


# --- sampling ---------------------------------------------------------------------------


def test_sample_is_valid_and_deterministic_per_key():
    sample = jax.jit(cond_lib.sample, static_argnums=(0, 2))
    a = sample(SPECS, jax.random.key(0), 64)
    assert cond_lib.validate(SPECS, a) == 64
    b = sample(SPECS, jax.random.key(0), 64)
    c = sample(SPECS, jax.random.key(1), 64)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["g"], c["g"])
    assert a["task"].dtype == jnp.int32 and a["z"].shape == (64, 2)
    assert float(a["lr"].min()) >= 1e-4 and float(a["lr"].max()) <= 1e-2
