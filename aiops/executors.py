"""Executors: where a stage runs over the shards of a batch of series.

A batch is cut into shards by a stable hash of the series id (:func:`shard_of`, blake2b,
never Python's salted ``hash()``), so a series lands in the same shard in every process and on
every run with the same number of series. A stage runs once per shard with the shard's own
seed (:func:`shard_seed`) and the shard results are put back in the batch's series order.

Both executors shard the same way, so their answers are equal by construction:

* :class:`LocalExecutor` runs the shards one after another in this process (GPU if present).
* :class:`RayExecutor` runs each shard as a Ray task (``num_cpus``/``num_gpus`` each) on an
  existing cluster (``address``) or a local Ray; at most ``max_in_flight`` shards are submitted
  and not yet collected (backpressure), and a shard whose worker dies is retried by Ray up to
  ``max_retries`` times. Results come back to the caller, which alone writes the store, so a
  retried shard can never write twice.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol

import numpy as np
import pandas as pd

from aiops.errors import AiopsError, ConfigError
from aiops.types import SeriesBatch

if TYPE_CHECKING:
    from aiops.config import ExecutorConfig

logger = logging.getLogger(__name__)

#: a stage over one shard: ``task(shard_batch, shard_index) -> frame with a series_id column``
ShardTask = Callable[[SeriesBatch, int], pd.DataFrame]


class ExecutorError(AiopsError):
    """A shard could not be computed (its worker died past the retries, or the cluster is gone)."""

    def __init__(self, message: str, *, shard: int | None = None, **kw: Any):
        super().__init__(message, **kw)
        self.shard = shard


def shard_of(series_id: str, n: int) -> int:
    """The shard (0..n-1) of a series: blake2b of its id, stable across processes and runs."""
    if n < 1:
        raise ValueError(f"number of shards must be at least 1, got {n}")
    digest = hashlib.blake2b(series_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n


def shard_seed(seed: int, shard: int) -> int:
    """The model seed of a shard: the watch's seed for shard 0, offset by the shard index."""
    return int(seed) + int(shard)


def n_shards(n_series: int, shard_size: int) -> int:
    return max(1, -(-n_series // max(1, shard_size)))


def split_batch(batch: SeriesBatch, shard_size: int) -> list[tuple[int, SeriesBatch]]:
    """``(shard index, sub-batch)`` for every shard with rows, in shard order.

    Each sub-batch keeps the batch's row order, step, watch and the labels of its series. The
    number of shards is ``ceil(series / shard_size)``; shards are uneven by a few series
    because membership is by hash, which keeps a series' shard independent of the others.
    """
    ids = list(dict.fromkeys([*batch.labels, *pd.unique(batch.frame["series_id"])]))
    n = n_shards(len(ids), shard_size)
    if n == 1:
        return [(0, batch)]
    of = {sid: shard_of(sid, n) for sid in ids}
    row_shard = batch.frame["series_id"].map(of).to_numpy()
    out = []
    for k in sorted(set(of.values())):
        frame = batch.frame[row_shard == k].reset_index(drop=True)
        if frame.empty:  # only series with labels and no rows: nothing to compute
            continue
        labels = {sid: lbl for sid, lbl in batch.labels.items() if of[sid] == k}
        out.append((k, SeriesBatch(frame=frame, labels=labels, step=batch.step, watch=batch.watch)))
    return out


def merge_shards(batch: SeriesBatch, parts: list[pd.DataFrame]) -> pd.DataFrame:
    """Shard results as one frame in the batch frame's series order (rows of a series keep theirs)."""
    parts = [p for p in parts if p is not None and len(p.columns)]
    if not parts:
        return pd.DataFrame()
    if len(parts) == 1:
        return parts[0].reset_index(drop=True)
    out = pd.concat(parts, ignore_index=True)
    # the order series first appear in the batch's frame: what a single stage call returns
    rank = {sid: i for i, sid in enumerate(pd.unique(batch.frame["series_id"]))}
    keys = out["series_id"].map(rank).fillna(len(rank)).to_numpy()
    return out.iloc[np.argsort(keys, kind="stable")].reset_index(drop=True)


class Executor(Protocol):
    """Runs a stage over every shard of a batch and returns the merged result."""

    name: str
    shard_size: int

    def map_shards(self, task: ShardTask, batch: SeriesBatch) -> pd.DataFrame: ...


@dataclass
class LocalExecutor:
    """Every shard in this process, one after another."""

    shard_size: int = 1000
    name: str = "local"

    def map_shards(self, task: ShardTask, batch: SeriesBatch) -> pd.DataFrame:
        return merge_shards(batch, [task(shard, k) for k, shard in split_batch(batch, self.shard_size)])


def _run_shard(task: ShardTask, batch: SeriesBatch, shard: int, before: Callable[[int], None] | None) -> pd.DataFrame:
    """Body of a Ray shard task (module level so workers import it rather than unpickle code)."""
    if before is not None:
        before(shard)
    return task(batch, shard)


class RayExecutor:
    """Every shard as a Ray task on a cluster (``address``) or a local Ray started on first use.

    Args:
        address: ``ray://head:10001``, ``auto``, or None for a local Ray (reused when this
            process already called ``ray.init``).
        num_cpus, num_gpus: resources each shard task requests.
        shard_size: series per shard (the same cut as :class:`LocalExecutor`).
        max_in_flight: most shard tasks submitted and not yet collected.
        max_retries: Ray retries of a shard whose worker process died.
        before_shard: called in the worker with the shard index before the stage runs
            (instrumentation; the fault-injection test kills the worker from here).
    """

    name = "ray"
    _init_lock = threading.Lock()

    def __init__(
        self,
        *,
        address: str | None = None,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        shard_size: int = 1000,
        max_in_flight: int = 8,
        max_retries: int = 3,
        before_shard: Callable[[int], None] | None = None,
    ):
        if shard_size < 1 or max_in_flight < 1 or max_retries < 0:
            raise ConfigError(
                f"invalid Ray executor settings: shard_size={shard_size}, max_in_flight={max_in_flight}, "
                f"max_retries={max_retries}",
                hint="shard_size and max_in_flight at least 1, max_retries at least 0",
            )
        self.address = address
        self.num_cpus = float(num_cpus)
        self.num_gpus = float(num_gpus)
        self.shard_size = int(shard_size)
        self.max_in_flight = int(max_in_flight)
        self.max_retries = int(max_retries)
        self.before_shard = before_shard
        self._remote = None

    @classmethod
    def from_config(cls, cfg: "ExecutorConfig", **kw: Any) -> "RayExecutor":
        return cls(
            address=cfg.address, num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus, shard_size=cfg.shard_size,
            max_in_flight=cfg.max_in_flight, max_retries=cfg.max_retries, **kw,
        )

    def __repr__(self) -> str:
        return f"RayExecutor(address={self.address!r}, shard_size={self.shard_size})"

    def _ray(self):
        try:
            import ray
        except ImportError:
            raise ConfigError(
                "executor.kind is ray but the ray package is not installed",
                hint="pip install 'aiops[ray]', or set executor.kind: local",
            ) from None
        with self._init_lock:
            if not ray.is_initialized():
                logger.info("connecting to Ray at %s", self.address or "a new local instance")
                try:
                    ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                             ignore_reinit_error=True)
                except (ConnectionError, RuntimeError, ValueError) as exc:
                    raise ExecutorError(
                        f"cannot start or reach Ray at {self.address or 'a local instance'}: {exc}",
                        hint="check executor.address (ray://head:10001) and that the cluster runs the "
                        "same Ray and Python versions as this process",
                    ) from None
            if self._remote is None:
                self._remote = ray.remote(_run_shard)
        return ray

    def map_shards(self, task: ShardTask, batch: SeriesBatch) -> pd.DataFrame:
        ray = self._ray()
        remote = self._remote.options(
            num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=self.max_retries, retry_exceptions=False,
        )
        shards = split_batch(batch, self.shard_size)
        results: dict[int, pd.DataFrame] = {}
        pending: dict[Any, int] = {}

        def collect(refs: list) -> None:
            for ref in refs:
                k = pending.pop(ref)
                results[k] = self._get(ray, ref, k, batch)

        for k, shard in shards:
            while len(pending) >= self.max_in_flight:  # backpressure: wait for one to finish
                done, _ = ray.wait(list(pending), num_returns=1)
                collect(done)
            pending[remote.remote(task, shard, k, self.before_shard)] = k
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            collect(done)
        return merge_shards(batch, [results[k] for k, _ in shards])

    def _get(self, ray, ref, shard: int, batch: SeriesBatch) -> pd.DataFrame:
        from ray import exceptions as rx

        try:
            return ray.get(ref)
        except rx.RayTaskError as exc:  # the stage itself raised: keep aiops errors as they are
            cause = getattr(exc, "cause", None)
            if isinstance(cause, AiopsError):
                raise cause from None
            raise ExecutorError(
                f"shard {shard} of watch {batch.watch or '-'} failed in a Ray worker: {cause or exc}", shard=shard,
            ) from None
        except (rx.WorkerCrashedError, rx.NodeDiedError, rx.ObjectLostError, rx.RaySystemError) as exc:
            raise ExecutorError(
                f"shard {shard} of watch {batch.watch or '-'}: its Ray worker died on every attempt "
                f"({self.max_retries + 1}; {exc.__class__.__name__})",
                shard=shard,
                hint="check the Ray workers' memory (an OOM kill looks like this) or raise executor.max_retries",
            ) from None


_CACHE: dict[str, Executor] = {}
_CACHE_LOCK = threading.Lock()


def executor_for(cfg: "ExecutorConfig") -> Executor:
    """The executor a config section describes; Ray executors are built once per setting."""
    if cfg.kind == "local":
        return LocalExecutor(shard_size=cfg.shard_size)
    key = cfg.model_dump_json()
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = RayExecutor.from_config(cfg)
        return _CACHE[key]
