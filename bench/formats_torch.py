"""What PyTorch computes with our exported files (issue 33): run with the peers'
environment (``../shared/peers/README.md``: torch, numpy, safetensors), after
``bench/formats.py`` wrote ``bench/results/formats_torch/``.

Each network is loaded as a PyTorch user would: a plain module written the natural way,
``model.load_state_dict(safetensors.torch.load_file(path))`` (strict), then run in
float32 on the digits test split (NCHW inputs):

- ``digits-mlp``: ``Linear(64, 32)``, ReLU, ``Linear(32, 10)``;
- ``digits-cnn``: three ``Conv2d(k=3)`` (strides 1, 2, 2), ReLU, global average pooling,
  ``Linear(8, 10)``, two ways: ``padding=1`` everywhere (what a PyTorch user writes), and
  the strided convolutions with ``F.pad(x, (0, 1, 0, 1))`` and ``padding=0`` (XLA's 'SAME'
  at stride 2 on even sizes pads one on the high side only);
- a random ResCNN with BatchNorm (stem conv + BN, one residual block, dense): the file's
  ``num_batches_tracked`` entries let the strict load pass.

Records test accuracy and the largest logit difference against our logits.

Usage (from the repository root)::

  peers-venv/bin/python bench/formats_torch.py [--quick]

Writes ``bench/results/formats_torch.json`` and prints it as one JSON line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, write_result  # noqa: E402

SCHEMA_VERSION = 1


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
    test = np.load(d / "digits_test.npz")
    x, y = torch.from_numpy(test["x"]), torch.from_numpy(test["y"]).long()

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(64, 32), nn.Linear(32, 10)])

        def forward(self, x):
            return self.layers[1](torch.relu(self.layers[0](x.flatten(1))))

    class CNN(nn.Module):
        def __init__(self, xla_same: bool):
            super().__init__()
            pad = 1 if not xla_same else 0
            self.convs = nn.ModuleList(
                [nn.Conv2d(1, 8, 3, padding=1)]
                + [nn.Conv2d(8, 8, 3, stride=2, padding=pad) for _ in range(2)]
            )
            self.dense = nn.Linear(8, 10)
            self.xla_same = xla_same

        def forward(self, x):
            h = x[:, None]
            for i, conv in enumerate(self.convs):
                if self.xla_same and i > 0:
                    h = F.pad(h, (0, 1, 0, 1))
                h = torch.relu(conv(h))
            return self.dense(h.mean(dim=(2, 3)))

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

    models = {
        "digits-mlp": ("digits-mlp", MLP()),
        "digits-cnn (padding=1)": ("digits-cnn", CNN(xla_same=False)),
        "digits-cnn (F.pad (0,1,0,1) at stride 2)": ("digits-cnn", CNN(xla_same=True)),
        "rescnn (BatchNorm, strict load)": ("rescnn", ResCNN()),
    }
    result = {"torch": torch.__version__, "networks": {}}
    for label, (name, model) in models.items():
        model.load_state_dict(safetensors.torch.load_file(d / f"{name}.safetensors"))  # strict
        model.eval()
        with torch.no_grad():
            logits = model(x).numpy()
        ours = np.load(d / f"{name}_logits.npy")
        result["networks"][label] = {
            "test_acc_torch": float((logits.argmax(1) == y.numpy()).mean()),
            "test_acc_ours_logits": float((ours.argmax(1) == y.numpy()).mean()),
            "max_abs_logit_diff": float(np.abs(logits - ours).max()),
        }
        print(label, result["networks"][label], file=sys.stderr)
    write_result(result, args.out, name="formats_torch", schema=SCHEMA_VERSION, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
