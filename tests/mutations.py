"""Deliberately wrong implementations, each of which a named test must catch.

Run by hand from the repository root (not collected by pytest)::

  PYTHONPATH=$PWD python tests/mutations.py [NAME ...]

For each mutation a child process monkeypatches the wrong version in, then runs the named
test node with pytest; the mutation is *caught* when that test fails. Prints one line per
mutation and a final JSON summary; the exit status is 1 if any mutation survived.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _quick_goals_judged() -> None:
    """Issue item 1: a quick run's goals_met filled from smoke sizes."""
    from bench import common

    real = common.evaluate_goals
    common.evaluate_goals = lambda goals, result, *, quick: real(goals, result, quick=False)


def _peer_goal_one_control() -> None:
    """Item 2: a peer speed goal judged against the 2-thread hyperlight run only."""
    from bench import common

    real = common.goal_margin
    common.goal_margin = lambda g, result: real({**g, "controls": []}, result)


def _lowrank_factors_reversed() -> None:
    """Item 7: the low-rank head reads U as [rank, rows] (a transposed factor layout)."""
    import jax.numpy as jnp

    from hyper.hypernets import hypernet as hn

    real = hn.HyperNet.deltas

    def deltas(self, a):
        if self.head_kind != "lowrank":
            return real(self, a)
        m, rank, out = a.shape[0], self.config["rank"], []
        for s, ws in zip(self.gen_specs, self.head_w, strict=True):
            if len(ws) == 2:
                n = s.shape[-1]
                u = (a @ ws[0][...]).reshape(m, rank, s.size // n).transpose(0, 2, 1)
                v = (a @ ws[1][...]).reshape(m, rank, n)
                out.append(jnp.matmul(u, v).reshape(m, *s.shape))
            else:
                out.append((a @ ws[0][...]).reshape(m, *s.shape))
        return out

    hn.HyperNet.deltas = deltas


def _adam_weight_decay_halved() -> None:
    """Item 8: the trainer's AdamW applies half the member's weight decay."""
    import optax

    from hyper import train

    def adam(learning_rate, weight_decay, mask):
        return optax.chain(
            optax.scale_by_adam(),
            optax.add_decayed_weights(0.5 * weight_decay, mask=mask),
            optax.scale_by_learning_rate(learning_rate),
        )

    train.OPTIMIZERS["adam"] = adam


def _gmn_gradient_negated() -> None:
    """Item 6: the graph metanet steps up its loss (its gradient negated)."""
    import jax

    from metanets import predict

    class NegatedGrad:
        def __getattr__(self, name):
            return getattr(jax, name)

        @staticmethod
        def value_and_grad(fn, *args, **kwargs):
            vg = jax.value_and_grad(fn, *args, **kwargs)

            def wrapped(*a, **k):
                value, grads = vg(*a, **k)
                return value, jax.tree.map(lambda g: -g, grads)

            return wrapped

    predict.jax = NegatedGrad()


def _graph_wiring_transposed() -> None:
    """Item 9: each kernel scattered transposed onto its edges (edge i->j gets the weight of
    j->i, a one-to-one index, so params -> graph -> params stays exact)."""
    import dataclasses

    import numpy as np

    from metanets import graph_topology as gt

    real = gt._build_topology

    def build(target, window):
        topo = real(target, window)
        index, f = topo.index.copy(), window[0] * window[1]
        node_size, start = topo.num_nodes * len(gt.NODE_FEATURES), 0
        for s in target.spec:
            if s.role == "kernel":
                n_in, n_out = s.shape[-2], s.shape[-1]
                block = index[start : start + s.size] - node_size
                edge, slot = block // f, block % f
                first = edge.min()
                i, j = divmod(edge - first, n_out)
                index[start : start + s.size] = node_size + (first + j * n_in + i) * f + slot
            start += s.size
        assert len(np.unique(index)) == len(index)
        return dataclasses.replace(topo, index=index)

    gt._build_topology = build


def _tau_misaligned() -> None:
    """Item 11: the predictor's reported tau pairs predictions with the wrong labels."""
    import numpy as np

    from metanets import predict

    real = predict.kendall_tau
    predict.kendall_tau = lambda p, y: real(np.asarray(p)[::-1], y)


def _pruned_inputs_misaligned() -> None:
    """Item 11: removing units slices each consumer's input channels in reversed order
    (shapes and FLOPs unchanged; the function is not the original's with units zeroed)."""
    import jax
    import numpy as np

    from hyper import compact, symmetry

    real = compact.remove_units

    def remove_units(target, params, keep, **kwargs):
        t, p = real(target, params, keep, **kwargs)
        index = {path: i for i, path in enumerate(t.paths)}
        leaves = [np.asarray(a) for a in jax.tree.leaves(p)]
        for g in symmetry.structural_groups(t):
            for path, ax in g.axes:
                s = t.leaf(path)
                if s.role == "kernel" and ax == s.in_axis:
                    leaves[index[path]] = np.flip(leaves[index[path]], ax)
        return t, jax.tree.unflatten(t.treedef, leaves)

    compact.remove_units = remove_units


def _zoo_load_skips_complete() -> None:
    """Item 11: `zoo.load` no longer refuses a zoo whose build has not finished."""
    from hyper import zoo

    real = zoo.read_config
    zoo.read_config = lambda path: {**real(path), "complete": True}


def _factory_ignores_assembler() -> None:
    """Item 11: the factory ranks channels by the group-L2 prior, not its trained assembler."""
    from generators import factory

    real = factory.Factory.__init__

    def init(self, supernet, params, assembler=None, *, kind="params"):
        real(self, supernet, params, None, kind=kind)
        self.assembler = assembler

    factory.Factory.__init__ = init


def _choose_not_bucketed() -> None:
    """Item 12: `Factory.choose` pads scenario batches to their own size (one program per
    batch size instead of per power-of-two bucket)."""
    from generators import factory

    factory._bucket = lambda n: n


def _in_subprocesses(name: str) -> None:
    """Applies mutation `name` in every Python process started from this one as well (the
    notebook test runs each notebook as a script): a `sitecustomize` on PYTHONPATH."""
    import tempfile

    d = tempfile.mkdtemp(prefix="mutation-")
    Path(d, "sitecustomize.py").write_text(
        f"import sys\nsys.path.insert(0, {str(REPO / 'tests')!r})\n"
        f"import mutations\nmutations.{name}()\n"
    )
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [d, os.environ.get("PYTHONPATH")]))


def _permute_leaves_biases() -> None:
    """Item 10: `permute` moves every hidden unit's weights but leaves the biases in place
    (a different function; notebook 03 says "same function after permuting")."""
    from hyper import symmetry

    real = symmetry.permute

    def keep_biases(orig, moved):
        if isinstance(orig, dict):
            return {k: orig[k] if k == "bias" else keep_biases(orig[k], moved[k]) for k in orig}
        return moved

    def permute(target, params, perms, *args, **kwargs):
        return keep_biases(params, real(target, params, perms, *args, **kwargs))

    symmetry.permute = permute


def _raw_encoding_shifted() -> None:
    """Item 10: the raw encoding feeds γ + 0.1 (the default hypernet is no longer positively
    homogeneous at initialisation; notebook 02's slope 1 breaks)."""
    from hyper.hypernets import conditions

    real = conditions.encode
    conditions.encode = lambda g, e: real(g, e) + 0.1 if e == "raw" else real(g, e)


MUTATIONS = {
    "quick_goals_judged": (
        _quick_goals_judged,
        "tests/test_bench_suite.py::test_quick_runs_never_pass_for_full_ones",
    ),
    "peer_goal_one_control": (
        _peer_goal_one_control,
        "tests/test_bench_suite.py::test_peer_speed_goals_need_every_control_run",
    ),
    "lowrank_factors_reversed": (
        _lowrank_factors_reversed,
        "tests/test_hypernets_hypernet.py::test_head_deltas_match_a_numpy_reference[lowrank]",
    ),
    "adam_weight_decay_halved": (
        _adam_weight_decay_halved,
        "tests/test_hyper_train.py::test_one_member_matches_a_hand_written_optax_loop",
    ),
    "gmn_gradient_negated": (
        _gmn_gradient_negated,
        "tests/test_metanets_predict.py::test_gmn_learns_the_synthetic_label",
    ),
    "graph_wiring_transposed": (
        _graph_wiring_transposed,
        "tests/test_metanets_graph.py::test_edge_i_to_j_carries_kernel_i_j",
    ),
    "graph_conv_wiring_transposed": (
        _graph_wiring_transposed,
        "tests/test_metanets_graph.py::test_conv_edge_c_to_d_carries_the_kernel_window",
    ),
    "tau_misaligned": (
        _tau_misaligned,
        "tests/test_metanets_predict.py::test_cli_train_and_predict",
    ),
    "pruned_inputs_misaligned": (
        _pruned_inputs_misaligned,
        "tests/test_hyper_prune.py::test_prune_to_speedup_meets_the_goal",
    ),
    "zoo_load_skips_complete": (
        _zoo_load_skips_complete,
        "tests/test_fuzz.py::test_edited_zoo_descriptions_load_or_fail_cleanly",
    ),
    "factory_ignores_assembler": (
        _factory_ignores_assembler,
        "tests/test_generators.py::test_assembler_against_random_and_group_l2_at_one_budget",
    ),
    "choose_not_bucketed": (
        _choose_not_bucketed,
        "tests/test_generators.py::test_choose_compiles_once_per_bucket",
    ),
    "notebook_permute_leaves_biases": (
        lambda: _in_subprocesses("_permute_leaves_biases"),
        "tests/test_notebooks.py::test_notebook_runs_in_smoke_mode[03_graph_metanetworks.py]",
    ),
    "notebook_raw_encoding_shifted": (
        lambda: _in_subprocesses("_raw_encoding_shifted"),
        "tests/test_notebooks.py::test_notebook_runs_in_smoke_mode[02_mip_hypernetworks.py]",
    ),
}

_CHILD = """
import sys
sys.path.insert(0, {repo!r}); sys.path.insert(0, {tests!r})
import mutations
mutations.MUTATIONS[{name!r}][0]()
import pytest
sys.exit(pytest.main(["-q", "-x", "-p", "no:cacheprovider", {node!r}]))
"""


def run(name: str) -> dict:
    apply, node = MUTATIONS[name]
    code = _CHILD.format(repo=str(REPO), tests=str(REPO / "tests"), name=name, node=node)
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env
    )
    # pytest exit 1: tests failed (caught); 0: passed (survived); others: an error
    status = {0: "SURVIVED", 1: "caught"}.get(proc.returncode, f"error {proc.returncode}")
    return {
        "mutation": name,
        "test": node,
        "status": status,
        "seconds": round(time.perf_counter() - t0, 1),
        "tail": proc.stdout.strip().splitlines()[-1:] if status != "caught" else [],
    }


def main(argv: list[str]) -> int:
    names = argv or list(MUTATIONS)
    rows = []
    for name in names:
        row = run(name)
        rows.append(row)
        print(f"{row['status']:>9}  {name:28s} {row['test']}  ({row['seconds']} s)", flush=True)
    caught = sum(r["status"] == "caught" for r in rows)
    print(json.dumps({"caught": caught, "total": len(rows), "rows": rows}))
    return 0 if caught == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
