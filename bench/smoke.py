"""Smoke check: do this machine's packages run weightspace end to end?

Builds a 4-run digits CNN zoo (Orbax checkpoints) and loads it back, trains a MIP
hypernetwork for a few steps and generates targets, and fits a graph metanetwork for one
epoch on the zoo's checkpoints. Used by ``bench/gpu.sh`` before the benchmarks, so a
machine whose JAX/Flax/Orbax versions do not fit fails in seconds with the error, not
halfway through the suite.

Usage::

  python bench/smoke.py [--dir DIR]

Prints one JSON line (backend, versions, seconds); exits non-zero on the first failure.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # as a script


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()

    import flax
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from bench.common import stdout_to_stderr
    from hyper import data, zoo
    from hyper.hypernets.conditions import Continuous
    from hyper.hypernets.hypernet import HyperNet, generate
    from hyper.hypernets.train import HyperTrainer
    from metanets import datasets, predict

    with stdout_to_stderr(), tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        z = zoo.build(
            Path(tmp, "zoo").resolve(),
            "digits-cnn",
            arch={"arch": "cnn2d", "channels": [4, 4], "out_features": 10},
            grid={
                "learning_rate": [1e-2, 3e-2],
                "weight_decay": [0.0],
                "init_scale": [1.0],
                "train_fraction": [1.0],
                "activation": ["relu"],
                "dropout": [0.0],
            },
            seeds=2,
            epochs=2,
            checkpoint_epochs=[1, 2],
            progress=False,
        )
        loaded = zoo.load(Path(tmp, "zoo").resolve())
        assert loaded.num_members == z.num_members == 4, loaded.num_members

        ds_digits = data.load("digits")
        target = z.groups[0].target
        hnet = HyperNet(target, [Continuous("gamma")], rngs=nnx.Rngs(0))
        trainer = HyperTrainer(
            hnet, ds_digits.x_train, ds_digits.y_train, conditions_per_step=4, batch_size=32
        )
        losses = trainer.run(jax.random.key(0), 3)
        assert jnp.all(jnp.isfinite(jnp.asarray(losses))), losses
        pop = generate(trainer.hnet, {"gamma": jnp.linspace(0.0, 1.0, 8)})
        assert target.validate(pop, batched=True) == 8

        ds = datasets.load_zoos([Path(tmp, "zoo").resolve()])
        pred = predict.fit("gmn", ds, list(range(len(ds))), epochs=1, log=lambda m: None)
        y = predict.evaluate(pred, ds)
    out = {
        "smoke": "ok",
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "metanet_tau_on_train": y["tau"],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
