"""Every operation of weightspace on one hand-written network, each checked numerically
(issue 28; the columns a-j of ``../shared/research/coverage-turn2.md``).

A `Case` builds a network once (target, sample batch, weights, population, groups) and
shares it between the operations. Each operation returns one cell:

- ``OK`` (with a figure where one says more, e.g. the training loss before -> after);
- ``refused: <reason>``: a `hyper.WeightspaceError` (the package's clear refusal), or the
  package reporting which layers it leaves out and why;
- ``PART: <what>``: it runs but silently covers only part (a hidden layer's units in no
  structural group, a leaf typed "other" and initialised to zero, activations unknown);
- ``WRONG: <what>``: a numerical check failed;
- ``ERR: <type>: <message>``: any other exception (a crash, not a refusal).

Used by `bench/coverage.py` (the whole matrix) and `tests/test_coverage.py`.
"""

from __future__ import annotations

import dataclasses
import functools
import tempfile
import traceback
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bench.coverage_nets import Net, dataset, true_fan_in
from hyper import checkpoint, compact, merge, symmetry
from hyper import population as pop_ops
from hyper.align import weight_matching
from hyper.errors import WeightspaceError
from hyper.hypernets import Continuous, HyperNet, generate
from hyper.train import TrainConfig, Trainer
from hyper.tree import flatten_dict
from metanets import graph_topology, graphs_to_population, population_to_graphs

__all__ = [
    "ALLOWED_REFUSALS",
    "OPERATIONS",
    "REQUIRED_OK",
    "Case",
    "Sizes",
    "Verdict",
    "run_cell",
    "status",
    "zero_units",
]

# The matrix columns, in the order of the research note (a-j).
OPERATIONS = ("spec", "pop", "train", "hyper", "graph", "prune", "align", "merge", "torch", "ckpt")

_CNN_OPS = ("prune", "align", "graph", "torch")
# The cells issue 28 requires OK, not refused (its first "Must show" section).
REQUIRED_OK: tuple[tuple[str, str], ...] = (
    *(
        (n, op)
        for n in ("lenet", "lenet_linen", "avgpool_gap", "flax_tutorial_linen")
        for op in _CNN_OPS
    ),
    ("mlp_layernorm", "prune"),
    *(("vit", op) for op in ("spec", "prune", "align", "graph", "torch")),
    ("cnn_reshape_input", "graph"),
    *(("function_flat", op) for op in ("spec", "pop", "train")),
    # Beyond the list: what the fixes of issue 28 made OK stays OK.
    *((n, op) for n in ("depthwise_separable", "grouped_conv") for op in _CNN_OPS),
    *(("token_embedding", op) for op in ("prune", "align", "graph")),
    *((n, "prune") for n in ("mlp_linen", "mlp_rmsnorm", "cnn_groupnorm")),
    ("cnn_groupnorm", "graph"),
)
# The only refusals the issue allows: what cannot be expressed. A weight shared between
# two layers has no graph with one edge per weight, and its two uses tie their units.
ALLOWED_REFUSALS: dict[str, tuple[str, ...]] = {"shared_weight": ("graph", "prune", "align")}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How big a check is: hidden width, batch, members, training steps."""

    width: int = 8
    batch: int = 32
    members: int = 4
    train_steps: int = 100
    train_batch: int = 32


class Verdict(Exception):
    """A cell decided inside an operation (PART / WRONG / refused with a reason)."""

    def __init__(self, cell: str):
        super().__init__(cell)
        self.cell = cell


def status(cell: str) -> str:
    """``OK``, ``refused``, ``PART``, ``WRONG`` or ``ERR``: the first word of a cell."""
    return cell.split(":")[0].split(" ")[0]


def _one_line(e: BaseException, limit: int = 240) -> str:
    msg = " ".join(str(e).split())
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def run_cell(fn: Callable[[], str]) -> str:
    """Runs one operation and classifies what happened."""
    try:
        return fn()
    except Verdict as v:
        return v.cell
    except WeightspaceError as e:
        return f"refused: {_one_line(e)}"
    except Exception as e:  # noqa: BLE001 - any other exception is a crash: report it
        where = traceback.extract_tb(e.__traceback__)[-1]
        place = f"{where.filename.rsplit('/', 1)[-1]}:{where.lineno}"
        return f"ERR: {type(e).__name__}: {_one_line(e)} ({place})"


def _close(a: Any, b: Any, tol: float = 1e-5) -> float | None:
    """None if ``|a - b| <= tol * max(1, max|a|)`` everywhere (finite), else the max error."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return float("nan")
    err = float(np.max(np.abs(a - b))) if a.size else 0.0
    return None if err <= tol * max(1.0, float(np.max(np.abs(a)))) else err


def _leaves_equal(target, a, b) -> list[str]:
    """Paths whose arrays differ (exactly)."""
    fa, fb = flatten_dict(a), flatten_dict(b)
    return [p for p in target.paths if not np.array_equal(np.asarray(fa[p]), np.asarray(fb[p]))]


# ---------------------------------------------------------------------------------------
# Group entries: whole axes today; strided sub-axes where `hyper.symmetry` has them
# ---------------------------------------------------------------------------------------


def group_entries(g: symmetry.Group) -> tuple[Any, ...]:
    """All entries of a group: `symmetry.entries` where it exists, else its whole axes."""
    entries = getattr(symmetry, "entries", None)
    return tuple(entries(g)) if entries is not None else tuple(g.axes)


def _entry_axis(entry: Any) -> tuple[str, int]:
    return (
        (entry[0], int(entry[1]))
        if isinstance(entry, tuple) and len(entry) == 2
        else (
            entry.path,
            int(entry.axis),
        )
    )


def zero_units(leaf: np.ndarray, entry: Any, removed: np.ndarray) -> np.ndarray:
    """`leaf` with the slices of units `removed` along `entry` set to zero (a copy).

    `entry`: ``(path, axis)``, or a strided entry (``path, axis, shape, sub``: the axis
    viewed row-major as `shape`, the units along sub-axis `sub`)."""
    out = np.array(leaf, copy=True)
    if isinstance(entry, tuple) and len(entry) == 2:
        index = [slice(None)] * out.ndim
        index[entry[1]] = removed
        out[tuple(index)] = 0
        return out
    ax, shape = int(entry.axis), tuple(entry.shape)
    view = out.reshape(out.shape[:ax] + shape + out.shape[ax + 1 :])
    index = [slice(None)] * view.ndim
    index[ax + int(entry.sub)] = removed
    view[tuple(index)] = 0
    return view.reshape(out.shape)


# ---------------------------------------------------------------------------------------
# One network, built once
# ---------------------------------------------------------------------------------------


class Case:
    """One network of the matrix with everything the operations share."""

    def __init__(self, net: Net, sizes: Sizes = Sizes(), seed: int = 0):
        self.net, self.sizes = net, sizes
        self.data = dataset(net.data)
        self.x = jnp.asarray(self.data.x_test[: sizes.batch])
        built = net.build(sizes.width, self.x)
        self.target, self.own, self.reference = built.target, built.own, built.reference
        self.rng = np.random.default_rng(seed)
        self.key = jax.random.key(seed)

    @functools.cached_property
    def population(self) -> Any:
        return self.target.init_population(self.key, self.sizes.members)

    @functools.cached_property
    def scrambled(self) -> Any:
        """One network whose every leaf varies per unit (biases, norm statistics too)."""
        leaves = symmetry.scrambled_params(self.target, np.random.default_rng(1))
        return jax.tree.unflatten(self.target.treedef, [jnp.asarray(a) for a in leaves])

    @functools.cached_property
    def groups(self) -> list[symmetry.Group]:
        groups = symmetry.structural_groups(self.target, sample_input=self.x)
        symmetry.verify_groups(self.target, jax.random.key(2), sample_input=self.x, groups=groups)
        return groups

    @functools.cached_property
    def coverage(self) -> str | None:
        """None if every hidden kernel's output axis is in a group; else the PART or
        refused cell that the structural operations report."""
        covered = {_entry_axis(e) for g in self.groups for e in group_entries(g)}
        kernels = [s for s in self.target.spec if s.role == "kernel"]
        if not kernels:
            return "PART: no kernel leaves found, nothing is grouped"
        last = max(s.layer for s in kernels)
        producers = [s for s in self.target.spec if s.role in ("kernel", "embedding")]
        missing = []
        for s in producers:
            if s.role == "kernel" and s.layer == last:
                continue  # the output layer: its units are the network's outputs
            outs = getattr(s, "out_axes", None) or (() if s.out_axis is None else (s.out_axis,))
            missing += [(s.path, ax) for ax in outs if (s.path, ax) not in covered]
        if not missing:
            return None
        left_out = getattr(symmetry, "left_out", None)
        said = {}
        if left_out is not None:
            for lo in left_out(self.target, self.x):
                said[(lo.path, lo.axis)] = f"{lo.layer}: {lo.primitive}: {lo.reason}"
        silent = [m for m in missing if m not in said]
        if silent:
            names = ", ".join(f"{p}[{a}]" for p, a in silent)
            return f"PART: in no group, unreported: {names}"
        return "refused: left out: " + "; ".join(dict.fromkeys(said[m] for m in missing))

    def logits(self, params: Any, x: Any = None) -> np.ndarray:
        return np.asarray(self.target.apply(params, self.x if x is None else x), np.float64)

    # --- a: spec ------------------------------------------------------------------------

    def spec(self) -> str:
        t = self.target
        err = _close(self.reference(self.x), t.apply(self.own, self.x))
        if err is not None:
            raise Verdict(f"WRONG: apply on the module's own weights differs by {err:.3g}")
        kernels = {s.path for s in t.spec if s.path.endswith("kernel")}
        kernels |= {s.path for s in t.spec for k in self.net.kernels if s.path.endswith(k)}
        untyped = [
            f"{p} is {t.leaf(p).role!r}" for p in sorted(kernels) if t.leaf(p).role != "kernel"
        ]
        if untyped:
            raise Verdict(f"PART: kernels not typed as kernels: {', '.join(untyped)}")
        for s in t.spec:
            if s.role == "kernel":
                want = true_fan_in(self.net, s.path, s.shape)
                if s.fan_in != want:
                    raise Verdict(f"WRONG: fan_in of {s.path} {s.shape} is {s.fan_in}, not {want}")
        init = flatten_dict(pop_ops.take(self.population, 0))
        zero = [
            s.path for s in t.spec if s.role == "other" and not np.any(np.asarray(init[s.path]))
        ]
        if zero:
            raise Verdict(f"PART: role 'other', initialised to zero: {', '.join(zero)}")
        return "OK"

    # --- b: population ------------------------------------------------------------------

    def pop(self) -> str:
        y = np.asarray(self.target.apply_population(self.population, self.x), np.float64)
        n, b = self.sizes.members, self.sizes.batch
        if y.shape[:2] != (n, b) or not np.all(np.isfinite(y)):
            raise Verdict(f"WRONG: outputs {y.shape}, finite={bool(np.all(np.isfinite(y)))}")
        if np.max(np.abs(y - y[:1])) < 1e-6:
            raise Verdict("WRONG: every member computes the same function")
        if np.max(np.abs(y - y[:, :1])) < 1e-6:
            raise Verdict("WRONG: the outputs do not depend on the input")
        return "OK"

    # --- c: training --------------------------------------------------------------------

    def train(self) -> str:
        s, t = self.sizes, self.target
        config = TrainConfig(batch_size=s.train_batch, steps_per_epoch=s.train_steps)
        trainer = Trainer(t, self.data, config)
        state = trainer.init(self.key, 2, learning_rate=1e-2, shard=False)
        x = jnp.asarray(self.data.x_train[: s.batch])  # the shape `logits` is compiled for
        y = np.asarray(self.data.y_train[: s.batch])

        def losses(params) -> np.ndarray:
            # In training mode (BatchNorm on batch statistics, dropout on a fixed key): the
            # loss the trainer descends. Evaluation mode reads running statistics that after
            # 100 steps still lag the batch statistics, so a BatchNorm net's evaluation loss
            # on one batch can rise while training works (rescnn_bn on a Zen 5 CPU: 2.36 ->
            # 2.60 for one member whose training loss fell to 1.63).
            out = []
            for i in range(2):
                z, _ = t.train_apply(pop_ops.take(params, i), x, jax.random.key(3))
                z = np.asarray(z, np.float64)
                z = z - z.max(-1, keepdims=True)
                out.append(np.mean(np.log(np.exp(z).sum(-1)) - z[np.arange(len(y)), y]))
            return np.asarray(out)

        before = losses(state.params)
        state, _ = trainer.train_epoch(state, 0)
        after = losses(state.params)
        figure = f"{before.mean():.2f}->{after.mean():.2f}"
        if not (np.all(np.isfinite(after)) and np.all(after < before - 0.02)):
            raise Verdict(f"WRONG: train loss {figure} after {s.train_steps} steps")
        return f"OK {figure}"

    # --- d: hypernetwork ----------------------------------------------------------------

    def hyper(self) -> str:
        h = HyperNet(self.target, [Continuous("gamma")], hidden=(8,), rngs=nnx.Rngs(0))
        pop = generate(h, {"gamma": jnp.linspace(0.0, 1.0, 4)})
        self.target.validate(pop, batched=True)
        y = np.asarray(self.target.apply_population(pop, self.x))
        if not np.all(np.isfinite(y)):
            raise Verdict("WRONG: generated networks give non-finite outputs")
        return "OK"

    # --- e: graphs ----------------------------------------------------------------------

    def graph(self) -> str:
        graphs = population_to_graphs(self.target, self.population)
        back = graphs_to_population(self.target, graphs)
        diff = _leaves_equal(self.target, self.population, back)
        if diff:
            raise Verdict(f"WRONG: the round trip changes {', '.join(diff)}")
        topo = graph_topology.topology(self.target)
        if self.net.shared:
            edges = int(np.sum(topo.edge_type == graph_topology.EDGE_WEIGHT))
            if edges < self._weight_edges():
                raise Verdict(
                    f"WRONG: {edges} weight edges for {self._weight_edges()} weight uses: "
                    f"{', '.join(self.net.shared)}, used by several layers, is encoded once"
                )
        hidden = topo.node_act[topo.node_type == graph_topology.NODE_HIDDEN]
        if hidden.size and np.all(hidden == 0):
            raise Verdict("PART: exact, but every hidden node has activation 'none'")
        return "OK"

    def _weight_edges(self) -> int:
        """Edges a graph needs: one per (input, output) unit pair of every use of a kernel."""
        total = 0
        for s in self.target.spec:
            if s.role == "kernel" and len(s.shape) >= 2:
                uses = next((n for k, n in self.net.shared.items() if s.path.endswith(k)), 1)
                total += uses * s.shape[-2] * s.shape[-1]
        return total

    # --- f: structural groups + remove_units --------------------------------------------

    def prune(self) -> str:
        groups = self.groups
        if self.coverage is not None:
            raise Verdict(self.coverage)
        params = self.scrambled
        keep, removed = [], []
        for g in groups:
            k = np.sort(self.rng.permutation(g.size)[: max(1, g.size // 2)])
            keep.append(k)
            removed.append(np.setdiff1d(np.arange(g.size), k))
        small, small_params = compact.remove_units(self.target, params, keep, groups=groups)
        flat = {p: np.asarray(a) for p, a in flatten_dict(params).items()}
        for g, r in zip(groups, removed, strict=True):
            for e in group_entries(g):
                path = _entry_axis(e)[0]
                flat[path] = zero_units(flat[path], e, r)
        masked = jax.tree.unflatten(self.target.treedef, [flat[p] for p in self.target.paths])
        err = _close(self.logits(masked), small.apply(small_params, self.x))
        if err is not None:
            raise Verdict(f"WRONG: compact differs from the masked original by {err:.3g}")
        sizes = "/".join(str(g.size) for g in groups)
        return f"OK {len(groups)} groups ({sizes})"

    # --- g: permutation and alignment ---------------------------------------------------

    def align(self) -> str:
        groups, t = self.groups, self.target
        if self.coverage is not None:
            raise Verdict(self.coverage)
        a = self.scrambled
        perms = symmetry.random_permutations(t, self.key, groups=groups)
        b = symmetry.permute(t, a, perms, groups=groups)
        err = _close(self.logits(a), self.logits(b))
        if err is not None:
            raise Verdict(f"WRONG: a random permutation changes the function by {err:.3g}")
        back = weight_matching(t, a, b, key=self.key)
        err = _close(
            np.concatenate([np.ravel(v) for v in jax.tree.leaves(a)]),
            np.concatenate(
                [np.ravel(v) for v in jax.tree.leaves(symmetry.permute(t, b, back, groups=groups))]
            ),
            1e-6,
        )
        if err is not None:
            raise Verdict(
                f"WRONG: weight matching does not recover a random permutation ({err:.3g})"
            )
        m0, m1 = pop_ops.take(self.population, 0), pop_ops.take(self.population, 1)
        aligned = symmetry.permute(t, m1, weight_matching(t, m0, m1), groups=groups)
        err = _close(self.logits(m1), self.logits(aligned))
        if err is not None:
            raise Verdict(f"WRONG: aligning changes the function by {err:.3g}")
        return "OK"

    # --- h: merging ---------------------------------------------------------------------

    def merge(self) -> str:
        t = self.target
        base = pop_ops.take(self.population, 0)
        members = pop_ops.take(self.population, jnp.arange(1, self.sizes.members))
        ta = merge.task_arithmetic(t, base, members, lam=0.3)
        fb, fm, ft = flatten_dict(base), flatten_dict(members), flatten_dict(ta)
        for s in t.spec:
            if s.trainable:
                want = np.asarray(fb[s.path]) + 0.3 * np.sum(
                    np.asarray(fm[s.path]) - np.asarray(fb[s.path]), axis=0
                )
                err = _close(want, ft[s.path])
                if err is not None:
                    raise Verdict(f"WRONG: task arithmetic of {s.path} off by {err:.3g}")
        ties = merge.ties_merge(t, base, members, density=0.5)
        for name, merged in (("task_arithmetic", ta), ("ties", ties)):
            if not np.all(np.isfinite(self.logits(merged))):
                raise Verdict(f"WRONG: the {name} merge gives non-finite outputs")
        return "OK"

    # --- i: PyTorch layout --------------------------------------------------------------

    def torch(self) -> str:
        t, params = self.target, self.scrambled
        sd = pop_ops.to_torch_state_dict(t, params)
        diff = _leaves_equal(t, params, pop_ops.from_torch_state_dict(t, sd))
        if diff:
            raise Verdict(f"WRONG: export/import round trip changes {', '.join(diff)}")
        keys = pop_ops.torch_key_map(t)

        def get(path: str) -> np.ndarray:
            return np.asarray(sd[keys[path]], np.float64)

        try:
            y = self.net.torch_forward(get, np.asarray(self.x, np.float64))
        except (ValueError, KeyError, IndexError) as e:
            raise Verdict(f"WRONG: the export fits no PyTorch module: {_one_line(e)}") from e
        err = _close(self.logits(params), y)
        if err is not None:
            raise Verdict(f"WRONG: the PyTorch-convention forward differs by {err:.3g}")
        return "OK"

    # --- j: checkpoints -----------------------------------------------------------------

    def ckpt(self) -> str:
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint.save_population(f"{tmp}/pop", self.population, self.target)
            _, back, _ = checkpoint.load_population(f"{tmp}/pop", target=self.target)
        diff = _leaves_equal(self.target, self.population, back)
        if diff:
            raise Verdict(f"WRONG: the checkpoint round trip changes {', '.join(diff)}")
        return "OK"

    def cell(self, op: str) -> str:
        """The classified cell of operation `op` (one of `OPERATIONS`)."""
        return run_cell(getattr(self, op))
