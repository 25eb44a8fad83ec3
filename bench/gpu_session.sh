#!/usr/bin/env bash
# One device-machine session: build with CUDA, run the GPU tests, a compute-sanitizer check and
# the benchmarks, writing logs under $OUT. Usage (on the GPU machine, from the repo root):
#   FASTMLP_DATA=.devdata/mnist bash bench/gpu_session.sh [quick|benches|compile]
# MNIST does not travel with the checkout: first `mkdir -p .devdata && cp -r ../shared/data/mnist
# .devdata/` here (git-ignored) and pass `carry: [".devdata"]` to the device tool.
# quick: build and tests only; benches: build, sanitizer and benchmarks without the tests (the
# two fit the device tool's 10-minute calls); compile: everything and PyTorch's torch.compile timings;
# verify: build, each backend operation against the reference (tests/test_backend_ops.py), the GPU
# test files, the NCCL ranks (tests/test_distributed_cuda.py) and a sanitizer run of the newest
# kernels (a short session); nccl-bench: build and bench_distributed.py's GPU ranks only.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
git log --oneline -1 | tee -a "$OUT/gpu.txt"
t0=$(date +%s)
python3 -m pip install --no-build-isolation --no-deps -C cmake.define.CMAKE_CUDA_ARCHITECTURES=90-real . \
  > "$OUT/build.log" 2>&1 || { tail -60 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
export FASTMLP_DATA="$PWD/${FASTMLP_DATA:-.devdata/mnist}"
cd /tmp  # import the installed package, not the source tree
python3 -c "import fastmlp, json; print(json.dumps(fastmlp.build_info(), indent=1))"
REPO=$OLDPWD
if [ "${1:-}" = "nccl-bench" ]; then
  timeout 300 python3 "$REPO/bench/bench_distributed.py" --device cuda --ranks 1,2 --batch 128,1024 --rows 60000 \
    --epochs 4 --no-torch --data "$FASTMLP_DATA" > "$OUT/bench_nccl.json" 2> "$OUT/bench_nccl.err"
  tail -5 "$OUT/bench_nccl.err"
  exit 0
fi
if [ "${1:-}" = "verify" ]; then
  # The GPU-relevant test files only, then compute-sanitizer on a fit that uses this session's
  # new kernels (weighted loss, Poisson/Huber, GELU through an Activation op, the metrics'
  # atomics, hvp, predict's output_activation): a short device session's check of what was
  # written without a GPU.
  # Each backend operation against the reference first, without -x: its failures name the kernels.
  timeout 120 python3 -m pytest -q -ra "$REPO/tests/test_backend_ops.py" -k cuda 2>&1 | tee "$OUT/ops.log" | tail -15
  timeout 300 python3 -m pytest -q -ra -x "$REPO/tests/test_cuda.py" "$REPO/tests/test_cuda_layers.py" \
    "$REPO/tests/test_cuda_workflow.py" "$REPO/tests/test_interop.py" 2>&1 | tee "$OUT/tests.log" | tail -25
  # GPU ranks over NCCL (torchrun): one rank forced through the data-parallel path, two on one GPU.
  timeout 240 python3 -m pytest -q -ra "$REPO/tests/test_distributed_cuda.py" 2>&1 | tee "$OUT/nccl.log" | tail -15
  timeout 200 compute-sanitizer --tool memcheck python3 -c "
import numpy as np, fastmlp as fm
rng = np.random.default_rng(0); x = rng.normal(size=(300, 20)).astype(np.float32); y = rng.integers(0, 3, 300)
w = rng.uniform(0, 2, 300).astype(np.float32)
m = fm.Sequential([fm.Dense(32, 'gelu', input_dim=20), fm.Dropout(0.1), fm.Dense(16, 'silu'), fm.Dense(3, 'softmax')], seed=0)
m.compile('adam', 'sparse_categorical_crossentropy', metrics=['accuracy', 'auc', 'precision', fm.metrics.TopKCategoricalAccuracy(2)], device='cuda')
m.fit(x, y, sample_weight=w, epochs=2, batch_size=7, verbose=0); print('memcheck weighted/gelu/metrics', m.evaluate(x, y, sample_weight=w))
r = fm.Sequential([fm.Dense(8, 'softplus', input_dim=20), fm.Dense(2, 'exponential')], seed=1)
r.compile('sgd', 'poisson', device='cuda'); r.fit(x, rng.poisson(1.0, (300, 2)).astype(np.float32), epochs=1, verbose=0)
h = fm.Sequential([fm.Dense(8, 'tanh', input_dim=20), fm.Dense(2)], seed=2)
h.compile('sgd', fm.losses.Huber(0.5), device='cuda'); h.fit(x, rng.normal(size=(300, 2)).astype(np.float32), epochs=1, verbose=0)
print('memcheck hvp', np.abs(fm.hvp(h, x[:50], rng.normal(size=(50, 2)).astype(np.float32), [np.ones_like(a) for a in h.get_weights()])[0]).max())
print('memcheck output_activation (softmax, exponential)', m.predict(x, batch_size=37).sum(axis=1)[:3], r.predict(x[:5]).ravel()[:4])
del m, r, h; import gc; gc.collect()
" > "$OUT/sanitizer.log" 2>&1; tail -4 "$OUT/sanitizer.log"
  exit 0
fi
if [ "${1:-}" != "benches" ]; then
  python3 -m pytest -q -ra "$REPO/tests" 2>&1 | tee "$OUT/tests.log" | tail -30
fi
if [ "${1:-}" != "quick" ]; then
  compute-sanitizer --tool memcheck --leak-check full python3 -c "
import numpy as np, fastmlp as fm
x = np.random.default_rng(0).normal(size=(300, 20)).astype(np.float32); y = (x[:, 0] > 0).astype(int)
m = fm.Sequential([fm.Dense(32, activation='relu', input_dim=20), fm.Dense(2, activation='softmax')], seed=0)
m.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'], device='cuda')
m.fit(x, y, epochs=2, batch_size=7, verbose=0); print('sanitized fit', m.evaluate(x, y))
s = fm.Sequential([fm.Dense(32, activation='relu', input_dim=20), fm.Dense(2, activation='softmax')], seed=0)
s.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'], device='cuda')
s.data_budget = 64 * 21 * 4  # streamed in chunks, with a batch hook that evaluates mid-epoch
probe = fm.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: s.evaluate(x[:50], y[:50]), batch_interval=5)
s.fit(s.upload(x, y), epochs=2, batch_size=7, verbose=0, callbacks=[probe]); print('sanitized streamed fit', s.evaluate(x, y))
L = fm.Sequential([fm.Dropout(0.1, input_dim=20), fm.Dense(37), fm.BatchNormalization(), fm.Activation('tanh'),
                   fm.Dropout(0.3), fm.Dense(33, activation='relu'), fm.LayerNormalization(), fm.Dense(2, activation='softmax')], seed=0)
L.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'], device='cuda')
L.fit(x, y, epochs=2, batch_size=7, verbose=0); print('sanitized layers fit', L.evaluate(x, y), L.compute_gradients(x, y)[2].shape)
del m, s, L; import gc; gc.collect()  # free device memory before exit so the leak check is meaningful
" > "$OUT/sanitizer.log" 2>&1; tail -5 "$OUT/sanitizer.log"
  # Shared-memory races in our own kernels (the normalization reductions above all).
  compute-sanitizer --tool racecheck python3 -c "
import numpy as np, fastmlp as fm
x = np.random.default_rng(1).normal(size=(300, 70)).astype(np.float32); y = (x[:, 0] > 0).astype(int)
L = fm.Sequential([fm.Dense(37, input_dim=70), fm.BatchNormalization(), fm.Activation('relu'), fm.Dropout(0.2),
                   fm.Dense(65), fm.LayerNormalization(), fm.Dense(2, activation='softmax')], seed=0)
L.compile(optimizer='adam', loss='sparse_categorical_crossentropy', device='cuda')
L.fit(x, y, epochs=1, batch_size=64, verbose=0); print('racecheck layers fit', L.evaluate(x, y))
" > "$OUT/racecheck.log" 2>&1; tail -3 "$OUT/racecheck.log"
  python3 "$REPO/bench/bench_mnist.py" --device cuda --config all --precision float32 --epochs 5 \
    --data "$FASTMLP_DATA" > "$OUT/bench_fp32.json" 2> "$OUT/bench_fp32.err"
  tail -3 "$OUT/bench_fp32.err"
  python3 "$REPO/bench/bench_mnist.py" --device cuda --config wide4096,mlp512 --precision tf32,bf16 --epochs 5 \
    --data "$FASTMLP_DATA" > "$OUT/bench_lowp.json" 2> "$OUT/bench_lowp.err"
  tail -3 "$OUT/bench_lowp.err"
  # A/B of the ReLU-mask epilogues (DRELU_BGRAD in the backward GEMM): the ReLU configs again
  # with our own ReLU-backward kernel, to compare with bench_fp32.json.
  FASTMLP_CUDA_RELU_MASK=0 python3 "$REPO/bench/bench_mnist.py" --device cuda --config mlp512,small_b1024,wide4096 \
    --precision float32 --epochs 5 --no-torch --data "$FASTMLP_DATA" > "$OUT/bench_no_relu_mask.json" \
    2> "$OUT/bench_no_relu_mask.err"
  tail -3 "$OUT/bench_no_relu_mask.err"
  # Where one steady-state 784-512-512-10 b128 step spends its time: the kernels of one step
  # (graph nodes profiled one by one, after about 80 warm-up steps) and their durations.
  timeout 300 ncu --graph-profiling node --launch-skip 1200 --launch-count 40 --csv --print-units base \
    --metrics gpu__time_duration.sum python3 -c "
import numpy as np, fastmlp as fm
rng = np.random.default_rng(0); x = rng.normal(size=(128 * 60, 784)).astype(np.float32); y = rng.integers(0, 10, 128 * 60)
m = fm.Sequential([fm.Dense(512, activation='relu', input_dim=784), fm.Dense(512, activation='relu'),
                   fm.Dense(10, activation='softmax')], seed=0)
m.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'], device='cuda')
m.fit(x, y, epochs=2, batch_size=128, verbose=0)
" > "$OUT/ncu_step.csv" 2> "$OUT/ncu_step.err"
  python3 - "$OUT/ncu_step.csv" <<'PY' || tail -5 "$OUT/ncu_step.err"
import csv, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
head, body = rows[0], rows[1:]
name, value = head.index("Kernel Name"), head.index("Metric Value")
starts = [i for i, r in enumerate(body) if "gather_batch_kernel" in r[name]]  # each step begins with it
step = body[starts[0]:starts[1]] if len(starts) > 1 else body
us = [float(r[value].replace(",", "")) / 1000 for r in step]  # ns, maybe with thousands separators
for t, r in zip(us, step):
    print(f"{t:8.1f} us  {r[name][:100]}")
print(f"{sum(us):8.1f} us: one step's kernels ({len(step)}), back to back")
PY
  # The training set streamed from host memory in 64 MiB chunks (issue 3, item 3) vs resident.
  python3 "$REPO/bench/bench_mnist.py" --device cuda --config mlp512 --epochs 5 --no-torch --data-budget 67108864 \
    --data "$FASTMLP_DATA" > "$OUT/bench_streamed.json" 2> "$OUT/bench_streamed.err"
  tail -1 "$OUT/bench_streamed.err"
fi
if [ "${1:-}" = "compile" ]; then  # PyTorch's torch.compile column of issue 3's table (slow: compiles per config)
  python3 "$REPO/bench/bench_mnist.py" --device cuda --config all --precision float32 --epochs 5 \
    --torch-compile reduce-overhead --data "$FASTMLP_DATA" > "$OUT/bench_compile.json" 2> "$OUT/bench_compile.err"
  tail -4 "$OUT/bench_compile.err"
fi
