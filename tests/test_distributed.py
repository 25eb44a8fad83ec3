"""fastmlp.distributed: data-parallel fit over MPI. The MPI tests start 2 ranks with mpiexec
(tests/distributed_worker.py) and compare what they wrote with each other and with a
single-process fit of the same case (tests/distributed_cases.py); they skip without mpi4py and
an mpiexec. The rest runs in this process."""
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import fastmlp as fm
from fastmlp import distributed

sys.path.insert(0, os.path.dirname(__file__))
from distributed_cases import CASES, build, build_batchnorm, data, shard_of_slices  # noqa: E402

WORKER = os.path.join(os.path.dirname(__file__), "distributed_worker.py")


def _mpiexec():
    """The mpiexec beside this Python (the mpich wheel's), else the one on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.access(here, os.X_OK) else shutil.which("mpiexec")


def _mpi_available():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return _mpiexec() is not None


needs_mpi = pytest.mark.skipif(not _mpi_available(), reason="needs mpi4py and mpiexec (pip install mpi4py mpich)")


def run_ranks(scenario, out, timeout=180, **env_extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", **env_extra)
    # Open MPI refuses to run as root, and more ranks than cores, unless told (CI runs as root on 2 cores).
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1")
    for v in ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE"):
        env.pop(v, None)  # this process's own launcher, if any, is not the ranks'
    # python -m mpi4py: an exception a rank does not catch aborts the whole job instead of hanging it.
    cmd = [_mpiexec(), "-n", "2", sys.executable, "-m", "mpi4py", WORKER, scenario, str(out)]
    started = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    return p, time.monotonic() - started


def weights(path):
    with np.load(path) as f:
        return [f[k] for k in sorted(f.files, key=lambda k: int(k.split("_")[1]))]


def relative_difference(a, b):
    return max(float(np.max(np.abs(u - v))) / max(float(np.max(np.abs(v))), 1e-30) for u, v in zip(a, b))


def identical_weights(out, name):
    """Rank 0's weights of `name`, after checking that rank 1's are the same bit for bit."""
    w0, w1 = weights(out / f"{name}-rank0.npz"), weights(out / f"{name}-rank1.npz")
    for u, v in zip(w0, w1):
        np.testing.assert_array_equal(u, v)
    return w0


def identical_logs(out, name):
    """Rank 0's history of `name`, after checking that rank 1 logged the same."""
    with open(out / f"{name}-rank0.json") as f:
        logs0 = json.load(f)
    with open(out / f"{name}-rank1.json") as f:
        assert json.load(f) == logs0
    return logs0


# ---- in this process


def test_without_a_launcher_init_is_a_no_op(monkeypatch):
    for v in distributed._MPI_VARIABLES + distributed._TORCHRUN_VARIABLES:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr(distributed, "_world", None)
    distributed.init()
    assert distributed.is_initialized()
    assert (distributed.rank(), distributed.world_size(), distributed.local_rank()) == (0, 1, 0)
    assert distributed._active() is None
    distributed.barrier()  # nothing to wait for
    case = CASES["adam_float32"]
    x, y = data(case)
    a = build(case, seed=1)
    a.fit(x, y, batch_size=case["batch"], epochs=1, verbose=0)
    distributed.shutdown()
    b = build(case, seed=1)
    b.fit(x, y, batch_size=case["batch"], epochs=1, verbose=0, sharded=True)  # one process's shard: all rows
    for u, v in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(u, v)
    with pytest.raises(ValueError, match="sharded"):
        b.fit(x, y, epochs=1, verbose=0, sharded="yes")


def test_torchrun_with_several_processes_is_refused_clearly(monkeypatch):
    for v in distributed._MPI_VARIABLES:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(distributed, "_world", None)
    with pytest.raises(fm.distributed.DistributedError, match="mpiexec"):
        distributed.init()
    assert not distributed.is_initialized()
    monkeypatch.setenv("WORLD_SIZE", "1")
    distributed.init()  # a job of one process: nothing to do
    assert distributed.world_size() == 1


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), True, "10"])
def test_init_refuses_a_bad_timeout(monkeypatch, timeout):
    monkeypatch.setattr(distributed, "_world", None)
    with pytest.raises(ValueError, match="timeout"):
        distributed.init(timeout=timeout)


class _TwoRanks:  # rank 0 of two whose other rank adds zeros (it passed where this one failed)
    rank, size, device = 0, 2, "cpu"

    def __init__(self):
        self.sums = []

    def allreduce_sum(self, values):
        self.sums.append(values.tolist())


def test_data_parallel_fit_refuses_what_it_cannot_split(monkeypatch):
    ranks = _TwoRanks()
    monkeypatch.setattr(distributed, "_world", distributed._World(size=2, communicator=ranks))
    case = CASES["adam_float32"]
    x, y = data(case)
    model = fm.Sequential([fm.Dense(3, activation="softmax", input_dim=12)], seed=0)
    model.compile(optimizer=fm.optimizers.LBFGS(), loss="sparse_categorical_crossentropy", device="cpu")
    before = model.get_weights()
    with pytest.raises(ValueError, match="first-order"):
        model.fit(x, y, epochs=1, verbose=0)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", device="cpu")
    with pytest.raises(ValueError, match="data source"):
        model.fit(((x[i:i + 100], y[i:i + 100]) for i in range(0, 1000, 100)), epochs=1, verbose=0)
    with pytest.raises(ValueError, match="empty"):  # this rank's data: the others are told, not left waiting
        model.fit(x[:0], y[:0], epochs=1, verbose=0)
    # Each refusal told the other rank in one collective (1: this rank failed), and made no other.
    assert ranks.sums == [[1.0], [1.0], [1.0]]
    for u, v in zip(before, model.get_weights()):
        np.testing.assert_array_equal(u, v)


def test_device_cuda_means_the_local_ranks_gpu_under_a_launcher(monkeypatch):
    monkeypatch.setattr(distributed, "_world", distributed._World(rank=3, size=4, local_rank=1, local_size=2))
    from fastmlp.models import resolve_device

    assert resolve_device("cuda") == "cuda:1"
    assert resolve_device("cuda:0") == "cuda:0"  # an explicit index is kept
    assert resolve_device("cpu") == "cpu"


def test_a_cpu_model_under_torchrun_is_refused_clearly(monkeypatch):
    class NcclWorld:  # torchrun's ranks: the host-side sums go through NCCL on their GPUs
        rank, size, device = 0, 2, "cuda:0"

    monkeypatch.setattr(distributed, "_world", distributed._World(size=2, communicator=NcclWorld()))
    with pytest.raises(ValueError, match="mpiexec"):
        distributed.communicator_for("cpu")


def test_nccl_is_found_in_the_environment_then_the_nvidia_wheel(monkeypatch, tmp_path):
    lib = tmp_path / "nvidia" / "nccl" / "lib" / "libnccl.so.2"
    lib.parent.mkdir(parents=True)
    lib.write_bytes(b"")
    fake = type(sys)("nvidia")
    fake.__path__ = [str(tmp_path / "nvidia")]
    monkeypatch.setitem(sys.modules, "nvidia", fake)
    monkeypatch.delenv("FASTMLP_NCCL_LIBRARY", raising=False)
    assert distributed._nccl_library() == str(lib)
    monkeypatch.setenv("FASTMLP_NCCL_LIBRARY", "/opt/nccl/libnccl.so.2")
    assert distributed._nccl_library() == "/opt/nccl/libnccl.so.2"
    monkeypatch.delenv("FASTMLP_NCCL_LIBRARY")
    fake.__path__ = [str(tmp_path / "elsewhere")]
    assert distributed._nccl_library() == ""  # the loader's search


def _nccl():
    """(the NCCL library to open, its version), or a skip: NCCL is reached through the CUDA plugin."""
    if not fm.build_info()["cuda_compiled"]:
        pytest.skip("fastmlp was built without the CUDA plugin")
    library = distributed._nccl_library()
    try:
        version, _ = fm._core.nccl_library(library)
    except fm.distributed.DistributedError as e:
        pytest.skip(f"NCCL cannot be loaded here: {e}")
    return library, version


def test_nccl_loads_and_makes_communicator_ids_without_a_gpu():
    library, version = _nccl()
    assert version >= 21000  # 2.10 or later: graph capture and ncclCommGetAsyncError
    a, b = fm._core.nccl_unique_id(library), fm._core.nccl_unique_id(library)
    assert isinstance(a, bytes) and len(a) == len(b) == 128 and a != b


@pytest.mark.skipif(fm.cuda_is_available(), reason="checks the refusal on a machine without a GPU")
def test_an_nccl_communicator_without_a_gpu_raises_clearly():
    library, _ = _nccl()
    unique = fm._core.nccl_unique_id(library)
    with pytest.raises(fm.distributed.DistributedError, match="cuda:0"):
        fm._core.nccl_communicator(library, unique, 0, 1, 0, 5.0)
    with pytest.raises(fm.distributed.DistributedError, match="128 bytes"):
        fm._core.nccl_communicator(library, unique[:10], 0, 1, 0, 5.0)


def test_under_torchrun_ranks_share_ids_through_its_store(tmp_path):
    # torchrun comes with PyTorch, which is not a test dependency: this runs where torch is installed.
    pytest.importorskip("torch.distributed.run")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    for v in distributed._MPI_VARIABLES + distributed._TORCHRUN_VARIABLES:
        env.pop(v, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           os.path.join(os.path.dirname(__file__), "torchrun_worker.py"), str(tmp_path)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    ranks = []
    for r in range(2):
        with open(tmp_path / f"torchrun-rank{r}.json") as f:
            ranks.append(json.load(f))
    for got in ranks:  # rank 0's ids, in the order they were made
        assert got["ids"] == [bytes([7]).hex() * 128, bytes([9]).hex() * 128]
        if not got["cuda"]:
            assert "mpiexec" in got["refusal"] and "GPU" in got["refusal"]


@pytest.mark.skipif(not _mpi_available(), reason="needs mpi4py (MPI's singleton: no launcher)")
def test_one_rank_forced_through_the_data_parallel_path_equals_a_plain_fit(tmp_path):
    # init(force=True) without a launcher: a job of one rank whose fit takes the data-parallel path
    # (the global batch scaled in the loss, the all-reduce, the flag) and must end where a plain fit does.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for v in distributed._MPI_VARIABLES + distributed._TORCHRUN_VARIABLES:
        env.pop(v, None)
    p = subprocess.run([sys.executable, WORKER, "alone", str(tmp_path)], capture_output=True, text=True,
                       timeout=180, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    with open(tmp_path / "alone-stats-rank0.json") as f:
        stats = json.load(f)
    steps = sum(3 * -(-int(data(case)[0].shape[0] * (1 - case.get("validation_split", 0.0))) // case["batch"])
                for case in CASES.values())
    assert stats["calls"] >= steps  # a sum per step at least: the data-parallel path ran
    for name, case in CASES.items():
        x, y = data(case)
        single = build(case, seed=case.get("seed", 1), same_dropout_seed=True)
        h = single.fit(x, y, batch_size=case["batch"], epochs=3, verbose=0,
                       validation_split=case.get("validation_split", 0.0))
        for u, v in zip(weights(tmp_path / f"{name}-rank0.npz"), single.get_weights()):
            np.testing.assert_array_equal(u, v, err_msg=name)
        with open(tmp_path / f"{name}-rank0.json") as f:
            logs = json.load(f)
        logs.pop("final_lr")
        assert logs == h.history, name
    x, y = data(CASES["adam_float64"])
    single = build_batchnorm(seed=1)
    single.fit(x, y, batch_size=111, epochs=3, verbose=0)
    for u, v in zip(weights(tmp_path / "batchnorm-rank0.npz"), single.get_weights()):
        np.testing.assert_array_equal(u, v)


# ---- two MPI ranks


@needs_mpi
def test_two_ranks_end_bit_identical_and_equal_a_single_process_fit(tmp_path):
    p, _ = run_ranks("equivalence", tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    for name, case in CASES.items():
        r0 = identical_weights(tmp_path, name)  # the same update on every rank, bit for bit
        x, y = data(case)
        single = build(case, seed=case.get("seed", 1), same_dropout_seed=True)
        h = single.fit(x, y, batch_size=case["batch"], epochs=3, verbose=0,
                       validation_split=case.get("validation_split", 0.0))
        tolerance = 1e-5 if case["dtype"] == "float32" else 1e-12
        assert relative_difference(r0, single.get_weights()) < tolerance, name
        logs0 = identical_logs(tmp_path, name)  # the reduced epoch results, the same on every rank
        logs0.pop("final_lr")
        for key, values in h.history.items():  # global means: what one process reports
            np.testing.assert_allclose(logs0[key], values, rtol=10 * tolerance, err_msg=f"{name} {key}")
    # BatchNormalization normalizes each rank's slice by its own statistics (weights differ from a
    # single process's), but its moving mean of the inputs is the row-weighted mean of the slices'.
    bn = identical_weights(tmp_path, "batchnorm")
    x, y = data(CASES["adam_float64"])
    single = build_batchnorm(seed=1)
    single.fit(x, y, batch_size=111, epochs=3, verbose=0)
    np.testing.assert_allclose(bn[2], single.get_weights()[2], rtol=1e-12)
    assert not np.allclose(bn[3], single.get_weights()[3], rtol=1e-6)  # the variance misses the slices' spread


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory):
    """One 2-rank job of the sharded cases, for the tests that read them."""
    out = tmp_path_factory.mktemp("sharded")
    p, _ = run_ranks("sharded", out)
    assert p.returncode == 0, p.stdout + p.stderr
    return out


@needs_mpi
def test_sharded_fit_trains_each_rank_on_its_own_rows(sharded_run):
    tmp_path = sharded_run
    # Exact: shards holding what the unshuffled replicated fit gives each rank give its result.
    case = CASES["adam_float64"]
    x, y = data(case)
    single = build(case, seed=1)
    h = single.fit(x, y, batch_size=case["batch"], epochs=3, verbose=0, shuffle=False)
    assert relative_difference(identical_weights(tmp_path, "sharded_exact"), single.get_weights()) < 1e-12
    np.testing.assert_allclose(identical_logs(tmp_path, "sharded_exact")["loss"], h.history["loss"], rtol=1e-11)
    # Shuffled uneven shards: statistically, not bitwise, a single-process fit; the ranks agree exactly.
    identical_weights(tmp_path, "sharded_shuffled")
    logs0 = identical_logs(tmp_path, "sharded_shuffled")
    assert logs0["loss"][-1] < 0.8 * logs0["loss"][0] and logs0["val_loss"][-1] < logs0["val_loss"][0]
    assert 0.5 < logs0["val_accuracy"][-1] <= 1.0


@needs_mpi
def test_unshuffled_shards_go_round_across_epochs(sharded_run):
    tmp_path = sharded_run
    case = CASES["adam_float64"]
    x, y = data(case)
    shard0, shard1 = np.arange(600), np.arange(600, 1000)

    def epoch_rows(first0, first1):  # global batches: 50 rows of each shard, going round it
        rows = []
        for k in range(10):
            rows.extend(shard0[(first0 + 50 * k + np.arange(50)) % 600])
            rows.extend(shard1[(first1 + 50 * k + np.arange(50)) % 400])
        return np.array(rows)

    single = build(case, seed=1)
    for first0, first1 in ((0, 0), (500, 100)):  # where each shard's second epoch starts
        rows = epoch_rows(first0, first1)
        single.fit(x[rows], y[rows], batch_size=100, epochs=1, verbose=0, shuffle=False)
    assert relative_difference(identical_weights(tmp_path, "sharded_cursor"), single.get_weights()) < 1e-12


@needs_mpi
def test_ranks_agree_on_groups_of_batches_small_validation_and_early_failures(tmp_path):
    p, _ = run_ranks("agreement", tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    h0 = identical_logs(tmp_path, "agreement_batches")
    # Rank 1's hook stopped both ranks in the first epoch (after batch 6 of 10).
    assert len(h0["loss"]) == 1 and "val_loss" in h0
    assert all(np.all(np.isfinite(w)) for w in identical_weights(tmp_path, "agreement_batches"))
    written = sorted(f.name for f in tmp_path.glob("batch-*.weights.npz"))
    assert written == ["batch-0-2.weights.npz", "batch-0-4.weights.npz", "batch-0-6.weights.npz"]
    assert p.stdout.count("Epoch 1/3") == 1  # rank 0's line only
    with open(tmp_path / "agreement-rank0.json") as f:
        r0 = json.load(f)
    with open(tmp_path / "agreement-rank1.json") as f:
        r1 = json.load(f)
    assert "differ between ranks" in r0["sharded"] and "differ between ranks" in r1["sharded"]
    assert "empty" in r1["empty"] and "other rank(s) of 2 failed preparing fit" in r0["empty"]
    assert float(r0["empty"].split()[2]) < 10  # at once, not after the 60 s timeout


@needs_mpi
def test_a_nan_on_one_rank_stops_every_rank_with_the_same_finite_weights(tmp_path):
    p, _ = run_ranks("nonfinite", tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    for r in (0, 1):
        assert (tmp_path / f"nonfinite-rank{r}.txt").read_text() == "NonFiniteLossError"
    assert all(np.all(np.isfinite(w)) for w in identical_weights(tmp_path, "nonfinite"))


@needs_mpi
def test_callbacks_decide_alike_and_only_rank_0_writes_files_and_prints(tmp_path):
    p, _ = run_ranks("callbacks", tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    h0 = identical_logs(tmp_path, "callbacks")
    assert len(h0["loss"]) < 40  # EarlyStopping ended both ranks at the same epoch
    assert h0["final_lr"] < 0.05  # ReduceLROnPlateau acted, alike on both
    identical_weights(tmp_path, "callbacks")
    assert (tmp_path / "log-rank0.csv").exists() and (tmp_path / "ckpt-rank0.weights.npz").exists()
    assert not (tmp_path / "log-rank1.csv").exists() and not (tmp_path / "ckpt-rank1.weights.npz").exists()
    assert "Epoch" not in p.stdout  # rank 1 asked for verbose=1; rank 0 (verbose=0) reports for all


@needs_mpi
def test_ranks_called_with_different_arguments_all_raise(tmp_path):
    p, _ = run_ranks("mismatch", tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    for r in (0, 1):
        assert "differ between ranks" in (tmp_path / f"mismatch-rank{r}.txt").read_text()


@needs_mpi
def test_a_stalled_rank_makes_the_other_raise_after_the_timeout(tmp_path):
    p, seconds = run_ranks("stall", tmp_path, FASTMLP_TEST_TIMEOUT="3", FASTMLP_TEST_STALL="30")
    text = (tmp_path / "stall-rank0.txt").read_text()
    assert text.startswith("DistributedError"), text
    assert "still incomplete after 3 s" in text and "rank 0 of 2" in text
    assert float(text.split()[2]) < 15  # about the timeout, not the 30 s rank 1 sleeps
    assert p.returncode != 0 and seconds < 60


@needs_mpi
def test_a_rank_that_dies_does_not_hang_the_job(tmp_path):
    p, seconds = run_ranks("die", tmp_path, FASTMLP_TEST_TIMEOUT="5", timeout=120)
    assert p.returncode != 0 and seconds < 60
    rank0 = tmp_path / "die-rank0.txt"  # the launcher may end rank 0 before its timeout does
    assert not rank0.exists() or rank0.read_text().startswith("DistributedError")


def test_the_model_fingerprint_tells_apart_what_ranks_must_share():
    def model(seed=0, lr=1e-3, metrics=("accuracy",), units=8):
        m = fm.Sequential([fm.Dense(units, activation="relu", input_dim=4), fm.Dense(3, activation="softmax")],
                          seed=seed)
        m.compile(fm.optimizers.Adam(lr=lr), "sparse_categorical_crossentropy", metrics=list(metrics), device="cpu")
        return distributed.model_fingerprint(m)

    base = model()
    assert model(seed=7) == base  # the weights are rank 0's anyway
    for other in (model(lr=1e-2), model(metrics=("accuracy", "auc")), model(units=9),
                  model(metrics=(fm.metrics.TopKCategoricalAccuracy(k=2),)),):
        assert other != base
