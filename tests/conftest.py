"""Test settings: 8 fake CPU devices (set before JAX starts its backend), strict promotion."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Compile-time flags for the suite (and the notebooks it runs, which inherit the environment):
# the tests' programs are tiny, so XLA's LLVM optimisation is nearly all of their compile time
# and none of their run time. Level 0 without the expensive passes cut the CPU time of two test
# files by 28% (98 -> 70 s). Results differ from the default level only in the last float32
# bits; tests that compare against the default level compile it explicitly (DEFAULT_COMPILE).
# XLA:CPU's legacy fusion emitters (`LEGACY_EMITTERS`) compile the suite's programs faster
# still: `make test` took 589 s, where it had taken 1,162 s the day before without them
# (two test files alone: 0.67x and 0.74x the CPU time). With them, a reduction split over 8
# devices no longer gives the same bits as on one device, so the tests that promise
# bit-identical sharding (marker ``xla_fusion_emitters``) run in a subprocess without it.
LEGACY_EMITTERS = "--xla_cpu_use_fusion_emitters=false"
SUITE_XLA_FLAGS = (
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true " + LEGACY_EMITTERS
)
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {SUITE_XLA_FLAGS}".strip()

# One persistent compilation cache for the whole run: both xdist workers and every
# subprocess the tests start (CLI runs killed and resumed, notebooks, multi-host processes)
# inherit the directory, so a program compiled once is loaded, not compiled, the next time.
# Entries are kept however fast they compiled: the suite's programs all compile in well
# under JAX's default 1 s threshold. The process that made the directory removes it.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="weightspace-jax-cache-")
    os.environ["WEIGHTSPACE_TEST_CACHE_OWNER"] = str(os.getpid())
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import subprocess  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(scope="session")
def default_compile():
    """`jax.jit` compiler options of XLA's defaults (the suite compiles at level 0)."""
    if jax.default_backend() != "cpu":
        return None
    return {"xla_backend_optimization_level": 3, "xla_llvm_disable_expensive_passes": False}


@pytest.fixture(scope="session")
def digits():
    from hyper import data

    return data.load("digits")


@pytest.fixture(scope="session")
def mlp_target():
    from hyper.architectures import make_target

    return make_target("mlp", input_shape=(8, 8), widths=(16,), out_features=10)


@pytest.fixture(scope="session")
def cnn_target():
    from hyper.architectures import make_target

    return make_target("cnn2d", input_shape=(8, 8), channels=(4, 4), out_features=10)


@pytest.fixture(scope="session")
def rescnn_target():
    from hyper.architectures import make_target

    return make_target("rescnn", input_shape=(8, 8), channels=4, num_blocks=1, out_features=10)


@pytest.fixture(scope="session")
def cnn1d_target():
    from hyper.architectures import make_target

    return make_target("cnn1d", input_shape=(40,), channels=(3, 4), out_features=10)


@pytest.fixture(scope="session")
def cnn2d_rect_target():
    """Three convs (strides 1, 2, 2) on a non-square input: symmetric and asymmetric 'SAME'."""
    from hyper.architectures import make_target

    return make_target("cnn2d", input_shape=(9, 8), channels=(3, 4, 5), out_features=6)


@pytest.fixture(scope="session")
def linen_bn_target():
    """A Flax Linen conv-BN-dropout-dense net (params + batch_stats collections)."""
    import flax.linen as nn

    from hyper.target import Target

    class LinenNet(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            x = nn.Conv(4, (3, 3))(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
            x = nn.Dropout(0.5, deterministic=not train)(nn.relu(x))
            return nn.Dense(3)(x.mean(axis=(1, 2)))

    sample = jax.numpy.zeros((2, 6, 6, 1))
    return Target.from_linen(
        LinenNet(), sample, train_kwargs={"train": True}, eval_kwargs={"train": False}
    )


def _random_params(target, seed, n=None):
    """Random float32 weights for every leaf (variances positive), `[n, ...]` if `n`.

    Built in NumPy: tests that only need *some* weights skip compiling `init`.
    """
    from hyper import population

    rng = np.random.default_rng(seed)
    lead = () if n is None else (n,)
    flat = {}
    for s in target.spec:
        if s.role == "running_stat" and s.path.endswith("var"):
            flat[s.path] = rng.uniform(0.5, 2.0, lead + s.shape).astype(np.float32)
        else:
            flat[s.path] = (0.5 * rng.standard_normal(lead + s.shape)).astype(np.float32)
    return population.from_numpy(target, flat, batched=n is not None)


@pytest.fixture(scope="session")
def random_params():
    """`random_params(target, seed, n=None)`: random weights (a population if `n`)."""
    return _random_params


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory):
    """A finished 2-member digits-MLP zoo, 1 epoch (read-only: copy it to edit it)."""
    from hyper import zoo

    out = tmp_path_factory.mktemp("tiny-zoo") / "z"
    zoo.build(
        out,
        "digits-mlp",
        grid={"learning_rate": [0.05]},
        seeds=2,
        epochs=1,
        checkpoint_epochs=[1],
        progress=False,
    )
    return out


# Seconds each of the slowest test files takes in one process on 2 cores (pytest
# --durations, summed per file). `make test` hands whole files to two workers in collection
# order (xdist --dist loadfile --no-loadscope-reorder); starting with the longest ones lets
# the workers finish together instead of one of them ending the run alone with a long file.
_FILE_SECONDS = {
    "test_notebooks.py": 150,
    "test_metanets_predict.py": 85,
    "test_metanets_resume.py": 55,
    "test_metanets_models.py": 40,
    "test_coverage.py": 40,
    "test_hyper_formats.py": 25,
    "test_reliability.py": 35,
    "test_hyper_multihost.py": 35,
    "test_hypernets_hypernet.py": 35,
    "test_hyper_target.py": 30,
    "test_metanets_batching.py": 12,
    "test_metanets_graph.py": 8,
    "test_hypernets_train.py": 25,
    "test_metanets_metaprune.py": 17,
    "test_hyper_prune.py": 8,
    "test_metanets_transformer.py": 30,
    "test_metanets_probegen.py": 30,
    "test_hyper_cli.py": 20,
    "test_generators_weightgen.py": 30,
}


def pytest_unconfigure(config):
    if os.environ.get("WEIGHTSPACE_TEST_CACHE_OWNER") == str(os.getpid()):
        import shutil

        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: -_FILE_SECONDS.get(item.path.name, 0))  # stable: file order kept


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """A test marked ``xla_fusion_emitters`` runs in a fresh pytest process with XLA's
    default (new) CPU fusion emitters when this process compiles with the legacy ones: its
    bit-for-bit claims are about the programs users compile. It passes or fails with that
    process (whose output is shown on failure)."""
    flags = os.environ.get("XLA_FLAGS", "").split()
    if pyfuncitem.get_closest_marker("xla_fusion_emitters") is None or LEGACY_EMITTERS not in flags:
        return None
    env = {**os.environ, "XLA_FLAGS": " ".join(f for f in flags if f != LEGACY_EMITTERS)}
    env.pop("PYTEST_XDIST_WORKER", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", pyfuncitem.nodeid],
        cwd=pyfuncitem.config.rootpath,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        tail = proc.stdout[-6000:] + proc.stderr[-2000:]
        pytest.fail(f"with the default fusion emitters:\n{tail}")
    return True
