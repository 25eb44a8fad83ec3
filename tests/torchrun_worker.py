"""One rank of the torchrun tests (tests/test_distributed.py, tests/test_distributed_cuda.py start
them with torch.distributed.run): python torchrun_worker.py MODE OUT_DIR.

ids: sends NCCL-sized ids from rank 0 through the TCPStore at MASTER_ADDR:MASTER_PORT as
fastmlp.distributed.init does, then calls init() itself, which without GPUs must refuse clearly.
fit: trains the data-parallel cases on the GPUs (ranks beyond the GPUs share them), with
init(force=True) so that one rank also takes the NCCL path."""
import json
import os
import sys

import numpy as np

import fastmlp as fm
from fastmlp import distributed

mode, out = sys.argv[1], sys.argv[2]
rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
if mode == "ids":
    world = distributed._World(rank, size, store=distributed._torchrun_store(rank, size, 30.0))
    ids = [distributed._share_id(world, lambda k=k: bytes([k]) * 128) for k in (7, 9)]  # two ids, in order
    try:
        fm.distributed.init(timeout=30.0)
        refusal = None
    except fm.distributed.DistributedError as e:
        refusal = str(e)
    with open(os.path.join(out, f"torchrun-rank{rank}.json"), "w") as f:
        json.dump({"ids": [i.hex() for i in ids], "refusal": refusal, "cuda": fm.cuda_is_available()}, f)
else:
    gpus = fm.build_info()["cuda_devices"].count("cuda:")
    os.environ["LOCAL_RANK"] = str(int(os.environ["LOCAL_RANK"]) % gpus)
    fm.distributed.init(timeout=float(os.environ.get("FASTMLP_TEST_TIMEOUT", "60")), force=True)
    sys.path.insert(0, os.path.dirname(__file__))
    from distributed_cases import CASES, build, data  # noqa: E402

if mode == "nonfinite":  # rank 1's targets overflow the loss: every rank stops, with the same weights
    x, _ = data(CASES["adam_float32"])
    y = x[:, :2].copy()
    if rank == 1:
        y[500, 1] = 1e30
    model = fm.Sequential([fm.Dense(8, activation="tanh", input_dim=12), fm.Dense(2)], seed=1)
    model.compile(optimizer="adam", loss="mse", device="cuda")
    try:
        model.fit(x, y, batch_size=110, epochs=3, verbose=0)
        result = "finished"
    except fm.NonFiniteLossError:
        result = "NonFiniteLossError"
    np.savez(os.path.join(out, f"nonfinite-rank{rank}.npz"), *model.get_weights())
    with open(os.path.join(out, f"nonfinite-rank{rank}.txt"), "w") as f:
        f.write(result)
elif mode == "stall":  # rank 1 stops calling after epoch 0: rank 0 raises after the timeout
    import time

    case = CASES["adam_float32"]
    x, y = data(case)
    model = build(case, seed=1, device="cuda")

    def epoch_end(epoch, logs):
        if rank == 1 and epoch == 0:
            time.sleep(60)

    started = time.monotonic()
    try:
        model.fit(x, y, batch_size=case["batch"], epochs=3, verbose=0,
                  callbacks=[fm.callbacks.LambdaCallback(on_epoch_end=epoch_end)])
        result = "finished"
    except fm.distributed.DistributedError as e:
        result = f"DistributedError after {time.monotonic() - started:.1f} s: {e}"
    with open(os.path.join(out, f"stall-rank{rank}.txt"), "w") as f:
        f.write(result)
    sys.stdout.flush()
    os._exit(3 if result != "finished" else 0)  # the aborted communicator cannot be destroyed cleanly
elif mode == "fit":
    for name, case in CASES.items():
        if case["dtype"] != "float32":
            continue  # the CUDA backend computes in float32
        x, y = data(case)
        model = build(case, seed=case.get("seed", 1) if rank == 0 else 1000 + rank, same_dropout_seed=True,
                      device="cuda")
        h = model.fit(x, y, batch_size=case["batch"], epochs=3, verbose=0)
        np.savez(os.path.join(out, f"{name}-rank{rank}.npz"), *model.get_weights())
        with open(os.path.join(out, f"{name}-rank{rank}.json"), "w") as f:
            json.dump(h.history, f)
    with open(os.path.join(out, f"stats-rank{rank}.json"), "w") as f:
        json.dump(fm.distributed.collective_stats(model._engine.device), f)
