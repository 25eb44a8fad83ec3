"""Data-parallel training: one process (rank) per core group, node or GPU, each holding the whole
training set, the same model and the same seed.

    import fastmlp as fm
    fm.distributed.init()            # reads mpiexec's / srun's / torchrun's environment; no-op in a plain process
    model = fm.Sequential([...], seed=0)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", device="cpu")   # or "cuda"
    model.fit(x, y, batch_size=256, epochs=5)   # every rank: its slice of each global batch of 256

Launch CPU ranks with ``mpiexec -n 4 python train.py`` (or ``srun``), GPU ranks with the same or with
``torchrun --nproc-per-node 4 train.py``. After ``init()``, ``fit`` trains data-parallel:
``batch_size`` is the global batch; every rank shuffles with the same seed and takes its contiguous
slice of each global batch; the slices' gradients are summed over the ranks (natively, between the
backward pass and the update: MPI_Iallreduce for CPU models, ncclAllReduce on the GPU's stream
for CUDA models) with each step's non-finite flag; rank 0's weights, optimizer state and shuffling
seed are used from the start. Validation rows are split over the ranks and their sums reduced, so
every rank's callbacks decide alike; only rank 0 prints progress and runs the callbacks that write
files (ModelCheckpoint, CSVLogger). A collective that does not complete within ``timeout`` seconds
(a rank died or stopped calling fit) raises DistributedError on the ranks still waiting.
docs/distributed.md has the details.

Engines: CPU ranks use the MPI library of mpi4py (``pip install fastmlp[mpi]`` and an MPI: a
cluster's, or ``pip install mpich``), on a duplicate of MPI_COMM_WORLD, so they never mix with the
script's own MPI messages. GPU ranks use NCCL (``pip install fastmlp[nccl]``, or the copy PyTorch
brought), loaded when the first CUDA model trains; under mpiexec its communicator id travels over
MPI, under torchrun over torch.distributed's TCPStore at MASTER_ADDR:MASTER_PORT (torchrun comes
with PyTorch). Under torchrun there is no MPI, so its ranks must train on GPUs.
"""
from __future__ import annotations

import contextlib
import glob
import os
import zlib
from dataclasses import dataclass, field

import numpy as np

from . import _core

DistributedError = _core.DistributedError

# Variables that MPI launchers set in every rank's environment: MPICH/Hydra and Intel MPI (PMI_*),
# Open MPI (OMPI_*), PMIx (srun --mpi=pmix), MVAPICH.
_MPI_VARIABLES = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE")
_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass
class _World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    communicator: object = None  # _core.Communicator for fit's host-side sums (None: a plain process)
    mpi_comm: object = None      # the mpi4py communicator behind it, kept alive
    timeout: float = 600.0
    store: object = None         # torchrun: the TCPStore NCCL's ids travel through
    ids_shared: int = 0          # NCCL ids exchanged so far (the store's keys)
    device_communicators: dict = field(default_factory=dict)  # "cuda:N" -> NCCL communicator


_world: _World | None = None


def _launcher() -> str | None:
    if any(v in os.environ for v in _MPI_VARIABLES):
        return "mpi"
    if all(v in os.environ for v in _TORCHRUN_VARIABLES):
        return "torchrun"
    return None


def init(timeout: float = 600.0, force: bool = False) -> None:
    """Joins the job the launcher started: mpiexec/mpirun/srun (through mpi4py) or torchrun. In a
    process no launcher started, or a job of one rank, it does nothing and fit trains as usual.
    Calling it again does nothing. timeout: seconds a collective may wait for the other ranks
    before DistributedError. force=True sets up the collectives even for one rank, so that fit runs
    its data-parallel path alone (tests and benchmarks of that path; the results equal a plain fit's).

    Each rank's CPU threads default to the cores it can use divided by the ranks on its node
    (fm.set_num_threads overrides that)."""
    global _world
    if _world is not None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not np.isfinite(timeout) \
            or timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    timeout = float(timeout)
    launcher = _launcher()
    if launcher == "torchrun":
        _world = _torchrun_world(timeout, bool(force))
        return
    if launcher is None and not force:
        _world = _World()
        return
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError("fastmlp.distributed needs mpi4py under an MPI launcher: pip install 'fastmlp[mpi]' "
                          "(and an MPI library, e.g. pip install mpich)") from e
    world = MPI.COMM_WORLD
    if world.Get_size() == 1 and not force:
        _world = _World()
        return
    comm = world.Dup()  # fastmlp's own messages never match the script's
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    sizes = {MPI._sizeof(t) for t in (MPI.Comm, MPI.Datatype, MPI.Op, MPI.Request)}
    if len(sizes) != 1:
        raise DistributedError(f"this MPI library's handles have different sizes {sorted(sizes)}; not supported")
    def handle(obj):  # the C handle's bits as an unsigned 64-bit integer
        return MPI._handleof(obj) & 0xFFFFFFFFFFFFFFFF

    communicator = _core.mpi_communicator(
        MPI.__file__, sizes.pop(), MPI._sizeof(MPI.Status), handle(comm), handle(MPI.FLOAT), handle(MPI.DOUBLE),
        handle(MPI.SUM), comm.Get_rank(), comm.Get_size(), timeout)
    _world = _World(comm.Get_rank(), comm.Get_size(), local.Get_rank(), local.Get_size(), communicator, comm, timeout)
    local.Free()
    if "OMP_NUM_THREADS" not in os.environ:  # the node's cores shared out, not every rank using all
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        _core.set_num_threads(max(1, cores // _world.local_size))


def _torchrun_world(timeout: float, force: bool) -> _World:
    """torchrun's ranks: NCCL on cuda:LOCAL_RANK, its id sent through torch.distributed's TCPStore."""
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if size == 1 and not force:
        return _World()
    info = _core.cuda_info()
    if not info["available"] or local_rank >= info["device_count"]:
        why = info["reason"] if not info["available"] else \
            f"LOCAL_RANK {local_rank} but {info['device_count']} CUDA device(s) are visible"
        raise DistributedError(
            f"torchrun started {size} process(es): fastmlp's ranks under torchrun train on GPUs (NCCL), one per "
            f"LOCAL_RANK, and this one has none ({why}); CPU ranks communicate through MPI: launch them with "
            "mpiexec -n N (or srun)")
    world = _World(rank, size, local_rank, local_size, None, None, timeout, _torchrun_store(rank, size, timeout))
    device = f"cuda:{local_rank}"
    world.communicator = _nccl_communicator(world, device)
    world.device_communicators[device] = world.communicator
    return world


def _torchrun_store(rank: int, size: int, timeout: float):
    try:
        from datetime import timedelta

        import torch.distributed as td
    except ImportError as e:
        raise DistributedError("under torchrun, fastmlp sends NCCL's communicator id through torch.distributed's "
                               "TCPStore, and torch cannot be imported here") from e
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not addr or not port:
        raise DistributedError("torchrun's MASTER_ADDR and MASTER_PORT are not set")
    # Newer torchrun agents host the store themselves (TORCHELASTIC_USE_AGENT_STORE): every rank is a
    # client then. multi_tenant: a later torch.distributed.init_process_group shares the same server.
    hosts = rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
    store = td.TCPStore(addr, int(port), size, hosts, timedelta(seconds=timeout), wait_for_workers=False,
                        multi_tenant=True)
    return td.PrefixStore(f"fastmlp/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def _nccl_library() -> str:
    """The libnccl.so.2 to open: $FASTMLP_NCCL_LIBRARY, the nvidia-nccl wheel's (fastmlp[nccl], or
    PyTorch's dependency), else "" (the loader's search; a copy already loaded is found first)."""
    path = os.environ.get("FASTMLP_NCCL_LIBRARY")
    if path:
        return path
    try:
        import nvidia  # namespace package of NVIDIA's wheels (nvidia/nccl/lib, or nvidia/cu13/lib)
    except ImportError:
        return ""
    for root in getattr(nvidia, "__path__", []):
        found = sorted(glob.glob(os.path.join(root, "*", "lib", "libnccl.so.2")))
        if found:
            return found[0]
    return ""


def _share_id(world: _World, make) -> bytes:
    """Rank 0's `make()` (an NCCL id, 128 bytes) on every rank."""
    if world.store is not None:
        key = f"nccl-id/{world.ids_shared}"
        world.ids_shared += 1
        if world.rank == 0:
            world.store.set(key, make())
        return bytes(world.store.get(key))
    mine = np.frombuffer(make(), dtype=np.uint8) if world.rank == 0 else np.zeros(128, dtype=np.uint8)
    got = mine.astype(np.float64)
    if world.rank != 0:
        got[:] = 0.0
    world.communicator.allreduce_sum(got)  # a sum in which the other ranks add zeros: rank 0's bytes
    return got.astype(np.uint8).tobytes()


def _nccl_communicator(world: _World, device: str):
    library = _nccl_library()
    index = int(device.split(":")[1])
    # Every rank loads NCCL first, or every rank raises (over the host communicator, when there is
    # one yet): a rank without it would otherwise leave the others waiting for its id or its join.
    with agreement(world.communicator, "loading NCCL"):
        _core.nccl_library(library)
        unique_id = _core.nccl_unique_id(library) if world.rank == 0 else None
    unique_id = _share_id(world, lambda: unique_id)
    return _core.nccl_communicator(library, unique_id, world.rank, world.size, index, world.timeout)


def communicator_for(device: str):
    """The communicator that sums the gradients of a model on `device` (None when data-parallel
    training is off): the MPI one for "cpu", an NCCL one for "cuda:N", made on first use (a
    collective: every rank asks for its own GPU at the same point)."""
    w = _world
    if w is None or w.communicator is None:
        return None
    if device == "cpu":
        if w.communicator.device != "cpu":
            raise ValueError("data-parallel training of a CPU model under torchrun: its ranks communicate through "
                             "NCCL on their GPUs; compile with device='cuda', or launch CPU ranks with mpiexec")
        return w.communicator
    if device not in w.device_communicators:
        w.device_communicators[device] = _nccl_communicator(w, device)
    return w.device_communicators[device]


def is_initialized() -> bool:
    return _world is not None


def _current() -> _World:
    return _world if _world is not None else _World()


def rank() -> int:
    """This process's rank (0 without a launcher or before init())."""
    return _current().rank


def world_size() -> int:
    """The number of ranks (1 without a launcher or before init())."""
    return _current().size


def local_rank() -> int:
    """This process's rank among those on its node (cuda:LOCAL_RANK would be its GPU)."""
    return _current().local_rank


def barrier() -> None:
    """Waits until every rank has called barrier() (within the timeout)."""
    if _active() is not None:
        _active().allreduce_sum(np.zeros(1))


def collective_stats(device: str = "cpu") -> dict:
    """Collectives run so far by this rank's communicator for `device` ("cpu": MPI and fit's
    host-side sums; "cuda:N": that GPU's NCCL one): {"calls", "bytes", "seconds"} (seconds spent
    waiting for them, the other ranks included). An NCCL communicator counts the sums it queued:
    a step the GPU replays from its capture sums again uncounted. Zeros when data-parallel training
    is off."""
    w = _world
    comm = None if w is None or w.communicator is None else \
        (w.communicator if device == "cpu" else w.device_communicators.get(device))
    return dict(comm.stats) if comm is not None else {"calls": 0, "bytes": 0, "seconds": 0.0}


def shutdown() -> None:
    """Leaves the job: later fits train on this process alone. init() may be called again."""
    global _world
    if _world is not None:
        _world.device_communicators.clear()
        _world.communicator = None
        if _world.mpi_comm is not None:
            _world.mpi_comm.Free()
    _world = None


def _active():
    """The native communicator for fit's host-side sums when data-parallel training is on (init() in
    a job of > 1 rank, or with force=True)."""
    w = _world
    return w.communicator if w is not None else None


# ---- collectives fit uses (all ranks call them in the same order)

def broadcast(values: np.ndarray) -> np.ndarray:
    """Rank 0's values on every rank, exactly (a sum in which the other ranks add zeros)."""
    comm = _active()
    buf = np.array(values, dtype=np.float64, copy=True).reshape(-1)
    if comm is None:
        return buf
    if comm.rank != 0:
        buf[:] = 0.0
    comm.allreduce_sum(buf)
    return buf


def _broadcast_uint64(value: int) -> int:
    """Rank 0's unsigned 64-bit integer, sent as four exact 16-bit parts."""
    parts = np.array([(int(value) >> (16 * i)) & 0xFFFF for i in range(4)], dtype=np.float64)
    got = broadcast(parts)
    return sum(int(p) << (16 * i) for i, p in enumerate(got))


def check_same(what: str, values) -> None:
    """Raises ValueError on every rank when some rank's values differ from rank 0's (what names them)."""
    comm = _active()
    if comm is None:
        return
    mine = np.asarray(values, dtype=np.float64).reshape(-1)
    root = broadcast(mine)
    differs = np.array([0.0 if np.array_equal(mine, root) else 1.0])
    comm.allreduce_sum(differs)
    if differs[0]:
        raise ValueError(f"data-parallel fit: {what} differ between ranks ({int(differs[0])} of {comm.size} ranks "
                         "differ from rank 0); every rank must call fit with the same data shape and arguments")


@contextlib.contextmanager
def agreement(communicator, what: str):
    """Every rank leaves the block, or every rank raises: a rank whose block raised tells the others
    (one small all-reduce), which then raise ValueError instead of waiting at their next collective."""
    if communicator is None:
        yield
        return
    failed = np.array([0.0])
    try:
        yield
    except Exception:
        failed[0] = 1.0
        communicator.allreduce_sum(failed)
        raise
    communicator.allreduce_sum(failed)
    if failed[0]:
        raise ValueError(f"data-parallel fit: {int(failed[0])} other rank(s) of {communicator.size} failed {what} "
                         "(their own error says why)")


def model_fingerprint(model) -> list:
    """Numbers that must agree between the ranks' models: parameters, Dropout layers, and a checksum of
    the layer kinds, optimizer (with its learning rate), loss, metrics, dtype and device kind (each rank
    has its own GPU)."""
    args = model._compile_args
    further = [repr(m[0] if isinstance(m, tuple) else m) for m in args.get("further_metrics") or []]
    text = repr(([type(layer).__name__ for layer in model.layers], model.optimizer.describe(), repr(args["loss"]),
                 args["metric_key"], further, str(np.dtype(args["dtype"])), model._engine.device.split(":")[0]))
    crc = zlib.crc32(text.encode())
    dropouts = sum(type(layer).__name__ == "Dropout" for layer in model.layers)
    return [model.count_params(), dropouts, crc & 0xFFFF, crc >> 16]


def shuffle_seed(seed):
    """Rank 0's shuffling seed for an epoch (None: no shuffling) on every rank."""
    if _active() is None or seed is None:
        return seed
    return _broadcast_uint64(seed)


def sync_model(model) -> None:
    """Rank 0's weights, optimizer state and step on every rank (the start of a data-parallel fit)."""
    engine = model._engine
    # Dropout masks are drawn from each layer's seed (fixed when the engine was built): they must agree.
    seeds = [layer.native(model.seed, i)["seed"] for i, layer in enumerate(model.layers) if type(layer).__name__ == "Dropout"]
    check_same("the Dropout layers' seeds (build the model with the same seed on every rank, e.g. "
               "Sequential(..., seed=0))", [(s >> (16 * k)) & 0xFFFF for s in seeds for k in range(4)])
    params = engine.get_params()
    state = np.asarray(engine.get_state())
    shape = np.array([params.size, state.size, engine.step], dtype=np.float64)
    check_same("the models (parameter counts or optimizer state sizes)", shape[:2])
    got = broadcast(np.concatenate([params.astype(np.float64), state.astype(np.float64).reshape(-1),
                                    [float(engine.step)]]))
    engine.set_params(got[:params.size].astype(params.dtype))
    if state.size:
        engine.set_state(got[params.size:params.size + state.size].astype(state.dtype))
    engine.step = int(got[-1])


def part(rows: int) -> slice:
    """This rank's contiguous share of `rows` rows (the validation rows each rank evaluates)."""
    comm = _active()
    if comm is None:
        return slice(0, rows)
    r, n = comm.rank, comm.size
    return slice(rows * r // n, rows * (r + 1) // n)


__all__ = ["init", "is_initialized", "rank", "world_size", "local_rank", "barrier", "collective_stats", "shutdown",
           "communicator_for", "DistributedError"]
