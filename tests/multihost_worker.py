"""One process of the multi-host test (`tests/test_hyper_multihost.py`): trains a small zoo
population with `hyper.train.Trainer` and generates networks with a hypernet, sharded over
a `targets` mesh that spans every process, then writes what it gathered to an ``.npz``.

  python tests/multihost_worker.py PROCESS_ID NUM_PROCESSES PORT CPU_DEVICES OUT.npz

With NUM_PROCESSES=1 it is the single-process reference (on CPU_DEVICES devices)."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def main() -> None:
    pid, nproc, port, ndev, out = sys.argv[1:6]
    pid, nproc, ndev = int(pid), int(nproc), int(ndev)
    from hyper import sharding

    if nproc > 1:
        sharding.initialize_multihost(f"localhost:{port}", nproc, pid, cpu_devices=ndev)
    else:
        sharding.use_cpu_cores(ndev, force=True)
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from hyper import data
    from hyper.architectures import make_target
    from hyper.hypernets.conditions import Continuous
    from hyper.hypernets.hypernet import HyperNet, generate
    from hyper.train import TrainConfig, Trainer

    assert jax.process_count() == nproc and jax.device_count() == nproc * ndev
    ds = data.load("digits")
    target = make_target("mlp", input_shape=(8, 8), widths=[8], out_features=10)
    trainer = Trainer(target, ds, TrainConfig(optimizer="adam", batch_size=64))
    # 8 members over all devices; learning rates differ per member.
    state = trainer.init(jax.random.key(0), 8, learning_rate=list(np.geomspace(1e-3, 3e-2, 8)))
    for epoch in range(2):
        state, _ = trainer.train_epoch(state, epoch)
    metrics = trainer.evaluate(state.params)

    hnet = HyperNet(target, [Continuous("gamma")], rngs=nnx.Rngs(0))
    mesh = sharding.targets_mesh()
    generated = generate(hnet, {"gamma": jnp.linspace(0.0, 1.0, 6)}, mesh=mesh)  # padded to 8

    # A zoo built by every process together into one directory (process 0 writes files;
    # checkpoints gather the member-sharded states from both processes).
    from hyper import zoo

    zdir = out.replace(".npz", "_zoo")
    grid = {
        "learning_rate": [3e-3, 1e-2],
        "weight_decay": [0.0],
        "init_scale": [1.0],
        "train_fraction": [1.0],
        "activation": ["relu"],
        "dropout": [0.0],
        "optimizer": ["adam"],
    }
    kw = dict(
        grid=grid,
        seeds=2,
        epochs=2,
        arch={"arch": "mlp", "widths": [8], "out_features": 10},
        progress=False,
    )
    zoo.build(zdir, "digits-mlp", stop_after_epochs=1, **kw)  # interrupted ...
    z = zoo.build(zdir, "digits-mlp", resume=True, **kw)  # ... and resumed
    built = {f"{g.id}/{k}": v for g in z.groups for k, v in _flat(g.params).items()}
    rows = sorted(z.metadata, key=lambda r: (r["member"], r["epoch"]))

    arrays = {
        "zoo_rows_test_acc": np.asarray([r["test_acc"] for r in rows]),
        **{f"built/{k}": np.asarray(v) for k, v in built.items()},
        "test_acc": sharding.to_host(metrics["test_acc"]),
        **{f"zoo/{k}": v for k, v in _flat(sharding.to_host(state.params)).items()},
        **{f"gen/{k}": v for k, v in _flat(sharding.to_host(generated)).items()},
    }
    np.savez(out.replace(".npz", f".{pid}.npz"), **arrays)
    if nproc > 1:
        jax.distributed.shutdown()


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


if __name__ == "__main__":
    main()
