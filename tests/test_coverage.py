"""Issue 28's acceptance harness in the test suite: one hand-written network per layer kind
(`bench/coverage_nets.py`: NNX, Linen and pure functions) through every operation
(`bench/coverage_checks.py`), each checked numerically: compact == masked original,
permuted == original function, graph round trip exact, a PyTorch-convention forward of the
export == ours within 1e-5, and more (see the checks' docstrings).

The cells issue 28 requires OK must be OK; every other cell must be OK or a clear refusal,
never WRONG, PART (silently partial) or ERR. Tiny widths; each network is built once per
module and its compiled programs are shared by its operations. The whole matrix (more
networks, wider) runs in `bench/coverage.py`.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np
import pytest

from bench.coverage_checks import (
    ALLOWED_REFUSALS,
    OPERATIONS,
    REQUIRED_OK,
    Case,
    Sizes,
    Verdict,
    run_cell,
    status,
    zero_units,
)
from bench.coverage_nets import NETS, net
from hyper.errors import WeightspaceError

# One network per layer kind of issue 28 (the bench runs all of `NETS`).
TEST_NETS = (
    "lenet",  # NNX conv, max_pool, flatten, dense
    "flax_tutorial_linen",  # Linen conv, avg_pool, flatten
    "mlp_layernorm",  # LayerNorm
    "vit",  # patches, position Param, MultiHeadAttention, LayerNorm, gelu, residual
    "token_embedding",  # nnx.Embed on integer tokens
    "depthwise_separable",  # grouped / depthwise conv
    "cnn_reshape_input",  # reshape of the raw input inside __call__
    "function_flat",  # Target.from_function with {w1, b1, w2, b2}
    "shared_weight",  # one weight used by two layers: refused or OK, never wrong
)
SIZES = Sizes(width=4, batch=32, members=4, train_steps=100, train_batch=32)
REQUIRED = set(REQUIRED_OK)


@pytest.fixture(scope="module")
def cases():
    """Networks built once for the module, by name."""
    return {}


def _case(cases: dict, name: str) -> Case:
    if name not in cases:
        cases[name] = Case(net(name), SIZES)
    return cases[name]


@pytest.mark.parametrize(
    ("name", "op"), [(n, op) for n in TEST_NETS for op in OPERATIONS], ids=lambda v: v
)
def test_cell(cases, name, op):
    cell = _case(cases, name).cell(op)
    if (name, op) in REQUIRED:
        assert status(cell) == "OK", f"{name}/{op} is required OK: {cell}"
    else:
        assert status(cell) in ("OK", "refused"), f"{name}/{op}: {cell}"
        if status(cell) == "refused":
            assert len(cell) > len("refused: ") + 20, f"{name}/{op}: refusal without a reason"


def test_the_matrix_covers_the_issue():
    """At least 16 hand-written networks; every layer kind the tests take is one of them;
    every required and allowed-refusal cell names a real network and operation."""
    names = {n.name for n in NETS}
    assert len(NETS) >= 16 and set(TEST_NETS) <= names
    assert {n.frontend for n in NETS} == {"nnx", "linen", "function"}
    assert all(n in names and op in OPERATIONS for n, op in REQUIRED_OK)
    assert all(n in names and set(ops) <= set(OPERATIONS) for n, ops in ALLOWED_REFUSALS.items())


def test_cells_are_classified():
    def raises(e):
        def fn():
            raise e

        return fn

    assert run_cell(lambda: "OK") == "OK"
    assert run_cell(raises(WeightspaceError("layer fc1: primitive foo"))).startswith(
        "refused: layer fc1"
    )
    assert run_cell(raises(Verdict("WRONG: off by 1"))) == "WRONG: off by 1"
    assert run_cell(raises(KeyError("x"))).startswith("ERR: KeyError")
    assert run_cell(raises(ValueError("a flax shape error"))).startswith("ERR: ValueError")
    assert [status(c) for c in ("OK 2 groups", "refused: x", "PART: y", "ERR: Z: m")] == [
        "OK",
        "refused",
        "PART",
        "ERR",
    ]


class _Strided(NamedTuple):  # the fields of hyper.symmetry.StridedAxis
    path: str
    axis: int
    shape: tuple[int, ...]
    sub: int


def test_zero_units_whole_axes_and_strided_sub_axes():
    """The masked original: whole axes, and a dense kernel after a flatten of [H, W, C]
    whose rows are viewed as (H, W, C) with the units on C."""
    a = np.arange(12.0).reshape(3, 4)
    z = zero_units(a, ("k", 1), np.array([0, 2]))
    assert np.all(z[:, [0, 2]] == 0) and np.array_equal(z[:, [1, 3]], a[:, [1, 3]])
    rows = np.arange(1, 2 * 2 * 3 * 5 + 1, dtype=float).reshape(12, 5)  # (H=2, W=2, C=3) x out
    before = rows.copy()
    z = zero_units(rows, _Strided("fc1/kernel", 0, (2, 2, 3), 2), np.array([1]))
    view = z.reshape(2, 2, 3, 5)
    assert np.all(view[:, :, 1] == 0)
    assert np.array_equal(view[:, :, [0, 2]], rows.reshape(2, 2, 3, 5)[:, :, [0, 2]])
    assert np.count_nonzero(z == 0) == 2 * 2 * 5 and np.array_equal(rows, before)


def test_checks_can_fail(cases):
    """A PyTorch forward that is off by 1e-3, and outputs that ignore the module, are
    caught (the checks are numerical, not "it runs")."""
    case = _case(cases, "mlp_layernorm")
    good = case.net
    try:
        case.net = dataclasses.replace(
            good, torch_forward=lambda get, x: good.torch_forward(get, x) + 1e-3
        )
        assert case.cell("torch").startswith("WRONG: the PyTorch-convention forward differs")
        case.net = dataclasses.replace(good, torch_forward=lambda get, x: get("nope"))
        assert case.cell("torch").startswith("WRONG: the export fits no PyTorch module")
    finally:
        case.net = good
    reference = case.reference
    try:
        case.reference = lambda x: reference(x) * 1.01
        assert case.cell("spec").startswith("WRONG: apply on the module's own weights")
    finally:
        case.reference = reference
