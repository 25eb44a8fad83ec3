"""The training loop behind Sequential.fit: validation, the epochs with their callbacks and
progress, batch hooks between groups of native steps, and the non-finite loss check. The steps
themselves run natively (Engine.train_epoch / train_batches), returning here once per epoch or
per group of batches."""
from __future__ import annotations

import time

import numpy as np

from . import _core
from ._interop import cuda_array
from ._validation import as_sample_weight, class_weights_to_sample_weights, non_negative_int, positive_int
from .callbacks import CallbackList, History
from .resident import ResidentDataset

_EVAL_BATCH = 4096  # rows per forward pass in evaluate/predict; results do not depend on it


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or Inf; the weights of the last finite step are kept."""


def metric_logs(model, result: dict, prefix="") -> dict:
    logs = {prefix + "loss": float(result["loss"])}
    key = model._compile_args["metric_key"]
    if key:
        logs[prefix + key] = float(result["metric"])
    further = model._compile_args.get("further_metrics")
    if further and result.get("metric_slots") is not None:
        from .metrics import values

        logs.update(values(further, result["metric_slots"], int(result.get("rows") or 0), prefix))
    return logs


def _row_weights(model, x, y, sample_weight, class_weight):
    """fit's sample_weight times class_weight's weight of each row's class, validated (None when
    neither is given). Returns (x, y, weights): host x and y come back validated."""
    if sample_weight is None and class_weight is None:
        return x, y, None
    if isinstance(x, ResidentDataset):
        raise ValueError("sample_weight and class_weight cannot be applied to a ResidentDataset; upload the weights "
                         "with it: model.upload(x, y, sample_weight=...)")
    if cuda_array(x):
        if class_weight is not None:
            raise ValueError("class_weight needs host arrays; pass sample_weight computed from the classes instead")
        return x, y, sample_weight
    x, y = model._xy(x, y)
    w = None if sample_weight is None else as_sample_weight(sample_weight, "sample_weight", x.shape[0], model._dtype)
    if class_weight is not None:
        loss = model._compile_args["loss"]
        cw = class_weights_to_sample_weights(class_weight, y, model._output_dim(), loss.takes_class_ids, model._dtype)
        w = cw if w is None else np.ascontiguousarray(w * cw, dtype=model._dtype)
    return x, y, w


def fit(model, x, y, batch_size, epochs, verbose, callbacks, validation_split, validation_data, shuffle,
         initial_epoch, sample_weight=None, class_weight=None, steps_per_epoch=None, validation_steps=None,
         sharded=False):
    from . import chunked, distributed
    from .optimizers import FullBatchOptimizer

    full_batch = isinstance(model.optimizer, FullBatchOptimizer)
    communicator = distributed._active()  # data-parallel training (fastmlp.distributed.init())
    split_validation = False  # data-parallel: the validation rows are split over the ranks
    # Under fastmlp.distributed every rank passes this point or all raise: an error here on one rank
    # (bad data, an empty share) is not left for the others to wait out at their next collective.
    with distributed.agreement(communicator, "preparing fit"):
        if not isinstance(sharded, (bool, np.bool_)):
            raise ValueError(f"sharded must be True or False, got {sharded!r}")
        sharded = bool(sharded) and communicator is not None  # one rank's shard is all the rows
        if batch_size is not None:
            batch_size = positive_int(batch_size, "batch_size")
        epochs = non_negative_int(epochs, "epochs")
        initial_epoch = non_negative_int(initial_epoch, "initial_epoch")
        if verbose not in (0, 1, 2, "auto", True, False):
            raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
        verbose = 1 if verbose in ("auto", True) else int(verbose)
        if communicator is not None:
            if full_batch:
                raise ValueError(f"data-parallel fit trains with first-order optimizers; {type(model.optimizer).__name__} "
                                 "takes all rows at once")
            if chunked.is_chunk_source(x) or chunked.is_chunk_source(validation_data):
                raise ValueError("data-parallel fit takes arrays (every rank holding all rows), not a data source")
            if communicator.rank != 0:
                verbose = 0  # rank 0 reports for all
        if isinstance(validation_split, bool) \
                or not isinstance(validation_split, (int, float, np.integer, np.floating)) \
                or not 0.0 <= validation_split < 1.0:  # NumPy scalars such as np.float32(0.2) too
            raise ValueError(f"validation_split must be in [0, 1), got {validation_split!r}")
        # A data source (generator, Sequence, DataLoader) yields its chunks, targets included (fastmlp.chunked).
        source = val_source = None
        if chunked.is_chunk_source(x):
            if y is not None or sample_weight is not None or class_weight is not None or validation_split:
                raise ValueError("a data source yields (x, y[, sample_weight]) chunks itself: leave y, sample_weight, "
                                 "class_weight and validation_split out")
            if full_batch:
                raise ValueError(f"{type(model.optimizer).__name__} takes all rows at once: pass arrays, not a data source")
            source = chunked.ChunkSource(x, chunked.check_steps(steps_per_epoch, "steps_per_epoch"), "training")
        elif steps_per_epoch is not None:
            raise ValueError("steps_per_epoch goes with a data source (a generator, Sequence or DataLoader), not arrays")
        if chunked.is_chunk_source(validation_data):
            val_source = chunked.ChunkSource(validation_data, chunked.check_steps(validation_steps, "validation_steps"),
                                             "validation")
            validation_data = None
        elif validation_steps is not None:
            raise ValueError("validation_steps goes with a validation data source, not arrays")
        if y is None and source is None and not isinstance(x, ResidentDataset):
            raise ValueError("fit got no targets (y is None): call fit(x, y), or pass x = model.upload(x, y), or a "
                             "data source yielding (x, y) chunks")
        if isinstance(x, ResidentDataset) and not x.has_targets:
            raise ValueError("the ResidentDataset passed to fit has no targets; upload it with model.upload(x, y)")
        if validation_data is not None and not isinstance(validation_data, ResidentDataset):
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
                raise ValueError("validation_data must be a tuple (x_val, y_val), (x_val, y_val, val_sample_weight) or a "
                                 "ResidentDataset")
        x, y, weights = _row_weights(model, x, y, sample_weight, class_weight)
        if validation_split > 0.0:
            if cuda_array(x) or isinstance(x, ResidentDataset):
                raise ValueError("validation_split needs host arrays; pass validation_data with GPU arrays or "
                                 "resident data")
            x, y = model._xy(x, y)
            if validation_data is None:
                # Keras convention: the last fraction of the samples, taken before any shuffling.
                n_val = int(round(x.shape[0] * validation_split))
                if n_val == 0 or n_val == x.shape[0]:
                    raise ValueError(f"validation_split={validation_split} leaves no training or validation "
                                     f"samples out of {x.shape[0]}")
                validation_data = (x[-n_val:], y[-n_val:]) + (() if weights is None else (weights[-n_val:],))
                x, y = x[:-n_val], y[:-n_val]
                weights = None if weights is None else weights[:-n_val]
        if source is None:
            train_data, n_train = model._data(x, y, sample_weight=weights)
        else:  # built from the first chunk; batch_size None: each chunk is one step, as Keras takes a batch
            train_data, n_train = None, 0
        if batch_size is None and source is None:
            batch_size = n_train if full_batch else 32
        host_batches = None  # a full-batch method on mini-batches: each batch of fit is one of its steps
        if full_batch and batch_size < n_train:
            if isinstance(x, ResidentDataset) or cuda_array(x):
                raise ValueError(f"{type(model.optimizer).__name__} on batches smaller than the training set "
                                 f"({batch_size} < {n_train}) needs host arrays; leave batch_size=None for all rows")
            host_batches = model._xy(x, y) + (weights,)
        val_data = None
        if isinstance(validation_data, ResidentDataset):
            if not validation_data.has_targets:
                raise ValueError("the validation ResidentDataset has no targets; upload it with model.upload(x, y)")
            val_data, _ = model._data(validation_data, None, "validation data")
        elif validation_data is not None:
            val_weights = validation_data[2] if len(validation_data) == 3 else None
            vx, vy = validation_data[0], validation_data[1]
            if communicator is not None and not sharded:  # each rank evaluates its share; the sums are reduced
                vx, vy = model._xy(vx, vy, "validation x", "validation y")
                val_rows = vx.shape[0]
                split_validation = val_rows >= communicator.size  # else every rank evaluates all of them
                if split_validation:
                    share = distributed.part(val_rows)
                    vx, vy = vx[share], vy[share]
                    val_weights = None if val_weights is None else np.asarray(val_weights)[share]
            val_data, _ = model._data(vx, vy, "validation x", "validation y", sample_weight=val_weights)
    engine = model._engine
    shard_total = -1  # a sharded epoch's rows over all ranks
    # Validation sums reduced over the ranks' parts (sharded: each rank's own rows; else each rank's
    # share of the rows); otherwise every rank evaluates all rows and takes rank 0's logs.
    val_across_ranks = communicator is not None and val_data is not None and (sharded or split_validation)
    if communicator is not None:
        # Collectives in one fixed order on every rank: first what must agree (fixed length), then
        # the shards' totals, then rank 0's model.
        distributed.check_same("fit's arguments (sharded, batch_size, epochs, initial_epoch, shuffle, validation) or "
                               "the models (layers, parameters, optimizer, loss, metrics)",
                               [sharded, batch_size, epochs, initial_epoch, bool(shuffle), val_data is not None,
                                val_across_ranks] + distributed.model_fingerprint(model))
        if sharded:  # each rank's rows are its own: their totals make the epoch
            counts = np.array([n_train, val_data.rows if val_data is not None else 0], dtype=np.float64)
            communicator.allreduce_sum(counts)
            shard_total = int(counts[0])
        else:
            distributed.check_same("the training rows or validation rows",
                                   [n_train, val_rows if val_data is not None and not isinstance(
                                       validation_data, ResidentDataset) else -1])
        # Every rank's model is on the same kind of device (checked above): each asks for its own.
        engine_communicator = distributed.communicator_for(engine.device)
        distributed.sync_model(model)
        callbacks = [cb for cb in callbacks or [] if communicator.rank == 0 or not getattr(cb, "writes_files", False)]
    history = History()
    if source is not None:  # steps are chunks (their count, when the source knows it)
        try:
            chunks_per_epoch = len(source)
        except TypeError:
            chunks_per_epoch = None
        params = {"epochs": epochs, "batch_size": batch_size, "samples": None, "verbose": verbose,
                  "steps": chunks_per_epoch}
        if any(getattr(cb, "batch_interval", None) for cb in callbacks or []):
            raise ValueError("callbacks with batch_interval need array data; a data source reports once per epoch")
    else:
        n_epoch = shard_total if sharded else n_train  # the rows of an epoch, over all ranks
        params = {"epochs": epochs, "batch_size": batch_size, "samples": n_epoch, "verbose": verbose,
                  "steps": -(-n_epoch // batch_size)}
    from .progress import EpochProgress

    if source is not None:
        progress = EpochProgress(verbose, epochs, chunks_per_epoch or 1, batch_size=1)
    else:
        progress = EpochProgress(verbose, epochs, n_epoch, batch_size=batch_size)
    bar_hook = [progress.hook()] if progress.mode == "bar" and source is None else []
    cbs = CallbackList([history] + list(callbacks or []) + bar_hook, model, params)
    model.history = history
    model.stop_training = False
    if communicator is not None:
        engine.set_communicator(engine_communicator)
    try:
        cbs.on_train_begin()
        # The optimizer as it will run: PyTorch's defaults, and Keras's where they differ.
        progress.header(f"Optimizer: {model.optimizer.describe()}")
        for epoch in range(initial_epoch, epochs):
            cbs.on_epoch_begin(epoch)
            progress.begin(epoch)
            seed = _core.derive_seed(model.seed, 1 + model._epochs_seen) if shuffle else None
            if communicator is not None:
                seed = distributed.shuffle_seed(seed)  # rank 0's: one global order
                if sharded and seed is not None:  # each rank shuffles its own shard
                    seed = _core.derive_seed(seed, 1 + communicator.rank)
            started = time.perf_counter()
            if source is not None:
                result = chunked.train_epoch(model, source, batch_size, seed)
                engine = model._engine  # built by the first chunk
            elif host_batches is not None:
                result = full_batch_steps(model, engine, host_batches, batch_size, seed)
            elif full_batch:  # one step of the full-batch method (shuffling changes nothing)
                before = _further_metrics_before_step(model, engine, train_data)
                result = model.optimizer.step(engine, train_data)
                model._lbfgs_result = result  # LBFGS's iterations and evaluations, for the estimators
                result = dict(result, **before)
            else:
                result = train_epoch(model, engine, train_data, seed, batch_size, params["steps"], cbs, shard_total,
                                     communicator)
            seconds = time.perf_counter() - started
            model._epochs_seen += 1
            if result["nonfinite"] and not cbs.handles_nonfinite:  # e.g. TerminateOnNaN takes over
                raise NonFiniteLossError(
                    f"the training loss or a weight update became NaN or Inf during epoch {epoch + 1}; training "
                    "stopped with finite weights: no update was applied after the first non-finite loss, and "
                    "no weight was given a non-finite value (try a lower learning rate)")
            logs = metric_logs(model, result)
            if val_data is not None:
                val_logs = metric_logs(model, engine.evaluate(val_data, _EVAL_BATCH, val_across_ranks), "val_")
                if communicator is not None and not val_across_ranks:  # rank 0's, so every rank decides alike
                    val_logs = dict(zip(val_logs, (float(v) for v in distributed.broadcast(list(val_logs.values())))))
                logs.update(val_logs)
            elif val_source is not None:
                logs.update(metric_logs(model, chunked.evaluate(model, val_source, _EVAL_BATCH), "val_"))
            progress.end(epoch, logs, seconds)
            cbs.on_epoch_end(epoch, logs)
            if communicator is not None:  # a stop asked for on any rank stops every rank
                stop = np.array([1.0 if model.stop_training else 0.0])
                communicator.allreduce_sum(stop)
                model.stop_training = bool(stop[0])
            if model.stop_training:
                break
    finally:
        if engine is not None:
            engine.end_epoch()  # an epoch left unfinished by an exception (or Ctrl-C) is abandoned
            if communicator is not None:
                engine.set_communicator(None)
        progress.close()
    cbs.on_train_end()
    return history

def full_batch_steps(model, engine, xy, batch_size, seed):
    """One epoch of a full-batch method (LBFGS, Newton, HessianFree) taking one step per batch, as
    a PyTorch user calls optimizer.step(closure) on each batch: rows in shuffled order (seed, or
    as given), each batch uploaded and stepped natively. Returns fit's epoch result: the mean over
    rows of each batch's loss and metric before its step."""
    x, y, w = xy
    n = x.shape[0]
    order = np.arange(n) if seed is None else np.asarray(_core.shuffled_indices(n, seed))
    loss = metric = 0.0
    slots = None
    for start in range(0, n, batch_size):
        rows = order[start:start + batch_size]
        data, _ = model._data(x[rows], y[rows], sample_weight=None if w is None else w[rows])
        before = _further_metrics_before_step(model, engine, data)
        r = model.optimizer.step(engine, data)
        if r["nonfinite"]:
            return {"loss": float("nan"), "metric": float("nan"), "nonfinite": True}
        loss += r["loss"] * len(rows)
        metric += r["metric"] * len(rows)
        if before:
            slots = before["metric_slots"] if slots is None else slots + before["metric_slots"]
    out = {"loss": loss / n, "metric": metric / n, "nonfinite": False}
    return out if slots is None else dict(out, metric_slots=slots, rows=n)


def _further_metrics_before_step(model, engine, data) -> dict:
    """The further metrics (fastmlp.metrics) of the weights a full-batch step starts from, as the
    loss it reports is: one inference pass, only when the model has such metrics."""
    if not model._compile_args.get("further_metrics"):
        return {}
    r = engine.evaluate(data, _EVAL_BATCH)
    return {"metric_slots": np.asarray(r["metric_slots"], dtype=np.float64), "rows": int(r["rows"])}


def train_epoch(model, engine, data, seed, batch_size, steps, cbs, shard_total=-1, communicator=None):
    """One epoch natively. Without batch callbacks it is one native call; with them the native
    loop runs up to the next batch where a callback is due, calls it and goes on (the result is
    bit-identical either way). A callback with batch_interval N sees the epoch's batches in
    groups of N (the last may be shorter): on_train_batch_begin(first batch of the group) before
    and on_train_batch_end(last batch of the group, running logs) after."""
    batch_cbs = cbs.batch_callbacks
    if communicator is None and (not batch_cbs or steps == 0):
        return engine.train_epoch(data, seed, batch_size, shard_total)
    engine.begin_epoch(data, seed, batch_size, shard_total)
    done, result = 0, None
    while done < steps:
        # Only a batch hook that sets stop_training ends the epoch early (Keras); a flag set
        # elsewhere (before the epoch, another thread) acts at the epoch's end, as without hooks.
        requests = model._stop_requests
        for cb in batch_cbs:
            if done % cb.batch_interval == 0:
                cb.on_train_batch_begin(done, {})
        stopped_by_hook = model._stop_requests != requests
        stop = min(min((done // cb.batch_interval + 1) * cb.batch_interval for cb in batch_cbs), steps) \
            if batch_cbs else steps
        if communicator is not None:
            # Data-parallel: every rank trains rank 0's groups of batches (its progress bar and
            # file-writing callbacks are its own), each group ending in the same collectives.
            from . import distributed

            stop = int(distributed.broadcast([stop])[0])
        result = engine.train_batches(data, stop - done)
        done = stop
        logs = metric_logs(model, result)
        requests = model._stop_requests
        for cb in batch_cbs:
            if done % cb.batch_interval == 0 or done == steps:
                cb.on_train_batch_end(done - 1, dict(logs))
        stop_now = model.stop_training and (stopped_by_hook or model._stop_requests != requests)
        if communicator is not None:  # a hook's stop on any rank ends the epoch on every rank
            flag = np.array([1.0 if stop_now else 0.0])
            communicator.allreduce_sum(flag)
            if flag[0]:
                model.stop_training = stop_now = True
        if stop_now:
            break
    return result
