"""CPU speed in the situations of issue 11: fastmlp vs PyTorch (and JAX when importable).

    python bench/bench_cpu.py                               # every case, about 4-5 minutes on 2 cores
    python bench/bench_cpu.py --quick                       # smoke run: a tenth of the rows (~3 min)
    python bench/bench_cpu.py --case import_order,contention --threads 2
    python bench/bench_cpu.py --case contention --competitors 2 --rows 5000
    python bench/bench_cpu.py --case memory --mnist ../shared/data/mnist
    python bench/bench_cpu.py --case small_batches --repeats 3   # 3 interleaved rounds, their median
    PYTHONPATH=python /tmp/torchenv/bin/python bench/bench_cpu.py   # an interpreter with torch (and jax)

Cases (--case, comma list, default all):
  import_order   784-512-512-10 ReLU, Adam, b128: fastmlp with `import torch` first, with it after,
                 without torch; and PyTorch itself
  contention     the same while one busy pure-Python process (--competitors) competes for the cores
  small_batches  784-100-10 sigmoid, SGD 0.1, batch 1/16/100, with and without L2(1e-4): us/row
                 (MNIST with --mnist: most pixels are zero, which plain SGD at batch 1 skips)
  width_sweep    784-h-h-10 ReLU, Adam: h 64..2048 at b128, h=512 at b8..2048; s/epoch, GFLOP/s
  jax            the 784-512-512-10 net as one jit-compiled lax.scan per epoch (skipped without jax)
  memory         peak RSS (VmHWM) of fitting 784-512-512-10 on 3 x --rows rows (60,000 by default,
                 MNIST-sized) against data + model + Adam state + one batch's workspace
  denormals      784-512-512-10 ReLU, Adam, b16, 5+ epochs (MNIST with --mnist): fastmlp with
                 subnormals flushed (its default) and kept (set_flush_denormals(False)); PyTorch by
                 default and with torch.set_flush_denormal(True). Adam's first moments of weights
                 whose gradients turn zero (rare pixels, dead units) decay through the subnormal
                 range after several hundred steps.
  activations    784-512-512-10, Adam, b128 with hidden ReLU, sigmoid, tanh, GELU, SiLU, ELU, softplus, SELU
  predict        predict of all rows: 784-512-512-10 (softmax over 10 classes) and 256-512-1000
                 (softmax over 1000 classes, a quarter of the rows); fastmlp's predict against
                 PyTorch's inference_mode forward and softmax, batch = all rows, median of 5 calls

Every measurement runs in a fresh subprocess (this script with --worker SPEC) so that import
order, thread pools and peak RSS of one do not leak into the next. Random data (uniform
features, random labels) unless --mnist; data is generated or loaded before timing starts.
Times are the median of epochs 2..N (the first includes warm-up: allocation, BLAS buffers,
JAX compilation); fastmlp is timed by an on_epoch_begin/on_epoch_end callback inside one fit
call, so the upload of the data is not timed. PyTorch runs eagerly, data in tensors, foreach
optimizers, a randperm and index gather per epoch as a DataLoader-free user would write it.

Prints one JSON document on stdout; progress goes to stderr.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CASES = ("import_order", "contention", "small_batches", "width_sweep", "jax", "memory", "denormals", "activations",
         "predict", "dropout")
FEATURES, CLASSES = 784, 10
MLP512 = {"hidden": [512, 512], "act": "relu", "opt": ["adam", 1e-3], "batch": 128}
KERAS_DEMO = {"hidden": [100], "act": "sigmoid", "opt": ["sgd", 0.1]}
REG_L2 = 1e-4
SWEEP_WIDTHS, SWEEP_BATCHES = (64, 256, 1024, 2048), (8, 32, 128, 512, 2048)
FLOP_FORMULA = ("training FLOPs per row = 6 x W - 2 x W1, W = all Dense kernel weights, W1 = the first "
                "layer's: per weight 2 forward, 2 for the weight gradient and 2 for the input gradient, which "
                "the first layer does not need; biases, activations, loss and optimizer not counted")
BUSY_LOOP = "while True: pass"


# ----------------------------------------------------------------------------- shared helpers
def have(module: str) -> bool:
    """Whether `module` is installed, without importing it (importing torch costs seconds)."""
    return importlib.util.find_spec(module) is not None


def version_of(dist: str):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def make_data(rows: int, seed: int):
    """Random rows: the timings do not depend on the values (no data-dependent branches)."""
    rng = np.random.default_rng(seed)
    x = rng.random((rows, FEATURES), dtype=np.float32)  # float32 directly: no float64 temporary
    return x, rng.integers(0, CLASSES, rows).astype(np.int64)


MNIST_TRAIN_ROWS = 60000


def mnist_rows(folder: str, rows: int):
    """The first `rows` MNIST training rows as float32 in [0, 1] and int64 labels, read from the
    IDX files with NumPy alone (the PyTorch workers use it too, and must not import fastmlp),
    scaled in place so that loading holds one float copy (the memory case measures the peak)."""
    import gzip

    def idx(name, header):
        path = Path(folder) / name
        raw = gzip.open(path).read() if path.exists() else (Path(folder) / name[:-3]).read_bytes()
        return np.frombuffer(raw, np.uint8, offset=header)

    if rows > MNIST_TRAIN_ROWS:  # the timings divide by the rows asked for
        raise ValueError(f"{rows} rows asked for, MNIST's training set has {MNIST_TRAIN_ROWS}")
    x = idx("train-images-idx3-ubyte.gz", 16).reshape(-1, FEATURES)[:rows].astype(np.float32)
    x *= np.float32(1 / 255)
    return x, idx("train-labels-idx1-ubyte.gz", 8)[:rows].astype(np.int64)


def training_rows(spec):
    """Training rows as float32 / int64: MNIST's first spec["rows"] when the spec names a folder,
    else random rows."""
    return mnist_rows(spec["mnist"], spec["rows"]) if spec.get("mnist") else make_data(spec["rows"], spec["seed"])


def layer_sizes(hidden):
    sizes = [FEATURES, *hidden, CLASSES]
    return list(zip(sizes[:-1], sizes[1:]))


def kernel_weights(hidden) -> int:
    return sum(fi * fo for fi, fo in layer_sizes(hidden))


def param_count(hidden) -> int:
    return sum(fi * fo + fo for fi, fo in layer_sizes(hidden))


def timing(times, rows):
    """Epoch times and their steady-state median (epochs 2..N; all of them if there is only one)."""
    steady = times[1:] if len(times) > 1 else times
    med = statistics.median(steady)
    return {"epoch_seconds": [round(t, 5) for t in times], "median_epoch_seconds": med,
            "us_per_row": med / rows * 1e6, "rows": rows}


def median_of(result):
    return result.get("median_epoch_seconds") if isinstance(result, dict) else None


def ratio(num, den):
    """num / den of two worker results' medians, None when either is missing (skipped, failed)."""
    a, b = median_of(num), median_of(den)
    return a / b if a and b else None


# ----------------------------------------------------------------------------- workers
# Each runs in its own interpreter, imports what its spec says in the order it says, and returns
# a dict that the parent receives as one JSON line.

def epoch_timer(fm):
    """fit callback recording wall-clock seconds per epoch (the engine's epoch ends synchronized)."""
    cb = type("Timer", (fm.callbacks.Callback,), {
        "on_epoch_begin": lambda s, e, logs=None: setattr(s, "t0", time.perf_counter()),
        "on_epoch_end": lambda s, e, logs=None: s.times.append(time.perf_counter() - s.t0),
    })()
    cb.times = []
    return cb


def fm_model(fm, spec):
    reg = fm.regularizers.L2(spec["l2"]) if spec.get("l2") else None
    layers = []
    for i, h in enumerate(spec["hidden"]):
        layers.append(fm.Dense(h, activation=spec["act"], input_dim=FEATURES if i == 0 else None, kernel_regularizer=reg))
        if spec.get("dropout"):
            layers.append(fm.Dropout(spec["dropout"]))
    model = fm.Sequential(layers + [fm.Dense(CLASSES, activation="softmax", kernel_regularizer=reg)],
                          seed=spec["seed"])
    name, lr = spec["opt"]
    opt = fm.optimizers.Adam(lr=lr) if name == "adam" else fm.optimizers.SGD(lr=lr)
    # No metric: PyTorch's loop computes none either.
    model.compile(optimizer=opt, loss="sparse_categorical_crossentropy", device="cpu")
    return model


def worker_fastmlp(spec):
    # The import order is the point of the import_order case: nothing above imported torch or fastmlp.
    if spec["imports"] == "torch_first":
        import torch  # noqa: F401
        import fastmlp as fm
    elif spec["imports"] == "fastmlp_first":
        import fastmlp as fm
        import torch  # noqa: F401
    else:
        import fastmlp as fm
    fm.set_num_threads(spec["threads"])
    if spec.get("flush_denormals") is not None:
        fm.set_flush_denormals(spec["flush_denormals"])
    x, y = training_rows(spec)
    model, timer = fm_model(fm, spec), epoch_timer(fm)
    model.fit(x, y, batch_size=spec["batch"], epochs=spec["epochs"], verbose=0, callbacks=[timer])
    return {**timing(timer.times, spec["rows"]), "torch_loaded": "torch" in sys.modules}


def worker_torch(spec):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(spec["threads"])
    if spec.get("flush_denormals"):
        torch.set_flush_denormal(True)
    torch.manual_seed(spec["seed"])
    acts = {"relu": torch.nn.ReLU, "sigmoid": torch.nn.Sigmoid, "tanh": torch.nn.Tanh, "silu": torch.nn.SiLU,
            "elu": torch.nn.ELU, "gelu": torch.nn.GELU,  # GELU's default is the exact erf form, as fastmlp's
            "softplus": torch.nn.Softplus, "selu": torch.nn.SELU}  # Softplus: linear above 20, same cost
    mods = []
    for fi, fo in layer_sizes(spec["hidden"]):
        mods += [torch.nn.Linear(fi, fo), acts[spec["act"]]()]
        if spec.get("dropout") and fo != CLASSES:
            mods.append(torch.nn.Dropout(spec["dropout"]))
    model = torch.nn.Sequential(*mods[:-1])  # the softmax is inside cross_entropy
    kernels = [m.weight for m in model if isinstance(m, torch.nn.Linear)]
    name, lr = spec["opt"]
    opt = (torch.optim.Adam(model.parameters(), lr=lr, foreach=True) if name == "adam"
           else torch.optim.SGD(model.parameters(), lr=lr, foreach=True))
    l2 = spec.get("l2", 0.0)
    x, y = (torch.from_numpy(a) for a in training_rows(spec))

    def step(xb, yb):
        loss = F.cross_entropy(model(xb), yb)
        if l2:  # Keras L2(l): l * sum(W**2) added to the loss, kernels only (gradient 2*l*W)
            loss = loss + l2 * sum((w * w).sum() for w in kernels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    n, bs, times = x.shape[0], spec["batch"], []
    for _ in range(spec["epochs"]):
        t0 = time.perf_counter()
        perm = torch.randperm(n)
        for i in range(0, n, bs):  # batch 1 is per-example SGD, as the user would write it
            idx = perm[i:i + bs]
            step(x[idx], y[idx])
        times.append(time.perf_counter() - t0)
    return timing(times, n)


PREDICT_CALLS = 5


def predict_inputs(spec):
    return np.random.default_rng(spec["seed"]).random((spec["rows"], spec["features"]), dtype=np.float32)


def worker_fastmlp_predict(spec):
    import fastmlp as fm

    fm.set_num_threads(spec["threads"])
    x = predict_inputs(spec)
    sizes = [spec["features"], *spec["hidden"]]
    layers = [fm.Dense(h, "relu", input_dim=sizes[0] if i == 0 else None) for i, h in enumerate(spec["hidden"])]
    model = fm.Sequential(layers + [fm.Dense(spec["classes"], "softmax")], seed=spec["seed"])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", device="cpu")
    times = []
    for _ in range(PREDICT_CALLS + 1):  # the first call allocates the workspace
        t0 = time.perf_counter()
        out = model.predict(x, batch_size=len(x))
        times.append(time.perf_counter() - t0)
    assert out.shape == (len(x), spec["classes"])
    return timing(times, len(x))


def worker_torch_predict(spec):
    import torch

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    x = predict_inputs(spec)
    mods, fan_in = [], spec["features"]
    for h in spec["hidden"]:
        mods += [torch.nn.Linear(fan_in, h), torch.nn.ReLU()]
        fan_in = h
    model = torch.nn.Sequential(*mods, torch.nn.Linear(fan_in, spec["classes"])).eval()
    times = []
    for _ in range(PREDICT_CALLS + 1):
        t0 = time.perf_counter()
        with torch.inference_mode():  # NumPy in, NumPy out, as fastmlp's predict
            out = torch.softmax(model(torch.from_numpy(x)), dim=1).numpy()
        times.append(time.perf_counter() - t0)
    assert out.shape == (len(x), spec["classes"])
    return timing(times, len(x))


def worker_jax(spec):
    try:
        import jax
        import jax.numpy as jnp
    except Exception as e:  # noqa: BLE001 - a broken jaxlib raises more than ImportError
        return {"skipped": f"jax not importable ({type(e).__name__}: {e})"}
    from jax import lax

    b1, b2, eps, lr = 0.9, 0.999, 1e-8, spec["opt"][1]
    key = jax.random.PRNGKey(spec["seed"])
    params = []
    for fi, fo in layer_sizes(spec["hidden"]):  # Glorot uniform, as fastmlp's default
        key, sub = jax.random.split(key)
        lim = (6.0 / (fi + fo)) ** 0.5
        params.append((jax.random.uniform(sub, (fi, fo), jnp.float32, -lim, lim), jnp.zeros(fo, jnp.float32)))

    def loss_fn(p, xb, yb):
        h = xb
        for w, b in p[:-1]:
            h = jax.nn.relu(h @ w + b)
        logp = jax.nn.log_softmax(h @ p[-1][0] + p[-1][1])
        return -jnp.mean(jnp.take_along_axis(logp, yb[:, None], axis=1))

    def adam_step(carry, batch):  # hand-written Adam: optax is not a dependency
        p, m, v, t = carry
        g = jax.grad(loss_fn)(p, *batch)
        t = t + 1.0
        m = jax.tree_util.tree_map(lambda m_, g_: b1 * m_ + (1 - b1) * g_, m, g)
        v = jax.tree_util.tree_map(lambda v_, g_: b2 * v_ + (1 - b2) * g_ * g_, v, g)
        step = lr * jnp.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        p = jax.tree_util.tree_map(lambda p_, m_, v_: p_ - step * m_ / (jnp.sqrt(v_) + eps), p, m, v)
        return (p, m, v, t), None

    n, bs = spec["rows"], spec["batch"]
    nb = n // bs  # lax.scan needs equal batches: the partial last batch is dropped

    @jax.jit
    def run_epoch(carry, x, y, k):
        perm = jax.random.permutation(k, n)[:nb * bs]
        xs, ys = x[perm].reshape(nb, bs, FEATURES), y[perm].reshape(nb, bs)
        return lax.scan(adam_step, carry, (xs, ys))[0]

    xn, yn = make_data(n, spec["seed"])
    x, y = jnp.asarray(xn), jnp.asarray(yn.astype(np.int32))  # int32: jax's default without x64
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    carry, times = (params, zeros, zeros, jnp.float32(0.0)), []
    for _ in range(spec["epochs"]):
        key, sub = jax.random.split(key)
        t0 = time.perf_counter()
        carry = jax.block_until_ready(run_epoch(carry, x, y, sub))
        times.append(time.perf_counter() - t0)
    return {**timing(times, n), "rows_trained_per_epoch": nb * bs, "first_epoch_includes_compile": True,
            "threads": "XLA's own pool (all cores); --threads does not apply"}


def rss_status(field: str):
    """VmRSS / VmHWM of this process in KiB from /proc (None off Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Resets VmHWM to the current RSS (Linux >= 4.0), so the peak of the fit alone can be read."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss():
    """Peak RSS in KiB: VmHWM, which starts afresh at exec. ru_maxrss (also reported) does not: on
    Linux a child started by fork+exec inherits the parent's peak, here the parent's import of
    fastmlp; and reset_peak_rss lowers it too, so it is the peak since the reset, if one was made."""
    return {"peak_rss_kib": rss_status("VmHWM"), "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


def worker_memory(spec):
    """Peak RSS of one epoch. fit_arrays: fit(x, y) with the host arrays alive, as most users call
    it. upload_then_free: upload, drop the host arrays, then fit; the fit-only peak is read after
    the drop, so it shows what training itself holds."""
    import fastmlp as fm

    fm.set_num_threads(spec["threads"])
    x, y = training_rows(spec)
    data_bytes, rows = x.nbytes + y.nbytes, x.shape[0]
    model = fm_model(fm, spec)
    train = (x, y)
    if spec["mode"] == "upload_then_free":
        train = (model.upload(x, y),)
        del x, y
    rss_before_fit, peak_before_fit = rss_status("VmRSS"), rss_status("VmHWM")
    fit_peak_known = reset_peak_rss()
    model.fit(*train, batch_size=spec["batch"], epochs=1, verbose=0)
    out = {"rows": rows, "data_bytes": data_bytes, **peak_rss(), "rss_before_fit_kib": rss_before_fit,
           "peak_rss_during_fit_kib": rss_status("VmHWM") if fit_peak_known else None}
    if fit_peak_known:  # VmHWM was reset before fit: the process's peak is the larger of the two
        out["peak_rss_kib"] = max(peak_before_fit, out["peak_rss_kib"])
    return out


def worker_baseline(spec):
    import fastmlp  # noqa: F401

    return peak_rss()


WORKERS = {"fastmlp": worker_fastmlp, "torch": worker_torch, "jax": worker_jax,
           "memory": worker_memory, "baseline": worker_baseline,
           "fastmlp_predict": worker_fastmlp_predict, "torch_predict": worker_torch_predict}


# ----------------------------------------------------------------------------- parent side
class Runner:
    """Starts workers, optionally next to busy processes, and remembers results: the contention
    and jax cases reuse the quiet runs of import_order instead of measuring them again."""

    def __init__(self, args):
        self.args, self.memo = args, {}

    def spec(self, task, **kw):
        return {"task": task, "threads": self.args.threads, "seed": self.args.seed,
                "epochs": self.args.epochs, **kw}

    def __call__(self, spec, busy=0):
        """The worker's result for `spec`, measured next to `busy` busy-looping processes."""
        key = json.dumps(spec, sort_keys=True) + str(busy)
        if key not in self.memo:
            self.memo[key] = self._run(spec, busy)
            busy_note = f"busy x{busy} " if busy else ""
            print(f"[bench_cpu {time.strftime('%H:%M:%S')}] {busy_note}{json.dumps(spec)} -> "
                  f"{json.dumps(self.memo[key])}", file=sys.stderr, flush=True)
        return self.memo[key]

    def interleaved(self, specs, busy=None):
        """The results of `specs` (each next to busy[i] busy processes, default none), each measured
        --repeats times in rounds (every spec once per round, in order), so that a slow phase of a
        shared host falls on all of them alike. With more than one round, a spec's
        median_epoch_seconds is the median of its successful rounds' medians; fields other than
        the timings (torch_loaded) are kept when every round agrees, and failed rounds are listed."""
        busy = list(busy) if busy is not None else [0] * len(specs)
        rounds = self.args.repeats
        if rounds <= 1:
            return [self(s, b) for s, b in zip(specs, busy)]
        runs = [[self({**s, "round": r}, b) for s, b in zip(specs, busy)] for r in range(rounds)]
        timing_keys = {"epoch_seconds", "median_epoch_seconds", "us_per_row", "rows"}
        out = []
        for i, (s, b) in enumerate(zip(specs, busy)):
            mine = [rnd[i] for rnd in runs]
            good = [m for m in mine if median_of(m) is not None]
            if not good:  # skipped or failed in every round: report the first
                out.append(mine[0])
                continue
            meds = [median_of(m) for m in good]
            med, rows = statistics.median(meds), good[0]["rows"]
            combined = {"median_epoch_seconds": med, "us_per_row": med / rows * 1e6, "rows": rows,
                        "round_medians": [round(m, 5) for m in meds],
                        "epoch_seconds_by_round": [m["epoch_seconds"] for m in good]}
            for k in good[0].keys() - timing_keys:
                values = [m.get(k) for m in good]
                combined[k] = values[0] if all(v == values[0] for v in values) else values
            if len(good) < len(mine):
                combined["failed_rounds"] = [m for m in mine if median_of(m) is None]
            out.append(combined)
            self.memo[json.dumps(s, sort_keys=True) + str(b)] = combined
        return out

    def _run(self, spec, busy):
        if spec["task"] in ("torch", "torch_predict") and not have("torch"):
            return {"skipped": "torch not importable"}
        if spec["task"] == "fastmlp" and spec.get("imports") != "no_torch" and not have("torch"):
            return {"skipped": "torch not importable"}
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
        hogs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(busy)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=self.args.timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"worker ran over {self.args.timeout} s"}
        finally:
            for hog in hogs:
                hog.kill()
                hog.wait()
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            return {"error": f"worker exited {proc.returncode}: {proc.stderr.strip()[-600:]}"}
        return json.loads(lines[-1])


def mlp512_specs(run, rows):
    """The 784-512-512-10 Adam b128 runs of import_order: fastmlp without torch, and PyTorch."""
    return run.spec("fastmlp", imports="no_torch", rows=rows, **MLP512), run.spec("torch", rows=rows, **MLP512)


def case_import_order(run, args):
    fm_quiet, torch_spec = mlp512_specs(run, args.rows)
    out = {"model": "784-512-512-10 ReLU, Adam(1e-3), batch 128", "rows": args.rows}
    names = {"fastmlp_torch_imported_first": "torch_first", "fastmlp_fastmlp_imported_first": "fastmlp_first",
             "fastmlp_no_torch": "no_torch"}
    results = run.interleaved([{**fm_quiet, "imports": imports} for imports in names.values()] + [torch_spec])
    out.update(zip([*names, "pytorch"], results))
    out["ratio_torch_over_fastmlp"] = {k: ratio(out["pytorch"], out[k]) for k in list(out) if k.startswith("fastmlp_")}
    return out


def case_contention(run, args):
    fm_spec, torch_spec = mlp512_specs(run, args.rows)
    n = args.competitors
    out = {"model": "784-512-512-10 ReLU, Adam(1e-3), batch 128", "rows": args.rows,
           "competitors": f"{n} subprocess(es) running `{BUSY_LOOP}`, started before and killed after each run"}
    # The quiet runs are import_order's when it ran with one round; with --repeats they are
    # measured again, in the same rounds as the busy ones.
    out["fastmlp"], out["pytorch"], fm_quiet, torch_quiet = run.interleaved([fm_spec, torch_spec] * 2,
                                                                            busy=[n, n, 0, 0])
    out["ratio_torch_over_fastmlp"] = ratio(out["pytorch"], out["fastmlp"])
    quiet = {"fastmlp": fm_quiet, "pytorch": torch_quiet}
    out["quiet_median_epoch_seconds"] = {k: median_of(v) for k, v in quiet.items()}
    out["slowdown_under_contention"] = {k: ratio(out[k], quiet[k]) for k in quiet}
    return out


def small_batch_rows(args, batch):
    """3,000 rows at batch 1 and 10,000 otherwise at the default --rows 20,000, scaled with --rows."""
    return max(batch, round(args.rows * (0.15 if batch == 1 else 0.5)))


def case_small_batches(run, args):
    mnist = args.mnist if args.mnist and Path(args.mnist).exists() else None
    data = {"mnist": mnist} if mnist else {}
    rows_out = []
    for batch in (1, 16, 100):
        n = small_batch_rows(args, batch)
        row = {"batch": batch, "rows": n}
        keys, specs = [], []
        for fw, task in (("fastmlp", "fastmlp"), ("pytorch", "torch")):
            for reg, l2 in (("plain", 0.0), ("l2", REG_L2)):
                kw = {"imports": "no_torch"} if task == "fastmlp" else {}
                # One more epoch than --epochs so that the median covers --epochs steady epochs.
                spec = run.spec(task, rows=n, batch=batch, l2=l2, **KERAS_DEMO, **data, **kw)
                keys.append(f"{fw}_{reg}")
                specs.append({**spec, "epochs": args.epochs + 1})
        row.update(zip(keys, run.interleaved(specs)))
        for fw in ("fastmlp", "pytorch"):
            row[f"{fw}_us_per_row"] = {reg: row[f"{fw}_{reg}"].get("us_per_row") for reg in ("plain", "l2")}
            row[f"{fw}_regularizer_cost"] = ratio(row[f"{fw}_l2"], row[f"{fw}_plain"])
        row["ratio_torch_over_fastmlp"] = {reg: ratio(row[f"pytorch_{reg}"], row[f"fastmlp_{reg}"])
                                           for reg in ("plain", "l2")}
        rows_out.append(row)
    return {"model": f"784-100-10 sigmoid, softmax, sparse CCE, SGD(0.1), L2({REG_L2}) on both kernels or none",
            "epochs": args.epochs + 1,
            "data": f"the first MNIST training rows from {mnist}" if mnist else f"random rows of {FEATURES} float32",
            "rows": rows_out}


def train_flops_per_row(hidden) -> int:
    """FLOP_FORMULA: the GEMM work of one training row."""
    return 6 * kernel_weights(hidden) - 2 * FEATURES * hidden[0]


def gflops(result, hidden):
    med = median_of(result)
    return train_flops_per_row(hidden) * result["rows"] / med / 1e9 if med else None


def case_width_sweep(run, args):
    n = max(2048, args.rows // 2)  # at least one full batch of the widest sweep point
    points = [(h, 128) for h in SWEEP_WIDTHS] + [(512, b) for b in SWEEP_BATCHES]
    out = []
    for h, batch in points:
        cfg = {**MLP512, "hidden": [h, h], "batch": batch}
        fm_r, th_r = run.interleaved([run.spec("fastmlp", imports="no_torch", rows=n, **cfg),
                                      run.spec("torch", rows=n, **cfg)])
        out.append({"hidden": h, "batch": batch, "fastmlp_s": median_of(fm_r), "pytorch_s": median_of(th_r),
                    "ratio_torch_over_fastmlp": ratio(th_r, fm_r), "fastmlp_gflops": gflops(fm_r, [h, h]),
                    "pytorch_gflops": gflops(th_r, [h, h]),
                    "fastmlp": fm_r, "pytorch": th_r})
    return {"model": "784-h-h-10 ReLU, Adam(1e-3)", "rows": n, "flop_formula": FLOP_FORMULA, "points": out}


def case_jax(run, args):
    if not have("jax"):
        return {"skipped": "jax not importable"}
    result, fm_r = run.interleaved([run.spec("jax", rows=args.rows, **MLP512), mlp512_specs(run, args.rows)[0]])
    if "skipped" in result:
        return result
    return {"model": "784-512-512-10 ReLU, Adam(1e-3), batch 128, one jit-compiled lax.scan per epoch",
            "jax": result, "fastmlp_median_epoch_seconds": median_of(fm_r),
            "ratio_jax_over_fastmlp": ratio(result, fm_r)}


def memory_floor(result, hidden, batch):
    params = param_count(hidden)
    parts = {"data_bytes": result["data_bytes"], "model_bytes": params * 4, "adam_state_bytes": 2 * params * 4,
             # one batch's activations and their gradients, every layer including the input
             "workspace_bytes": batch * (FEATURES + sum(hidden) + CLASSES) * 4 * 2}
    return parts, sum(parts.values())


def case_memory(run, args):
    mnist = args.mnist if args.mnist and Path(args.mnist).exists() else None
    rows = min(3 * args.rows, MNIST_TRAIN_ROWS) if mnist else 3 * args.rows
    base = run(run.spec("baseline"))
    out = {"model": "784-512-512-10 ReLU, Adam(1e-3), batch 128, one epoch",
           "data": (f"the first {rows} MNIST training rows from {mnist}" if mnist
                    else f"random {rows} x {FEATURES} float32"),
           "baseline_rss_kib": base.get("peak_rss_kib"), "target_ratio": 1.5,
           "ratio_definition": "(peak RSS - baseline RSS of `import numpy, fastmlp`) / (data + model + Adam state + "
                               "workspace); fit_ratio: the same with the peak of the fit call alone"}
    for mode in ("fit_arrays", "upload_then_free"):
        r = run(run.spec("memory", mode=mode, rows=rows, mnist=mnist, **MLP512))
        if "error" not in r and base.get("peak_rss_kib"):
            parts, floor = memory_floor(r, MLP512["hidden"], MLP512["batch"])
            excess = {"ratio": r["peak_rss_kib"], "fit_ratio": r["peak_rss_during_fit_kib"]}
            r.update(parts, floor_bytes=floor, **{k: (v - base["peak_rss_kib"]) * 1024 / floor if v else None
                                                  for k, v in excess.items()})
        out[mode] = r
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


# Variables that change which kernels OpenBLAS runs or how threads behave. Some machines set
# OPENBLAS_CORETYPE for every process (older OpenBLAS builds miscompute on their CPUs); on an
# AVX-512 machine OPENBLAS_CORETYPE=Haswell made the 784-512-512-10 step 1.6x slower, so a
# figure means little without them.
KERNEL_ENVIRONMENT = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                      "OMP_WAIT_POLICY", "MKL_NUM_THREADS")


def kernel_environment() -> dict:
    return {name: os.environ[name] for name in KERNEL_ENVIRONMENT if name in os.environ}


def machine():
    import fastmlp as fm  # the parent only describes the build; measurements happen in workers

    return {"node": platform.node(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "platform": platform.platform(), "python": platform.python_version(), "numpy": np.__version__,
            "fastmlp": getattr(fm, "__version__", None), "fastmlp_path": str(Path(fm.__file__).parent),
            "fastmlp_build_type": fm.build_info()["build_type"], "fastmlp_blas": fm.build_info()["blas"],
            "environment": kernel_environment(),
            "torch": version_of("torch") if have("torch") else None,
            "jax": version_of("jax") if have("jax") else None, "git": git_describe()}


def git_describe():
    """Commit of the checkout this script sits in, and whether it has uncommitted changes."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"],
                                capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip() != ""
        return {"commit": commit or None, "uncommitted_changes": dirty}
    except OSError:
        return None


def case_denormals(run, args):
    n, epochs = max(16, args.rows // 2), max(5, args.epochs)
    mnist = args.mnist if args.mnist and Path(args.mnist).exists() else None
    if mnist:
        n = min(n, MNIST_TRAIN_ROWS)
    cfg = {**MLP512, "batch": 16, "epochs": epochs, **({"mnist": mnist} if mnist else {})}
    out = {"model": "784-512-512-10 ReLU, Adam(1e-3), batch 16", "rows": n, "epochs": epochs,
           "data": f"the first {n} MNIST training rows from {mnist}" if mnist else f"random {n} x {FEATURES} float32"}
    names, specs = [], []
    for name, task, flush in (("fastmlp_flushed", "fastmlp", None), ("fastmlp_ieee", "fastmlp", False),
                              ("pytorch", "torch", None), ("pytorch_flushed", "torch", True)):
        kw = {"imports": "no_torch"} if task == "fastmlp" else {}
        spec = run.spec(task, rows=n, **cfg, **kw)
        names.append(name)
        specs.append(spec if flush is None else {**spec, "flush_denormals": flush})
    out.update(zip(names, run.interleaved(specs)))
    out["slowdown_without_flush"] = {"fastmlp": ratio(out["fastmlp_ieee"], out["fastmlp_flushed"]),
                                     "pytorch": ratio(out["pytorch"], out["pytorch_flushed"])}
    out["ratio_torch_over_fastmlp"] = {"defaults": ratio(out["pytorch"], out["fastmlp_flushed"]),
                                       "both_flushed": ratio(out["pytorch_flushed"], out["fastmlp_flushed"])}
    return out


ACTIVATIONS = ("relu", "sigmoid", "tanh", "gelu", "silu", "elu", "softplus", "selu")


def case_activations(run, args):
    n = max(128, args.rows // 2)
    out = {"model": "784-h-h-10 with h = 512 and the hidden activation below, Adam(1e-3), batch 128", "rows": n}
    keys, specs = [], []
    for act in ACTIVATIONS:
        cfg = {**MLP512, "act": act}
        keys += [f"fastmlp_{act}", f"pytorch_{act}"]
        specs += [run.spec("fastmlp", imports="no_torch", rows=n, **cfg), run.spec("torch", rows=n, **cfg)]
    out.update(zip(keys, run.interleaved(specs)))
    out["ratio_torch_over_fastmlp"] = {a: ratio(out[f"pytorch_{a}"], out[f"fastmlp_{a}"]) for a in ACTIVATIONS}
    out["cost_over_relu"] = {fw: {a: ratio(out[f"{fw}_{a}"], out[f"{fw}_relu"]) for a in ACTIVATIONS}
                             for fw in ("fastmlp", "pytorch")}
    return out


def case_predict(run, args):
    models = (("784-512-512-10", {"features": FEATURES, "hidden": [512, 512], "classes": CLASSES}, args.rows),
              ("256-512-1000", {"features": 256, "hidden": [512], "classes": 1000}, max(10, args.rows // 4)))
    out = {"method": f"seconds per predict of all rows at once (median of calls 2..{PREDICT_CALLS + 1}); "
                     "PyTorch: inference_mode forward and softmax, NumPy in and out"}
    for name, shape, n in models:
        fm_r, torch_r = run.interleaved([run.spec("fastmlp_predict", rows=n, **shape),
                                         run.spec("torch_predict", rows=n, **shape)])
        out[name] = {"rows": n, "fastmlp": fm_r, "pytorch": torch_r, "ratio_torch_over_fastmlp": ratio(torch_r, fm_r)}
    return out


def case_dropout(run, args):
    """Keras's mnist_mlp shape: Dropout(0.2) after each hidden layer, against the same net without."""
    n = max(128, args.rows // 2)
    out = {"model": "784-512-Dropout(0.2)-512-Dropout(0.2)-10 ReLU, Adam(1e-3), batch 128, and the same without "
                    "Dropout", "rows": n}
    keys = ["fastmlp_plain", "fastmlp_dropout", "pytorch_plain", "pytorch_dropout"]
    specs = [run.spec("fastmlp", imports="no_torch", rows=n, **MLP512),
             run.spec("fastmlp", imports="no_torch", rows=n, dropout=0.2, **MLP512),
             run.spec("torch", rows=n, **MLP512), run.spec("torch", rows=n, dropout=0.2, **MLP512)]
    out.update(zip(keys, run.interleaved(specs)))
    out["ratio_torch_over_fastmlp"] = {k: ratio(out[f"pytorch_{k}"], out[f"fastmlp_{k}"]) for k in ("plain", "dropout")}
    out["dropout_cost"] = {fw: ratio(out[f"{fw}_dropout"], out[f"{fw}_plain"]) for fw in ("fastmlp", "pytorch")}
    return out


CASE_FUNCS = {"import_order": case_import_order, "contention": case_contention, "small_batches": case_small_batches,
              "width_sweep": case_width_sweep, "jax": case_jax, "memory": case_memory, "denormals": case_denormals,
              "activations": case_activations, "predict": case_predict, "dropout": case_dropout}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", default="all", help=f"comma list of {', '.join(CASES)}, or 'all'")
    p.add_argument("--rows", type=int, default=None, help="rows of the 784-512-512-10 cases (default 20000; "
                   "the other cases scale from it)")
    p.add_argument("--quick", action="store_true", help="smoke run: --rows 2000 unless given")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run; the median is over epochs 2..N")
    p.add_argument("--repeats", type=int, default=1, help="rounds of the runs compared with each other "
                   "(fastmlp and PyTorch, with and without L2, ...), interleaved; the median of the rounds")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--competitors", type=int, default=1, help="busy processes in the contention case")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mnist", default=None, help="MNIST folder for the small_batches, memory and denormals cases "
                   "(random data otherwise)")
    p.add_argument("--timeout", type=int, default=900, help="seconds one worker may run")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.rows = args.rows or (2000 if args.quick else 20000)
    cases = CASES if args.case == "all" else tuple(args.case.split(","))
    unknown = set(cases) - set(CASES)
    if unknown:
        p.error(f"unknown case(s) {sorted(unknown)}; choose from {', '.join(CASES)}")
    args.cases = cases
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker is not None:
        spec = json.loads(args.worker)
        print(json.dumps(WORKERS[spec["task"]](spec)), flush=True)
        return
    started = time.perf_counter()
    report = {"benchmark": "bench/bench_cpu.py (issue 11: CPU speed)",
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": shlex.join([sys.executable, *sys.argv]), "machine": machine(), "threads": args.threads,
              "rows": args.rows, "epochs": args.epochs, "repeats": args.repeats,
              "method": "median epoch seconds over epochs 2..N, each run in a fresh subprocess (with --repeats R, "
                        "the median of R interleaved rounds); random data unless --mnist",
              "cases": {}}
    run = Runner(args)
    for case in args.cases:
        print(f"[bench_cpu] case {case}", file=sys.stderr, flush=True)
        report["cases"][case] = CASE_FUNCS[case](run, args)
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
