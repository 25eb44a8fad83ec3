"""Data-parallel fit on GPU ranks over NCCL: ranks started by torchrun (tests/distributed_worker.py
with FASTMLP_TEST_DEVICE=cuda), compared with a single-process fit on the same GPU. Needs a GPU, NCCL and PyTorch (for torchrun);
skipped elsewhere. Two ranks share one GPU where NCCL allows it (2.30 or later, with
NCCL_MULTI_RANK_GPU_ENABLE=1)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastmlp as fm
from fastmlp import distributed

sys.path.insert(0, os.path.dirname(__file__))
from distributed_cases import CASES, build, data  # noqa: E402

pytestmark = pytest.mark.skipif(not fm.cuda_is_available(), reason="needs a CUDA GPU")
WORKER = os.path.join(os.path.dirname(__file__), "distributed_worker.py")
FLOAT32_CASES = {k: c for k, c in CASES.items() if c["dtype"] == "float32"}


def nccl_version():
    try:
        return fm._core.nccl_library(distributed._nccl_library())[0]
    except fm.distributed.DistributedError as e:
        pytest.skip(f"NCCL cannot be loaded: {e}")


def run_ranks(ranks, out, scenario="equivalence", check=True, **env_extra):
    pytest.importorskip("torch.distributed.run")
    env = dict(os.environ, OMP_NUM_THREADS="1", NCCL_MULTI_RANK_GPU_ENABLE="1", FASTMLP_TEST_DEVICE="cuda",
               PYTHONPATH=os.pathsep.join(sys.path), **env_extra)
    for v in distributed._MPI_VARIABLES + distributed._TORCHRUN_VARIABLES:
        env.pop(v, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks), WORKER,
           scenario, str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    if check:
        assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    return p


def two_ranks():
    """Skips where two ranks cannot run: one GPU and an NCCL before 2.30."""
    gpus = fm.build_info()["cuda_devices"].count("cuda:")
    if gpus < 2 and nccl_version() < 23000:
        pytest.skip("two ranks on one GPU need NCCL 2.30 or later")


def weights(path):
    with np.load(path) as f:
        return [f[k] for k in sorted(f.files, key=lambda k: int(k.split("_")[1]))]


def single_process(case):
    x, y = data(case)
    model = build(case, seed=case.get("seed", 1), same_dropout_seed=True, device="cuda")
    history = model.fit(x, y, batch_size=case["batch"], epochs=3, verbose=0,
                        validation_split=case.get("validation_split", 0.0))
    return history, model.get_weights()


def test_one_gpu_rank_through_nccl_equals_a_plain_fit(tmp_path):
    # init(force=True): the all-reduce (identity for one rank) inside the captured step, the loss
    # scaled to the global batch, the flag: the weights of a plain fit on the same GPU.
    nccl_version()
    run_ranks(1, tmp_path)
    with open(tmp_path / "equivalence-stats-rank0.json") as f:
        assert json.load(f)["calls"] > 0  # NCCL's gradient sums were queued
    for name, case in FLOAT32_CASES.items():
        history, single = single_process(case)
        for u, v in zip(weights(tmp_path / f"{name}-rank0.npz"), single):
            np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-7, err_msg=name)
        with open(tmp_path / f"{name}-rank0.json") as f:
            logs = json.load(f)
        for key, values in history.history.items():
            np.testing.assert_allclose(logs[key], values, rtol=1e-5, err_msg=f"{name} {key}")


def test_two_gpu_ranks_end_bit_identical_and_equal_a_single_process_fit(tmp_path):
    two_ranks()
    run_ranks(2, tmp_path)
    for name, case in FLOAT32_CASES.items():
        r0, r1 = weights(tmp_path / f"{name}-rank0.npz"), weights(tmp_path / f"{name}-rank1.npz")
        for u, v in zip(r0, r1):
            np.testing.assert_array_equal(u, v, err_msg=name)
        _, single = single_process(case)
        for u, v in zip(r0, single):
            np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6, err_msg=name)


def test_a_nan_on_one_gpu_rank_stops_every_rank_with_the_same_finite_weights(tmp_path):
    two_ranks()
    run_ranks(2, tmp_path, "nonfinite")
    for r in (0, 1):
        assert (tmp_path / f"nonfinite-rank{r}.txt").read_text() == "NonFiniteLossError"
    w0, w1 = weights(tmp_path / "nonfinite-rank0.npz"), weights(tmp_path / "nonfinite-rank1.npz")
    for u, v in zip(w0, w1):
        np.testing.assert_array_equal(u, v)
        assert np.all(np.isfinite(u))


def test_a_stalled_gpu_rank_makes_the_other_raise_after_the_timeout(tmp_path):
    # NCCL's kernels wait for the missing rank: the host's deadline aborts them (ncclCommAbort on a
    # thread of its own, the engine dropping its captured steps) instead of hanging.
    two_ranks()
    p = run_ranks(2, tmp_path, "stall", check=False, FASTMLP_TEST_TIMEOUT="5", FASTMLP_TEST_STALL="60")
    text = (tmp_path / "stall-rank0.txt").read_text()
    assert text.startswith("DistributedError"), text + p.stderr[-2000:]
    assert "after 5 s" in text and float(text.split()[2]) < 30
