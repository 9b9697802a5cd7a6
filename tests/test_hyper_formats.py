"""Weight files: safetensors / npz in both layouts, the Small CNN Zoo format, and
``weightspace export`` / ``weightspace import``.

- round trips ours -> file -> ours are exact for every built-in preset and for a
  population (every format and layout);
- the PyTorch-layout files, read as a PyTorch user reads them (``safetensors`` keys, no
  JAX), run through the float64 NumPy forward passes of `tests.test_hyper_torch_layout`
  (PyTorch conventions) and give our logits within 1e-5;
- Small CNN Zoo files of the published layout (written here independently of our writer)
  read into the published 4,970-parameter CNN, and a zoo written by our writer reads back
  into the same `WeightDataset` as the zoo it came from;
- truncated, corrupted or mismatched files and fuzzed metadata raise only `FormatError`
  (a `WeightspaceError`); NaN payloads load unchanged; the CLI's bad input exits 2.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os

import numpy as np
import pytest
import safetensors.numpy as st_numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hyper import exchange, formats
from hyper import population as pop_ops
from hyper import small_cnn_zoo as scz
from hyper import zoo as zoo_lib
from hyper.architectures import make_target
from hyper.cli import main
from hyper.errors import WeightspaceError
from hyper.formats import FormatError
from hyper.zoo_presets import PRESETS
from metanets.datasets import load_zoos
from metanets.zoo_formats import load_small_cnn_zoo
from tests.test_hyper_torch_layout import (
    attention,
    conv,
    gelu_tanh,
    layernorm,
    linear,
    ref_cnn,
    ref_mlp,
    relu,
)

INPUT_SHAPES = {"digits": (8, 8), "mnist1d": (40,)}


def preset_target(name):
    p = PRESETS[name]
    return make_target(
        **{**p.arch, "input_shape": INPUT_SHAPES[p.dataset], "activation": p.grid["activation"][0]}
    )


@pytest.fixture(scope="module")
def presets():
    return {name: preset_target(name) for name in PRESETS}


@pytest.fixture(scope="module")
def small_cnn():
    return scz.small_cnn_zoo_target("relu", input_shape=(32, 32))


def equal(a, b):
    fa, fb = pop_ops.to_numpy(a), pop_ops.to_numpy(b)
    return fa.keys() == fb.keys() and all(
        fa[k].dtype == fb[k].dtype and np.array_equal(fa[k], fb[k], equal_nan=True) for k in fa
    )


# --- round trips --------------------------------------------------------------------------


@pytest.mark.parametrize("layout", formats.LAYOUTS)
def test_every_preset_round_trips_exactly(presets, random_params, tmp_path, layout):
    for name, t in presets.items():
        params = random_params(t, 1)
        for fmt, ext in (("safetensors", "safetensors"), ("npz", "npz")):
            path = tmp_path / f"{name}-{layout}.{ext}"
            formats.save_weights(t, params, path, format=fmt, layout=layout)
            assert equal(formats.load_weights(t, path), params), (name, fmt, layout)
            assert formats.read_target(path).config == t.config


def test_scalar_leaves_keep_their_shape(tmp_path):
    """A 0-d leaf (a learned temperature) stays 0-d in both layouts (not `(1,)`)."""
    import jax.numpy as jnp

    from hyper.target import Target

    def apply(p, x):
        return (x.reshape(x.shape[0], -1) @ p["w"] + p["b"][None]) * p["temp"]

    params = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3), "temp": jnp.asarray(2.0)}
    t = Target.from_function(apply, params, sample_input=jnp.zeros((1, 4)))
    for layout in formats.LAYOUTS:
        p = formats.save_safetensors(t, params, tmp_path / f"{layout}.safetensors", layout=layout)
        assert st_numpy.load_file(p)["temp"].shape == ()
        assert equal(formats.load_safetensors(t, p), params)


def test_population_round_trips_in_every_format(rescnn_target, random_params, tmp_path):
    """A population with BatchNorm: a directory of strict PyTorch state_dicts (with
    num_batches_tracked), a stacked flax file, stacked npz files of both layouts."""
    t, pop = rescnn_target, random_params(rescnn_target, 2, n=3)
    d = formats.save_safetensors(t, pop, tmp_path / "torch", layout="torch", batched=True)
    files = formats.member_files(d)
    assert [os.path.basename(f) for f in files] == [f"member-0000{i}.safetensors" for i in range(3)]
    sd = st_numpy.load_file(files[0])
    assert sd["stem_bn.num_batches_tracked"].dtype == np.int64
    assert sd["stem_bn.num_batches_tracked"].shape == ()
    assert sd["stem.weight"].shape == (4, 1, 3, 3)
    assert equal(formats.load_safetensors(t, d), pop)
    for fmt, layout in (("safetensors", "flax"), ("npz", "flax"), ("npz", "torch")):
        p = tmp_path / f"pop-{layout}.{fmt}"
        formats.save_weights(t, pop, p, format=fmt, layout=layout, batched=True)
        assert equal(formats.load_weights(t, p), pop), (fmt, layout)
        assert formats.read_metadata(p)["num_targets"] == "3"
    meta = formats.read_metadata(files[0])
    assert meta["target"]["config"] == t.config
    assert meta["roles"]["stem_bn.running_mean"] == "running_stat"
    assert meta["roles"]["stem.weight"] == "kernel"


# --- the PyTorch convention ---------------------------------------------------------------


def ref_transformer(sd, x, depth, heads):
    """Our Transformer preset in PyTorch's conventions: patch Conv (kernel = stride), tokens
    row-major, pre-LN blocks with separate query/key/value/out Linear layers."""
    h = x[:, None]
    patch = sd["patch.weight"].shape[2:]
    h = conv(h, sd["patch.weight"], sd["patch.bias"], patch[0])
    h = h.reshape(h.shape[0], h.shape[1], -1).transpose(0, 2, 1) + sd["pos"]
    for i in range(depth):
        b = f"blocks.{i}"
        h = h + attention(layernorm(h, sd, f"{b}.norm1"), sd, f"{b}.attn", heads)
        inner = gelu_tanh(linear(layernorm(h, sd, f"{b}.norm2"), sd, f"{b}.mlp1"))
        h = h + linear(inner, sd, f"{b}.mlp2")
    return linear(layernorm(h, sd, "norm").mean(1), sd, "head")


def conv_valid(x, w, b, stride):
    """Cross-correlation of NCHW `x` with a PyTorch weight `[O, C, kh, kw]`, padding=0."""
    kh, kw = w.shape[2:]
    oh, ow = (x.shape[2] - kh) // stride + 1, (x.shape[3] - kw) // stride + 1
    y = np.zeros((x.shape[0], w.shape[0], oh, ow))
    for i, j in np.ndindex(kh, kw):
        patch = x[
            :, :, i : i + stride * (oh - 1) + 1 : stride, j : j + stride * (ow - 1) + 1 : stride
        ]
        y += np.einsum("bchw,oc->bohw", patch, w[:, :, i, j])
    return y + b.reshape(1, -1, 1, 1)


def ref_small_cnn(sd, x):
    h = x[:, None]
    for i in range(3):
        h = relu(conv_valid(h, sd[f"convs.{i}.weight"], sd[f"convs.{i}.bias"], 2))
    return linear(h.mean(axis=(2, 3)), sd, "dense")


REFERENCES = {
    "digits-mlp": lambda sd, x: ref_mlp(sd, x, 2),
    "mnist1d-mlp": lambda sd, x: ref_mlp(sd, x, 3),
    # PyTorch's natural module: Conv(..., padding=k // 2) (the presets' "SYMMETRIC").
    "digits-cnn": lambda sd, x: ref_cnn(sd, x, 3, padding="symmetric"),
    "mnist1d-cnn": lambda sd, x: ref_cnn(sd, x, 3, padding="symmetric"),
    "digits-vit": lambda sd, x: ref_transformer(sd, x, 2, 2),
    "mnist1d-transformer": lambda sd, x: ref_transformer(sd, x, 2, 2),
}


def test_references_cover_every_preset():
    assert set(REFERENCES) == set(PRESETS)


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_exported_torch_files_compute_our_function(presets, random_params, tmp_path, name):
    t = presets[name]
    params = random_params(t, 3)
    path = formats.save_safetensors(t, params, tmp_path / "net.safetensors", layout="torch")
    sd = {k: v.astype(np.float64) for k, v in st_numpy.load_file(path).items()}
    x = np.random.default_rng(4).standard_normal((5, *t.input_shape)).astype(np.float32)
    np.testing.assert_allclose(
        REFERENCES[name](sd, x.astype(np.float64)), t.apply(params, x), rtol=1e-5, atol=1e-5
    )


def test_old_zoo_cnn_export_warns_with_the_fix(random_params, tmp_path, capsys):
    """A digits-cnn config stored before the presets moved to symmetric padding (no
    ``padding`` key) rebuilds with XLA's 'SAME': its PyTorch-layout export warns, and the
    file's metadata says which F.pad the PyTorch module needs; the flax layout does not."""
    from hyper.architectures import target_from_config
    from hyper.torch_layout import TorchPaddingWarning

    cfg = {**PRESETS["digits-cnn"].arch, "input_shape": [8, 8], "activation": "relu"}
    old = target_from_config({k: v for k, v in cfg.items() if k != "padding"})
    assert old.config["padding"] == "SAME"
    params = random_params(old, 12)
    with pytest.warns(TorchPaddingWarning, match=r"'convs/1' pads \[\[0, 1\], \[0, 1\]\]"):
        p = formats.save_safetensors(old, params, tmp_path / "old.safetensors")
    assert "F.pad(x, (0, 1, 0, 1))" in formats.read_metadata(p)["warning"]
    flax = formats.save_safetensors(old, params, tmp_path / "f.safetensors", layout="flax")
    assert "warning" not in formats.read_metadata(flax)
    new = formats.save_safetensors(
        target_from_config(cfg), params, tmp_path / "new.safetensors"
    )  # the same weights, the preset's padding: no warning (pytest turns warnings to errors)
    assert "warning" not in formats.read_metadata(new)
    # The old file with today's preset target: same shapes, another function: refused.
    with pytest.raises(FormatError, match="padding: file 'SAME', given 'SYMMETRIC'"):
        formats.load_safetensors(target_from_config(cfg), p)
    assert formats.load_file(p)[0].config == old.config
    # `weightspace export` of such a saved population says so too (on stderr).
    from hyper.checkpoint import save_population

    save_population(tmp_path / "pop", pop_ops.of_one(params), old)
    argv = ["export", "--from", str(tmp_path / "pop"), "--format", "safetensors"]
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "t"), "--quiet"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("weightspace: warning: ") and "F.pad" in err[0]
    assert "padding='SYMMETRIC'" in err[0]
    assert "F.pad" in formats.read_metadata(tmp_path / "t")["warning"]


def test_docs_pytorch_snippet_is_the_benchmarked_one():
    """docs/formats.md shows the code `bench/formats_torch.py` runs in PyTorch and the
    accuracy that run printed (bench/results/formats_torch.json), not a hand-typed one."""
    from pathlib import Path

    from bench.formats_torch import SNIPPET

    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "formats.md").read_text()
    assert f"```python\n{SNIPPET}```\n\nprints `" in doc
    result = json.loads((root / "bench" / "results" / "formats_torch.json").read_text())
    assert f"prints `{result['snippet_printed']}`" in doc


def test_small_cnn_zoo_target_in_torch_convention(small_cnn, random_params, tmp_path):
    assert small_cnn.num_params == 4970
    params = random_params(small_cnn, 5)
    path = formats.save_safetensors(small_cnn, params, tmp_path / "s.safetensors")
    sd = {k: v.astype(np.float64) for k, v in st_numpy.load_file(path).items()}
    x = np.random.default_rng(6).standard_normal((3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(
        ref_small_cnn(sd, x.astype(np.float64)), small_cnn.apply(params, x), rtol=1e-5, atol=1e-5
    )


# --- mismatches and corrupted files --------------------------------------------------------


def test_mismatches_name_the_first_one(mlp_target, random_params, tmp_path):
    t, params = mlp_target, random_params(mlp_target, 7)
    sd = formats.to_tensors(t, params, layout="torch")
    cases = {
        "missing": (
            {k: v for k, v in sd.items() if k != "layers.0.bias"},
            "no tensor 'layers.0.bias'",
        ),
        "extra": ({**sd, "fc9.weight": np.zeros(3, np.float32)}, "unexpected tensor 'fc9.weight'"),
        "shape": ({**sd, "layers.1.weight": np.zeros((10, 15), np.float32)}, "'layers.1.weight'"),
        "dtype": ({**sd, "layers.0.bias": sd["layers.0.bias"].astype(np.float64)}, "dtype float64"),
    }
    for name, (tensors, message) in cases.items():
        p = tmp_path / f"{name}.safetensors"
        st_numpy.save_file(tensors, str(p))
        with pytest.raises(FormatError, match=message):
            formats.load_safetensors(t, p)
    with pytest.raises(FormatError, match="flax layout, not torch"):
        formats.save_safetensors(t, params, tmp_path / "f.safetensors", layout="flax")
        formats.load_safetensors(t, tmp_path / "f.safetensors", layout="torch")
    formats.save_safetensors(t, params, tmp_path / "x.safetensors")
    with pytest.raises(FormatError, match="exists"):
        formats.save_safetensors(t, params, tmp_path / "x.safetensors")
    with pytest.raises(WeightspaceError, match="unknown layout"):
        formats.save_safetensors(t, params, tmp_path / "y.safetensors", layout="onnx")


def test_nan_payloads_load_unchanged(mlp_target, random_params, tmp_path):
    flat = {k: np.array(v) for k, v in pop_ops.to_numpy(random_params(mlp_target, 8)).items()}
    flat["layers/0/kernel"][3, :2] = np.nan
    params = pop_ops.from_numpy(mlp_target, flat)
    for fmt in formats.FORMATS:
        p = tmp_path / f"nan.{fmt}"
        formats.save_weights(mlp_target, params, p, format=fmt)
        assert equal(formats.load_weights(mlp_target, p), params)


def _mutations(raw: bytes):
    yield "empty", b""
    for cut in (4, 8, 20, len(raw) // 2, len(raw) - 1):
        yield f"truncated at {cut}", raw[:cut]
    yield "huge header length", (2**40).to_bytes(8, "little") + raw[8:]
    yield "header garbage", raw[:8] + b"\xff" * (len(raw) - 8)
    yield "text", b"PK\x03\x04 this is not the format at all"


@pytest.mark.parametrize("fmt", formats.FORMATS)
def test_corrupted_files_raise_format_error(mlp_target, random_params, tmp_path, fmt):
    good = tmp_path / f"good.{fmt}"
    formats.save_weights(mlp_target, random_params(mlp_target, 9), good, format=fmt)
    raw = good.read_bytes()
    for name, data in _mutations(raw):
        p = tmp_path / f"bad.{fmt}"
        p.write_bytes(data)
        with pytest.raises(FormatError):
            formats.load_weights(mlp_target, p)
            pytest.fail(name)
    rng = np.random.default_rng(0)
    for _ in range(40):  # random byte flips: either the same keys load or FormatError
        b = bytearray(raw)
        b[int(rng.integers(len(b)))] ^= int(rng.integers(1, 256))
        p = tmp_path / f"flip.{fmt}"
        p.write_bytes(bytes(b))
        try:
            formats.load_weights(mlp_target, p)
        except FormatError:
            pass


metadata_values = st.one_of(
    st.text(max_size=12),
    st.sampled_from(['{"a": 1}', "[1, 2]", "null", '{"config": {"arch": "mlp"}}', "{"]),
)


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    entries=st.dictionaries(
        st.sampled_from(
            ["format", "layout", "target", "roles", "paths", "metadata", "num_targets"]
        ),
        metadata_values,
        max_size=5,
    )
)
def test_fuzzed_metadata_gives_only_documented_errors(mlp_target, tmp_path_factory, entries):
    sd = formats.to_tensors(
        mlp_target,
        pop_ops.from_numpy(
            mlp_target, {s.path: np.zeros(s.shape, np.float32) for s in mlp_target.spec}
        ),
        layout="torch",
    )
    p = tmp_path_factory.mktemp("meta") / "m.safetensors"
    st_numpy.save_file(sd, str(p), metadata={"format": formats.FORMAT_TAG, **entries})
    for fn in (
        formats.read_metadata,
        formats.read_target,
        lambda q: formats.load_safetensors(mlp_target, q),
    ):
        try:
            fn(p)
        except WeightspaceError:
            pass


# --- the Small CNN Zoo format -------------------------------------------------------------

PUBLISHED_LAYOUT = [  # bias before kernel, as the published column ranges
    ("conv2d/bias:0", 0, 16, (16,)),
    ("conv2d/kernel:0", 16, 160, (3, 3, 1, 16)),
    ("conv2d_1/bias:0", 160, 176, (16,)),
    ("conv2d_1/kernel:0", 176, 2480, (3, 3, 16, 16)),
    ("conv2d_2/bias:0", 2480, 2496, (16,)),
    ("conv2d_2/kernel:0", 2496, 4800, (3, 3, 16, 16)),
    ("dense/bias:0", 4800, 4810, (10,)),
    ("dense/kernel:0", 4810, 4970, (16, 10)),
]


def write_published(directory, weights, rows, layout=PUBLISHED_LAYOUT):
    """Files of the published layout, written without `hyper.small_cnn_zoo`."""
    os.makedirs(directory, exist_ok=True)
    np.save(os.path.join(directory, "weights.npy"), weights)
    with open(os.path.join(directory, "layout.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["varname", "start_idx", "end_idx", "shape"])
        w.writerows([(n, s, e, str(shape)) for n, s, e, shape in layout])
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(scz.METRIC_COLUMNS))
    w.writeheader()
    w.writerows(rows)
    with gzip.open(os.path.join(directory, "metrics.csv.gz"), "wt", newline="") as f:
        f.write(buf.getvalue())


def published_rows(n):
    rows = []
    for i in range(n):
        rows.append(
            {
                "config.activation": "relu" if i % 3 else "tanh",
                "config.b_init": "zeros",
                "config.dataset": "cifar10",
                "config.dnn_architecture": "cnn",
                "config.dropout": 0.0,
                "config.epochs": 86,
                "config.epochs_between_checkpoints": 20,
                "config.init_std": 0.05,
                "config.l2reg": 1e-4,
                "config.learning_rate": 3e-3,
                "config.num_layers": 3,
                "config.num_units": 16,
                "config.optimizer": "adam",
                "config.random_seed": 42,
                "config.train_fraction": 0.5,
                "config.w_init": "he_normal",
                "modeldir": f"/zoo/run-{i // 2}",
                "step": (0, 86)[i % 2],
                "test_accuracy": 0.1 + 0.01 * i,
                "test_loss": 2.0,
                "train_accuracy": 0.2 + 0.01 * i,
                "train_loss": 1.9,
            }
        )
    return rows


def test_published_layout_reads_into_the_published_cnn(tmp_path):
    rng = np.random.default_rng(10)
    weights = rng.standard_normal((6, 4970)).astype(np.float32)
    write_published(tmp_path / "z", weights, published_rows(6))
    groups = scz.read_groups(tmp_path / "z")
    assert [g.id for g in groups] == ["tanh-dropout0.0", "relu-dropout0.0"]
    tanh, relu_g = groups
    assert tanh.target.config["activation"] == "tanh" and tanh.target.num_params == 4970
    assert list(tanh.index) == [0, 3] and [r["step"] for r in relu_g.rows] == [86, 0, 0, 86]
    k = pop_ops.to_numpy(relu_g.population)
    row = weights[relu_g.index[0]]
    np.testing.assert_array_equal(k["convs/0/bias"][0], row[0:16])
    np.testing.assert_array_equal(k["convs/1/kernel"][0], row[176:2480].reshape(3, 3, 16, 16))
    np.testing.assert_array_equal(k["dense/kernel"][0], row[4810:].reshape(16, 10))
    # the writer's layout of this CNN is the published one
    ours = [(r.varname, r.start_idx, r.end_idx, r.shape) for r in scz.layout_for(relu_g.target)]
    assert ours == PUBLISHED_LAYOUT
    np.testing.assert_array_equal(
        scz.from_population(relu_g.target, relu_g.population), weights[relu_g.index]
    )
    ds = load_small_cnn_zoo(tmp_path / "z", epochs=[86])
    assert len(ds) == 3 and set(ds.epoch) == {86}
    np.testing.assert_allclose(sorted(ds.y), [0.11, 0.13, 0.15], rtol=1e-6)


def test_bad_small_cnn_zoo_files(tmp_path):
    weights = np.zeros((2, 4970), np.float32)
    rows = published_rows(2)
    cases = {
        "rows": (weights[:1], rows, PUBLISHED_LAYOUT, "1 rows"),
        "width": (weights[:, :100], rows, PUBLISHED_LAYOUT, "columns"),
        "shape": (weights, rows, [("conv2d/bias:0", 0, 16, (15,))] + PUBLISHED_LAYOUT[1:], "hold"),
        "kind": (weights, rows, [("conv2d/gamma:0", 0, 16, (16,))] + PUBLISHED_LAYOUT[1:], "gamma"),
        "overlap": (
            weights,
            rows,
            [("conv2d/bias:0", 1, 17, (16,))] + PUBLISHED_LAYOUT[1:],
            "overlap",
        ),
        "number": (
            weights,
            [{**rows[0], "step": "soon"}, rows[1]],
            PUBLISHED_LAYOUT,
            "not a number",
        ),
    }
    for name, (w, r, layout, message) in cases.items():
        write_published(tmp_path / name, w, r, layout)
        with pytest.raises(FormatError, match=message):
            scz.read_groups(tmp_path / name)
    write_published(tmp_path / "cut", weights, rows)
    raw = (tmp_path / "cut" / "weights.npy").read_bytes()
    (tmp_path / "cut" / "weights.npy").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(FormatError):
        scz.read(tmp_path / "cut")
    mlp = make_target("mlp", input_shape=(8, 8), widths=[4], out_features=10)
    write_published(tmp_path / "ok", weights, rows)
    with pytest.raises(FormatError, match="layers"):
        scz.read_groups(tmp_path / "ok", target=mlp)


def test_our_zoo_written_and_read_back_is_the_same_dataset(tiny_zoo, tmp_path):
    out = exchange.export(tiny_zoo, tmp_path / "scz", format="small-cnn-zoo")
    ours, back = load_zoos([tiny_zoo]), load_small_cnn_zoo(out)

    def samples(ds):
        order = np.lexsort((ds.epoch, ds.run))
        flat = [
            pop_ops.flatten(ds.targets[g], pop_ops.take(ds.populations[g], [m]))[0]
            for g, m in zip(ds.group, ds.member, strict=True)
        ]
        return ds.run[order], ds.epoch[order], ds.y[order], np.stack(flat)[order]

    for a, b in zip(samples(ours), samples(back), strict=True):
        np.testing.assert_array_equal(a, b)
    assert [t.config for t in ours.targets] == [t.config for t in back.targets]


# --- the command ----------------------------------------------------------------------------


def test_cli_export_import_round_trip(tiny_zoo, tmp_path):
    z, source = str(tiny_zoo), zoo_lib.load(tiny_zoo)
    assert (
        main(
            [
                "export",
                "--from",
                z,
                "--format",
                "safetensors",
                "--out",
                str(tmp_path / "t"),
                "--quiet",
            ]
        )
        == 0
    )
    assert len(formats.member_files(str(tmp_path / "t"))) == source.num_members
    assert (
        main(
            [
                "import",
                "--from",
                str(tmp_path / "t"),
                "--format",
                "safetensors",
                "--out",
                str(tmp_path / "z1"),
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "export",
                "--from",
                z,
                "--format",
                "npz",
                "--layout",
                "flax",
                "--member",
                "1",
                "--out",
                str(tmp_path / "m1.npz"),
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "import",
                "--from",
                str(tmp_path / "m1.npz"),
                "--format",
                "npz",
                "--target",
                "digits-mlp",
                "--out",
                str(tmp_path / "z2"),
                "--quiet",
            ]
        )
        == 0
    )
    back, one = zoo_lib.load(tmp_path / "z1"), zoo_lib.load(tmp_path / "z2")
    assert len(back.groups) == len(source.groups) > 1  # one group per stored target config
    for a, b in zip(source.groups, back.groups, strict=True):
        assert a.target.config == b.target.config and a.members == b.members
        assert equal(a.params, b.params)
    assert back.metadata == source.metadata  # member rows and metrics travel in the files
    assert equal(one.groups[0].params, pop_ops.take(source.groups[0].params, [1]))


def test_export_of_a_saved_population(rescnn_target, random_params, tmp_path):
    """A pruned or assembled model is a saved population: it exports like a zoo member."""
    from hyper.checkpoint import save_population

    pop = random_params(rescnn_target, 11, n=2)
    save_population(tmp_path / "pop", pop, rescnn_target)
    path = exchange.export(
        tmp_path / "pop", tmp_path / "m1.safetensors", format="safetensors", member=1
    )
    t, params, meta = formats.load_file(path)
    assert t.config == rescnn_target.config and meta["metadata"]["member"] == {"member": 1}
    assert equal(params, pop_ops.take(pop, 1))
    with pytest.raises(WeightspaceError, match="not a zoo"):
        exchange.export(tmp_path / "pop", tmp_path / "x.npz", format="npz", epoch=3)


def test_cli_bad_input_exits_2(tiny_zoo, tmp_path, capsys):
    z = str(tiny_zoo)
    (tmp_path / "taken.npz").write_bytes(b"")
    assert (
        main(
            ["export", "--from", z, "--format", "npz", "--out", str(tmp_path / "a.npz"), "--quiet"]
        )
        == 0
    )
    cfg = json.dumps({"arch": "mlp", "input_shape": [8, 8], "widths": [5], "out_features": 10})
    bad = [
        ["export", "--from", z, "--format", "onnx", "--out", str(tmp_path / "x")],
        ["export", "--from", z, "--format", "npz", "--out", str(tmp_path / "taken.npz")],
        ["export", "--from", z, "--format", "npz", "--member", "99", "--out", str(tmp_path / "y")],
        ["export", "--from", str(tmp_path / "nothing"), "--format", "npz", "--out", "q.npz"],
        [
            "import",
            "--from",
            str(tmp_path / "a.npz"),
            "--format",
            "npz",
            "--target",
            cfg,
            "--out",
            str(tmp_path / "z"),
        ],
        [
            "import",
            "--from",
            str(tmp_path / "a.npz"),
            "--format",
            "npz",
            "--target",
            "no-such",
            "--out",
            str(tmp_path / "z"),
        ],
        [
            "import",
            "--from",
            str(tmp_path / "taken.npz"),
            "--format",
            "npz",
            "--target",
            "digits-mlp",
            "--out",
            str(tmp_path / "z"),
        ],
        ["import", "--from", str(tmp_path / "a.npz"), "--format", "npz", "--out", z],
    ]
    for argv in bad:
        capsys.readouterr()
        assert main([*argv, "--quiet"]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("weightspace: error:") and err.count("\n") == 1, (argv, err)
