"""What PyTorch computes with our exported files (issue 33): run with the peers'
environment (``../shared/peers/README.md``: torch, numpy, safetensors), after
``bench/formats.py`` wrote ``bench/results/formats_torch/``.

Each network is loaded as a PyTorch user would: a plain module written the natural way,
``model.load_state_dict(safetensors.torch.load_file(path))`` (strict), then run in
float32 on the test split (NCHW / NCL inputs):

- ``digits-cnn`` (the preset: symmetric padding) by `SNIPPET`, the code shown in
  ``docs/formats.md`` (run here as it is, its printed accuracy recorded): three
  ``Conv2d(k=3, padding=1)`` (strides 1, 2, 2), ReLU, global average pooling,
  ``Linear(8, 10)``;
- ``digits-mlp``: ``Linear(64, 32)``, ReLU, ``Linear(32, 10)``;
- ``mnist1d-cnn`` (the preset): three ``Conv1d(k=5, padding=2)`` (strides 1, 2, 2) of 32
  channels, ReLU, global average pooling, ``Linear(32, 10)``;
- ``digits-cnn-same`` (a digits-cnn zoo built before the presets moved to symmetric
  padding: XLA's 'SAME'), two ways: the natural ``padding=1`` module, and the strided
  convolutions with ``F.pad(x, (0, 1, 0, 1))`` and ``padding=0`` (what the file's
  ``warning`` metadata says to write);
- a random ResCNN with BatchNorm (stem conv + BN, one residual block, dense): the file's
  ``num_batches_tracked`` entries let the strict load pass.

Records test accuracy and the largest logit difference against our logits.

Usage (from the repository root)::

  peers-venv/bin/python bench/formats_torch.py [--quick]

Writes ``bench/results/formats_torch.json`` and prints it as one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, write_result  # noqa: E402

SCHEMA_VERSION = 2

SNIPPET = """\
import numpy as np, torch, safetensors.torch
from torch import nn


class CNN(nn.Module):  # the digits-cnn preset
    def __init__(self):
        super().__init__()
        strides = [1, 2, 2]
        self.convs = nn.ModuleList(
            [nn.Conv2d(1 if s == 1 else 8, 8, 3, stride=s, padding=1) for s in strides]
        )
        self.dense = nn.Linear(8, 10)

    def forward(self, x):
        h = x[:, None]  # NCHW, one channel
        for conv in self.convs:
            h = torch.relu(conv(h))
        return self.dense(h.mean(dim=(2, 3)))


model = CNN()
model.load_state_dict(safetensors.torch.load_file("digits-cnn.safetensors"))
test = np.load("digits_test.npz")  # hyper.data.load("digits").x_test / .y_test
print((model(torch.from_numpy(test["x"])).argmax(1).numpy() == test["y"]).mean())
"""
"""The PyTorch code of ``docs/formats.md`` (tests/test_hyper_formats.py checks they agree)."""


def run_snippet(directory: Path) -> tuple[str, object]:
    """Runs `SNIPPET` in `directory`; returns what it printed and its model."""
    namespace: dict = {"__name__": "snippet"}
    out = io.StringIO()
    cwd = os.getcwd()
    try:
        os.chdir(directory)
        with contextlib.redirect_stdout(out):
            exec(compile(SNIPPET, "docs/formats.md", "exec"), namespace)  # noqa: S102
    finally:
        os.chdir(cwd)
    return out.getvalue().strip(), namespace["model"]


def main(argv=None) -> int:
    import safetensors.torch
    import torch
    import torch.nn.functional as F
    from torch import nn

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="read bench/results/quick/formats_torch")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    d = RESULTS / ("quick" if args.quick else "") / "formats_torch"
    tests = {}
    for name in ("digits", "mnist1d"):
        t = np.load(d / f"{name}_test.npz")
        tests[name] = (torch.from_numpy(t["x"]), t["y"].astype(np.int64))

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(64, 32), nn.Linear(32, 10)])

        def forward(self, x):
            return self.layers[1](torch.relu(self.layers[0](x.flatten(1))))

    class CNN(nn.Module):
        """Convs of `k` (strides 1, 2, 2), ReLU, global average pooling, dense: natural
        padding ``k // 2``, or (`xla_same`) XLA's 'SAME' on 8x8: F.pad high side at stride 2."""

        def __init__(self, conv, channels, k, xla_same=False):
            super().__init__()
            pad = 0 if xla_same else k // 2
            self.convs = nn.ModuleList(
                [conv(1, channels, k, padding=k // 2)]
                + [conv(channels, channels, k, stride=2, padding=pad) for _ in range(2)]
            )
            self.dense = nn.Linear(channels, 10)
            self.xla_same = xla_same

        def forward(self, x):
            h = x[:, None]
            for i, conv in enumerate(self.convs):
                if self.xla_same and i > 0:
                    h = F.pad(h, (0, 1, 0, 1))
                h = torch.relu(conv(h))
            return self.dense(h.mean(dim=tuple(range(2, h.ndim))))

    class ResCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(1, 4, 3, padding=1, bias=False)
            self.stem_bn = nn.BatchNorm2d(4)
            block = nn.Module()
            block.conv1 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
            block.bn1 = nn.BatchNorm2d(4)
            block.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
            block.bn2 = nn.BatchNorm2d(4)
            self.blocks = nn.ModuleList([block])
            self.dense = nn.Linear(4, 10)

        def forward(self, x):
            h = torch.relu(self.stem_bn(self.stem(x[:, None])))
            for b in self.blocks:
                r = torch.relu(b.bn1(b.conv1(h)))
                h = torch.relu(h + b.bn2(b.conv2(r)))
            return self.dense(h.mean(dim=(2, 3)))

    printed, snippet_model = run_snippet(d)
    models = {  # label: (file, test split, module)
        "digits-cnn (the docs snippet: padding=1)": ("digits-cnn", "digits", snippet_model),
        "digits-mlp": ("digits-mlp", "digits", MLP()),
        "mnist1d-cnn (Conv1d, padding=2)": ("mnist1d-cnn", "mnist1d", CNN(nn.Conv1d, 32, 5)),
        "digits-cnn-same, old zoo (padding=1)": ("digits-cnn-same", "digits", CNN(nn.Conv2d, 8, 3)),
        "digits-cnn-same, old zoo (F.pad (0,1,0,1) at stride 2)": (
            "digits-cnn-same",
            "digits",
            CNN(nn.Conv2d, 8, 3, xla_same=True),
        ),
        "rescnn (BatchNorm, strict load)": ("rescnn", "digits", ResCNN()),
    }
    result = {"torch": torch.__version__, "snippet_printed": printed, "networks": {}}
    for label, (name, split, model) in models.items():
        model.load_state_dict(safetensors.torch.load_file(d / f"{name}.safetensors"))  # strict
        model.eval()
        x, y = tests[split]
        with torch.no_grad():
            logits = model(x).numpy()
        ours = np.load(d / f"{name}_logits.npy")
        result["networks"][label] = {
            "file": f"{name}.safetensors",
            "test_acc_torch": float((logits.argmax(1) == y).mean()),
            "test_acc_ours_logits": float((ours.argmax(1) == y).mean()),
            "max_abs_logit_diff": float(np.abs(logits - ours).max()),
        }
        print(label, result["networks"][label], file=sys.stderr)
    write_result(result, args.out, name="formats_torch", schema=SCHEMA_VERSION, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
