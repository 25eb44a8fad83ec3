"""One rank of the torchrun test in tests/test_distributed.py (started with torch.distributed.run):
python torchrun_worker.py OUT_DIR. Sends NCCL-sized ids from rank 0 through the TCPStore at
MASTER_ADDR:MASTER_PORT as fastmlp.distributed.init does, then calls init() itself, which on a
machine without GPUs must refuse clearly. (The GPU ranks' tests run tests/distributed_worker.py
under torchrun.)"""
import json
import os
import sys

import fastmlp as fm
from fastmlp import distributed

out = sys.argv[1]
rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
world = distributed._World(rank, size, store=distributed._torchrun_store(rank, size, 30.0))
ids = [distributed._share_id(world, lambda k=k: bytes([k]) * 128) for k in (7, 9)]  # two ids, in order
try:
    fm.distributed.init(timeout=30.0)
    refusal = None
except fm.distributed.DistributedError as e:
    refusal = str(e)
with open(os.path.join(out, f"torchrun-rank{rank}.json"), "w") as f:
    json.dump({"ids": [i.hex() for i in ids], "refusal": refusal, "cuda": fm.cuda_is_available()}, f)
