"""One rank of the data-parallel tests: python distributed_worker.py SCENARIO OUT_DIR. Each rank
writes what the test compares into OUT_DIR. tests/test_distributed.py starts it under mpiexec -n 2
(CPU ranks); tests/test_distributed_cuda.py under torchrun with FASTMLP_TEST_DEVICE=cuda (GPU ranks
over NCCL; ranks beyond the GPUs share them, and one rank also takes the data-parallel path)."""
import json
import os
import sys
import time

import numpy as np

import fastmlp as fm

scenario, out = sys.argv[1], sys.argv[2]
DEVICE = os.environ.get("FASTMLP_TEST_DEVICE", "cpu")
if DEVICE == "cuda":
    gpus = fm.build_info()["cuda_devices"].count("cuda:")
    os.environ["LOCAL_RANK"] = str(int(os.environ["LOCAL_RANK"]) % gpus)
# force: the scenario "alone" runs without a launcher, as a job of one rank (MPI's singleton), and
# GPU ranks take the data-parallel path even alone.
fm.distributed.init(timeout=float(os.environ.get("FASTMLP_TEST_TIMEOUT", "60")),
                    force=scenario == "alone" or DEVICE == "cuda")
rank, size = fm.distributed.rank(), fm.distributed.world_size()
sys.path.insert(0, os.path.dirname(__file__))
from distributed_cases import CASES, build, build_batchnorm, data, shard_of_slices  # noqa: E402  (the cases, shared with the single-process side)


def save(name, model, history=None):
    np.savez(os.path.join(out, f"{name}-rank{rank}.npz"), *model.get_weights())
    if history is not None:
        with open(os.path.join(out, f"{name}-rank{rank}.json"), "w") as f:
            json.dump(dict(history.history, final_lr=model.get_learning_rate()), f)


if scenario in ("equivalence", "alone"):
    for name, case in CASES.items():
        if DEVICE == "cuda" and case["dtype"] != "float32":
            continue  # the CUDA backend computes in float32
        x, y = data(case)
        # Every rank starts from other initial weights: fit must take rank 0's.
        model = build(case, seed=case.get("seed", 1) if rank == 0 else 1000 + rank, same_dropout_seed=True,
                      device=DEVICE)
        h = model.fit(x, y, batch_size=case["batch"], epochs=3, verbose=0,
                      validation_split=case.get("validation_split", 0.0))
        save(name, model, h)
    if DEVICE == "cpu":
        x, y = data(CASES["adam_float64"])
        model = build_batchnorm(seed=1)
        model.fit(x, y, batch_size=111, epochs=3, verbose=0)  # 55 and 56 rows a rank; a last batch of 2
        save("batchnorm", model)
    with open(os.path.join(out, f"{scenario}-stats-rank{rank}.json"), "w") as f:
        json.dump(fm.distributed.collective_stats(model._engine.device), f)
elif scenario == "sharded":
    # 1. Exact: each rank's shard is what its slices of an unshuffled replicated fit would take.
    case = CASES["adam_float64"]
    x, y = data(case)
    mine = shard_of_slices(len(x), case["batch"], rank, size)
    model = build(case, seed=1)
    h = model.fit(x[mine], y[mine], batch_size=case["batch"], epochs=3, verbose=0, shuffle=False, sharded=True)
    save("sharded_exact", model, h)
    # 2. Shuffled, uneven shards (600 and 401 rows) with their own validation rows.
    case = CASES["adam_float32"]
    x, y = data(case)
    part = slice(0, 600) if rank == 0 else slice(600, None)
    model = build(case, seed=1)
    h = model.fit(x[part], y[part], batch_size=64, epochs=4, verbose=0, validation_split=0.25, sharded=True)
    save("sharded_shuffled", model, h)
    # 3. Unshuffled shards of 600 and 400 rows, 10 global batches of 100 (50 rows each): epoch 2
    # starts where epoch 1 stopped in each shard (rank 0: rows 500-599 then 0-399).
    case = CASES["adam_float64"]
    x, y = data(case)
    part = slice(0, 600) if rank == 0 else slice(600, 1000)
    model = build(case, seed=1)
    model.fit(x[part], y[part], batch_size=100, epochs=2, verbose=0, shuffle=False, sharded=True)
    save("sharded_cursor", model)
elif scenario == "agreement":
    case = CASES["adam_float32"]
    x, y = data(case)
    results = {}
    # Batch-level callbacks: ModelCheckpoint(save_freq=2) runs on rank 0 only, so rank 0 trains in
    # groups of 2 batches; a hook on every rank stops the epoch on rank 1 only; verbose=2 on both.
    class StopOnRank1(fm.callbacks.Callback):
        batch_interval = 3

        def on_train_batch_end(self, batch, logs=None):
            if rank == 1 and batch >= 5:
                self.model.stop_training = True

    model = build(case, seed=1)
    h = model.fit(x, y, batch_size=100, epochs=3, verbose=2, validation_data=(x[:1], y[:1]),
                  callbacks=[fm.callbacks.ModelCheckpoint(os.path.join(out, f"batch-{rank}-{{batch}}.weights.npz"),
                                                          save_freq=2, save_weights_only=True, monitor="loss"),
                             StopOnRank1()])
    save("agreement_batches", model, h)
    # Ranks that disagree on sharded, or one rank failing before any collective: all raise at once.
    for name, kwargs in (("sharded", dict(sharded=rank == 0)), ("empty", dict())):
        xs, ys = (x[:0], y[:0]) if name == "empty" and rank == 1 else (x, y)
        started = time.monotonic()
        try:
            build(case, seed=1).fit(xs, ys, batch_size=100, epochs=1, verbose=0, **kwargs)
            results[name] = "finished"
        except ValueError as e:
            results[name] = f"ValueError after {time.monotonic() - started:.1f} s: {e}"
    with open(os.path.join(out, f"agreement-rank{rank}.json"), "w") as f:
        json.dump(results, f)
elif scenario == "nonfinite":
    x, _ = data(CASES["adam_float32"])
    y = x[:, :2].copy()
    if rank == 1:
        y[500, 1] = 1e30  # only this rank's copy: a finite target whose squared error overflows
    model = fm.Sequential([fm.Dense(8, activation="tanh", input_dim=12), fm.Dense(2)], seed=1)
    model.compile(optimizer="adam", loss="mse", device=DEVICE)
    try:
        model.fit(x, y, batch_size=110, epochs=3, verbose=0)
        result = "finished"
    except fm.NonFiniteLossError:
        result = "NonFiniteLossError"
    save("nonfinite", model)
    with open(os.path.join(out, f"nonfinite-rank{rank}.txt"), "w") as f:
        f.write(result)
elif scenario == "callbacks":
    case = CASES["sgd_momentum_float32"]
    x, y = data(case)
    model = build(case, seed=1)
    cbs = [fm.callbacks.EarlyStopping(monitor="val_loss", patience=1, min_delta=1e-3, restore_best_weights=True),
           fm.callbacks.ReduceLROnPlateau(monitor="val_loss", patience=0, factor=0.5, min_delta=1e-2),
           fm.callbacks.CSVLogger(os.path.join(out, f"log-rank{rank}.csv")),
           fm.callbacks.ModelCheckpoint(os.path.join(out, f"ckpt-rank{rank}.weights.npz"), save_weights_only=True)]
    h = model.fit(x, y, batch_size=64, epochs=40, verbose=1 if rank == 1 else 0, callbacks=cbs,
                  validation_split=0.2)
    save("callbacks", model, h)
elif scenario == "mismatch":
    case = CASES["adam_float32"]
    x, y = data(case)
    model = build(case, seed=1)
    try:
        model.fit(x, y, batch_size=case["batch"] + rank, epochs=1, verbose=0)
        result = "finished"
    except ValueError as e:
        result = str(e)
    with open(os.path.join(out, f"mismatch-rank{rank}.txt"), "w") as f:
        f.write(result)
elif scenario in ("stall", "die"):
    case = CASES["adam_float32"]
    x, y = data(case)
    model = build(case, seed=1, device=DEVICE)

    def epoch_end(epoch, logs):
        if rank == 1 and epoch == 0:
            if scenario == "die":
                os._exit(7)  # a rank lost without a word
            time.sleep(float(os.environ["FASTMLP_TEST_STALL"]))  # a rank that stops calling

    started = time.monotonic()
    try:
        model.fit(x, y, batch_size=case["batch"], epochs=3, verbose=0,
                  callbacks=[fm.callbacks.LambdaCallback(on_epoch_end=epoch_end)])
        result = "finished"
    except fm.distributed.DistributedError as e:
        result = f"DistributedError after {time.monotonic() - started:.1f} s: {e}"
    with open(os.path.join(out, f"{scenario}-rank{rank}.txt"), "w") as f:
        f.write(result)
    sys.stdout.flush()
    os._exit(3 if result != "finished" else 0)  # an MPI job with a failed collective cannot finalize
else:
    raise SystemExit(f"unknown scenario {scenario}")
