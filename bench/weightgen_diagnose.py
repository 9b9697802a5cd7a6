"""Where the weight generator loses accuracy (issue 29 diagnosis; not a benchmark).

For one architecture of `bench/weightgen.py` (its cached full zoo, its training set, aligned
to member 0) and each `WeightGenConfig` override given as JSON: the median test accuracy
of the training networks, of their autoencoder reconstructions (`WeightGen.reconstruct`),
of 200 unprompted samples and of 100 samples prompted at the 15th/50th/85th accuracy
percentiles, with the loss history. ``--pca`` first prints the residual mean-square error
of the best rank-k affine reconstruction of the per-leaf normalised weights: the decoder's
last layer is linear in ``ae_hidden`` units, so its loss cannot fall below the rank-
``ae_hidden`` residual.

Usage::

  python bench/weightgen_diagnose.py digits_mlp '[{}, {"functional_weight": 1.0}]' [--pca]
      [--cache /tmp/wg_cache]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bench.weightgen import ARCHS, training_set  # noqa: E402
from generators import novelty  # noqa: E402
from generators import weightgen as wg  # noqa: E402
from generators.weightgen_nets import normalize  # noqa: E402
from hyper import data as data_lib  # noqa: E402
from hyper import population as pop  # noqa: E402
from hyper import zoo  # noqa: E402
from hyper.align import align_population  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("arch", choices=list(ARCHS))
    ap.add_argument("variants", help="JSON list of WeightGenConfig overrides")
    ap.add_argument("--cache", default="/tmp/wg_cache")
    ap.add_argument("--pca", action="store_true")
    args = ap.parse_args(argv)
    index = list(ARCHS).index(args.arch)
    z = zoo.load(Path(args.cache) / "full" / args.arch)
    target, params, acc, _ = training_set(z, seed=index)  # the benchmark's training set
    params, _ = align_population(target, params, key=jax.random.key(0))
    data = data_lib.load(zoo.PRESETS[ARCHS[args.arch]["preset"]].dataset)

    def accuracy(p):
        return novelty.evaluate(target, p, data.x_test, data.y_test)[0]

    print(f"{args.arch}: training median acc {np.median(acc):.4f}", flush=True)
    if args.pca:
        x = np.asarray(pop.flatten(target, params), np.float64)
        xn = np.asarray(normalize(target, x, *wg.leaf_statistics(target, x)))
        sv = np.linalg.svd(xn - xn.mean(0), compute_uv=False) ** 2
        res = {k: round(float(sv[k:].sum() / xn.size), 4) for k in (64, 128, 256, 384)}
        print(f"rank-k affine residual MSE: {res}", flush=True)
    for v in json.loads(args.variants):
        t0 = time.perf_counter()
        cfg = wg.WeightGenConfig(condition="accuracy", seed=0, **v)
        inputs = data.x_train if cfg.functional_weight > 0 else None  # the functional term
        gen = wg.train(target, params, config=cfg, accuracy=acc, inputs=inputs, progress=False)
        ae = [h["loss"] for h in gen.history if h["phase"] == "autoencoder"]
        flow = [h["loss"] for h in gen.history if h["phase"] == "flow"]
        prompted = []
        for a in np.quantile(acc, [0.15, 0.5, 0.85]):
            s = gen.sample(jax.random.key(2), 100, accuracy=float(a))
            prompted.append((round(float(a), 3), round(float(np.median(accuracy(s))), 4)))
        out = {
            "overrides": v,
            "train_s": round(time.perf_counter() - t0),
            "ae_loss": ae[-1] if ae else None,
            "flow_loss": flow[-1] if flow else None,
            "recon_median_acc": float(np.median(accuracy(gen.reconstruct(params)))),
            "sample_median_acc": float(np.median(accuracy(gen.sample(jax.random.key(1), 200)))),
            "prompted_vs_achieved": prompted,
        }
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
