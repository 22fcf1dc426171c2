"""The GPU ranker: FP16 item table on the device, one fused gather-and-dot kernel, top-k on the device.

Same results as the CPU ranker (`server.ranking.cpu`): positions into the batch's C axis sorted by score
descending (ties to the lower position), -1 padding, NaN and -inf never picked, similarity of each pick.

How a batch runs: the inputs are copied into the calling slot's pinned buffer, then — under one lock, on
the ranker's own non-blocking stream — one host-to-device copy, the scoring kernel, the top-k kernel and
one device-to-host copy of positions, scores and similarities are enqueued, and the caller waits on the
slot's event. Catalogue writes are enqueued on the same stream under the same lock, so each batch sees
every write made before it. Buffers are preallocated and grow geometrically; the request path does not
allocate device memory once they have reached the largest batch seen.

CuPy is optional: without it (or without a CUDA device) this module still imports, `available()` is False
and the server ranks on the CPU.
"""

from __future__ import annotations

import itertools
import math
import queue
import threading
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from server.ranking import gpu_kernels
from server.ranking.base import RankBatch, RankResult
from server.ranking.model import RankingModel

try:
    import cupy as cp  # type: ignore[no-redef,unused-ignore]

    _IMPORT_ERROR: Exception | None = None
except Exception as exc:  # ImportError, or CuPy failing to load its CUDA libraries
    cp = None
    _IMPORT_ERROR = exc

_H2D, _D2H, _D2D = 1, 2, 3  # cudaMemcpyKind
_ALIGN = 256
_STAGING_BYTES = 16 << 20
_CHUNK_BYTES = 32 << 20


def unavailable_reason() -> str | None:
    """Why the GPU ranker cannot run here, or None when it can."""
    if cp is None:
        return f"CuPy cannot be imported ({_IMPORT_ERROR!r})"
    try:
        count = cp.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return f"CuPy sees no CUDA device ({exc!r})"
    return None if count > 0 else "CuPy sees no CUDA device"


def available() -> bool:
    """True when CuPy imports and a CUDA device is visible. Never raises."""
    try:
        return unavailable_reason() is None
    except Exception:
        return False


class _Items(Protocol):
    """What the ranker reads from the catalogue (an ItemStore): its FP16 table and dimension."""

    dim: int
    table: Any


def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _ptr(x: int) -> np.uint64:
    return np.uint64(x)


_Weights = tuple[np.float32, np.float32, np.float32, np.float32]


def _weights(model: RankingModel) -> _Weights:
    """The scoring kernel's weight arguments: similarity, then the side features in SIDE_FEATURES order."""
    w0, w1, w2 = (np.float32(w) for w in model.side_weights)
    return np.float32(model.similarity_weight), w0, w1, w2


class _Kernels:
    """The compiled module's functions, looked up once per ranker."""

    def __init__(self) -> None:
        options = ("--std=c++17",)
        self.fn = {
            name: cp.RawKernel(gpu_kernels.SOURCE, name, options=options) for name in gpu_kernels.KERNEL_NAMES
        }
        self.load_all()  # compile errors surface here, at start
        self.sort_max = gpu_kernels.SORT_MAX
        try:
            for name in ("topk_scores", "topk_scores_to_keys", "topk_keys", "topk_keys_to_keys"):
                self.fn[name].max_dynamic_shared_size_bytes = self.sort_max * 8
        except Exception:
            self.sort_max = 4096  # 32 KiB of keys fits the default shared-memory limit

    def load_all(self) -> dict[str, int]:
        """Compiles and loads every kernel now (not on the first request); returns registers per kernel."""
        return {name: int(fn.num_regs) for name, fn in self.fn.items()}


class _DeviceTable:
    """FP16 rows in fixed-size device chunks, addressed through a device array of chunk pointers.

    Growing adds chunks and never moves rows. Every method runs under the ranker's lock and only
    enqueues work on the ranker's stream.
    """

    def __init__(self, dim: int, chunk_rows: int, stream: Any, kernels: _Kernels) -> None:
        if chunk_rows < 1 or chunk_rows & (chunk_rows - 1):
            raise ValueError(f"chunk_rows must be a power of two, got {chunk_rows}")
        self.dim = dim
        self.chunk_rows = chunk_rows
        self.shift = chunk_rows.bit_length() - 1
        self.n_rows = 0  # 1 + the highest row ever written: rows at or after it score -inf, like the CPU
        self._stream = stream
        self._k = kernels
        self._chunks: list[Any] = []
        self._pointer_capacity = 256
        self._pointers = cp.cuda.alloc(8 * self._pointer_capacity)
        self._retired: list[Any] = []  # old pointer arrays: queued kernels may still read them
        self._piece_rows = max(1, _STAGING_BYTES // (2 * dim + 8))
        self._staging_bytes = _align(8 * self._piece_rows) + 2 * dim * self._piece_rows
        self._host_staging = cp.cuda.alloc_pinned_memory(self._staging_bytes)
        self._host_view = np.ndarray((self._staging_bytes,), np.uint8, buffer=self._host_staging)
        self._dev_staging = cp.cuda.alloc(self._staging_bytes)
        self._staging_done = cp.cuda.Event(disable_timing=True)
        self._staging_done.record(stream)

    @property
    def pointers(self) -> int:
        return int(self._pointers.ptr)

    @property
    def capacity(self) -> int:
        return len(self._chunks) * self.chunk_rows

    @property
    def nbytes(self) -> int:
        return len(self._chunks) * self.chunk_rows * self.dim * 2

    def ensure_rows(self, n: int) -> None:
        while self.capacity < n:
            if len(self._chunks) == self._pointer_capacity:
                grown = cp.cuda.alloc(16 * self._pointer_capacity)
                cp.cuda.runtime.memcpyAsync(
                    grown.ptr, self._pointers.ptr, 8 * self._pointer_capacity, _D2D, self._stream.ptr
                )
                self._retired.append(self._pointers)
                self._pointers = grown
                self._pointer_capacity *= 2
            chunk_bytes = self.chunk_rows * self.dim * 2
            chunk = cp.cuda.alloc(chunk_bytes)
            cp.cuda.runtime.memsetAsync(chunk.ptr, 0, chunk_bytes, self._stream.ptr)
            self._k.fn["set_pointer"](
                (1,),
                (1,),
                (_ptr(self.pointers), np.int64(len(self._chunks)), _ptr(chunk.ptr)),
                stream=self._stream,
            )
            self._chunks.append(chunk)

    def write(self, rows: npt.NDArray[np.int64], halves: npt.NDArray[np.uint16] | None) -> None:
        """Writes rows (halves: (n, dim) FP16 bits) or zeros them (halves None). Rows are unique and >= 0."""
        if len(rows) == 0:
            return
        self.ensure_rows(int(rows.max()) + 1)
        dim = self.dim
        halves_at = _align(8 * self._piece_rows)
        for start in range(0, len(rows), self._piece_rows):
            piece = rows[start : start + self._piece_rows]
            m = len(piece)
            self._staging_done.synchronize()  # the previous piece's upload has read the pinned buffer
            self._host_view[: 8 * m].view(np.int64)[:] = piece
            nbytes = 8 * m
            src = 0
            if halves is not None:
                self._host_view[halves_at : halves_at + 2 * m * dim].view(np.uint16)[:] = halves[
                    start : start + m
                ].reshape(-1)
                nbytes = halves_at + 2 * m * dim
                src = self._dev_staging.ptr + halves_at
            cp.cuda.runtime.memcpyAsync(
                self._dev_staging.ptr, self._host_staging.ptr, nbytes, _H2D, self._stream.ptr
            )
            threads = 128 if dim >= 1024 else 64 if dim >= 256 else 32
            self._k.fn["scatter_rows"](
                (min(m, 65_535),),
                (threads,),
                (_ptr(self.pointers), np.int32(self.shift), np.int32(dim), _ptr(self._dev_staging.ptr),
                 _ptr(src), np.int32(m)),
                stream=self._stream,
            )  # fmt: skip
            self._staging_done.record(self._stream)
        if halves is not None:
            self.n_rows = max(self.n_rows, int(rows.max()) + 1)


@dataclass
class _Layout:
    """Byte offsets of one batch's arrays in a slot's input, output and work buffers."""

    batch: int
    candidates: int
    k: int
    dim: int

    def __post_init__(self) -> None:
        B, C, k, d = self.batch, self.candidates, self.k, self.dim
        self.queries = 0
        self.rows = _align(4 * B * d)
        self.side = self.rows + _align(8 * B * C)
        self.in_bytes = self.side + 12 * B * C
        self.positions = 0
        self.scores = _align(8 * B * k)
        self.similarity = self.scores + _align(4 * B * k)
        self.out_bytes = self.similarity + 4 * B * k
        self.total = 0
        self.sim = _align(4 * B * C)
        self.keys = self.sim + _align(4 * B * C)
        self.work_bytes = self.keys  # plus key scratch when C needs several top-k passes


class _Slot:
    """Pinned and device buffers for one batch in flight; a rank call holds one slot at a time."""

    def __init__(self) -> None:
        # Blocking: the waiting thread sleeps until the batch is back instead of spinning on a core for
        # the whole round trip (spinning cost 0.28 ms of host CPU per Recommend on the H200 machine).
        self.done = cp.cuda.Event(block=True, disable_timing=True)
        self.host_in: npt.NDArray[np.uint8] = np.empty(0, np.uint8)
        self.host_out: npt.NDArray[np.uint8] = np.empty(0, np.uint8)
        self._mem: dict[str, Any] = {}
        self._sizes = {"host_in": 0, "host_out": 0, "dev_in": 0, "dev_out": 0, "work": 0}

    def ptr(self, name: str) -> int:
        return int(self._mem[name].ptr)

    def reserve(self, in_bytes: int, out_bytes: int, work_bytes: int) -> None:
        """Grows buffers to at least these sizes (to the next power of two, so growth is rare)."""
        for name, need in (
            ("host_in", in_bytes), ("dev_in", in_bytes), ("host_out", out_bytes), ("dev_out", out_bytes),
            ("work", work_bytes),
        ):  # fmt: skip
            if need <= self._sizes[name]:
                continue
            size = _next_pow2(max(need, 1 << 16))
            self._mem.pop(name, None)  # the slot's previous batch has finished (its event was waited on)
            if name.startswith("host"):
                mem = cp.cuda.alloc_pinned_memory(size)
                setattr(self, name, np.ndarray((size,), np.uint8, buffer=mem))
            else:
                mem = cp.cuda.alloc(size)
            self._mem[name] = mem
            self._sizes[name] = size


class GpuRanker:
    """Ranks batches on a CUDA GPU; `on_catalogue_change` keeps its copy of the item table current."""

    name = "gpu"

    def __init__(
        self,
        items: _Items,
        model: RankingModel,
        *,
        slots: int = 2,
        chunk_rows: int | None = None,
        device: int = 0,
    ) -> None:
        reason = unavailable_reason()
        if reason is not None:
            raise RuntimeError(f"the GPU ranker cannot run: {reason}")
        self.dim = int(items.dim)
        self.model = model
        self._device = cp.cuda.Device(device)
        self._lock = threading.Lock()
        self._last_sort: tuple[Any, ...] = ()
        with self._device:
            self._sms = int(self._device.attributes["MultiProcessorCount"])
            self._stream = cp.cuda.Stream(non_blocking=True)
            self._k = _Kernels()
            if chunk_rows is None:
                chunk_rows = 1 << max(8, (_CHUNK_BYTES // (2 * self.dim)).bit_length() - 1)
            self._table = _DeviceTable(self.dim, chunk_rows, self._stream, self._k)
            self._slots: queue.SimpleQueue[_Slot] = queue.SimpleQueue()
            for _ in range(max(1, slots)):
                self._slots.put(_Slot())
            # Threads per candidate: each reads about sixteen 16-byte pieces of the row, four at a time
            # (measured on an H200: 4 threads at d = 64 and 128, 8 at d = 1024 beat wider groups), and
            # long rows in short per-block runs (more blocks in flight).
            per_candidate = min(32, max(4, _next_pow2(math.ceil(self.dim / 8 / 16))))
            self.use_score_variant(per_candidate, 2 if self.dim >= 512 else 8)
            self._load(items)

    # --- the catalogue ----------------------------------------------------------------------------
    def _load(self, items: _Items) -> None:
        """Copies the catalogue's current table to the device, a staging buffer at a time."""
        table = items.table
        with self._lock:
            self._table.ensure_rows(max(1, int(table.rows), int(getattr(table, "capacity", 0))))
        step = 65_536
        for start in range(0, int(table.rows), step):
            rows = np.arange(start, min(int(table.rows), start + step), dtype=np.int64)
            self.upsert_rows(rows, table.get_rows(rows))
        self._stream.synchronize()

    def on_catalogue_change(
        self, rows: npt.NDArray[np.int64], vectors: npt.NDArray[np.float32] | None
    ) -> None:
        """ItemStore listener: `vectors` after upserts, None after deletes."""
        if vectors is None:
            self.clear_rows(rows)
        else:
            self.upsert_rows(rows, vectors)

    def upsert_rows(self, rows: npt.NDArray[np.int64], vectors: npt.NDArray[np.float32]) -> None:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(rows), self.dim)
        if len(rows) and rows.min() < 0:
            raise ValueError(f"rows must be >= 0, got {int(rows.min())}")
        unique, last = np.unique(rows[::-1], return_index=True)
        if len(unique) < len(rows):  # a row given twice keeps its last vector, as in the CPU table
            keep = np.sort(len(rows) - 1 - last)
            rows, vectors = rows[keep], vectors[keep]
        halves = vectors.astype(np.float16).view(np.uint16)  # round to nearest even, like the CPU table
        with self._device, self._lock:
            self._table.write(rows, halves)

    def clear_rows(self, rows: npt.NDArray[np.int64]) -> None:
        rows = np.unique(np.asarray(rows, dtype=np.int64).reshape(-1))
        with self._device, self._lock:
            rows = rows[(rows >= 0) & (rows < self._table.n_rows)]
            self._table.write(rows, None)

    # --- ranking ----------------------------------------------------------------------------------
    def rank(self, batch: RankBatch, model: RankingModel | None = None) -> RankResult:
        """`model` (default: the one given at construction) supplies the weights, which are kernel
        arguments of this batch's launch: a model swap touches no device buffer, and batches of several
        versions can be in flight at once."""
        queries, rows, side, k = batch.queries, batch.rows, batch.side, int(batch.k)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if rows.ndim != 2:
            raise ValueError(f"rows must be (B, C), got shape {rows.shape}")
        B, C = rows.shape
        if queries.shape != (B, self.dim):
            raise ValueError(f"queries must be ({B}, {self.dim}), got {queries.shape}")
        if side.shape != (B, C, 3):
            raise ValueError(f"side must be ({B}, {C}, 3), got {side.shape}")
        if B > 65_535:
            raise ValueError(f"at most 65535 requests per batch, got {B}")
        if B == 0 or C == 0:
            return RankResult(
                positions=np.full((B, k), -1, np.int64),
                scores=np.full((B, k), -np.inf, np.float32),
                similarity=np.zeros((B, k), np.float32),
            )
        weights = _weights(model or self.model)
        slot = self._slots.get()
        try:
            with self._device:
                return self._rank_in(slot, queries, rows, side, k, weights)
        finally:
            self._slots.put(slot)

    def _prepare(self, slot: _Slot, queries: Any, rows: Any, side: Any, k: int) -> _Layout:
        B, C = rows.shape
        lay = _Layout(B, C, k, self.dim)
        slot.reserve(lay.in_bytes, lay.out_bytes, lay.work_bytes + self._key_scratch_bytes(B, C, k))
        h = slot.host_in
        np.copyto(
            h[lay.queries : lay.queries + 4 * B * self.dim].view(np.float32).reshape(B, self.dim), queries
        )
        np.copyto(h[lay.rows : lay.rows + 8 * B * C].view(np.int64).reshape(B, C), rows, casting="same_kind")
        np.copyto(
            h[lay.side : lay.side + 12 * B * C].view(np.float32).reshape(B, C, 3), side, casting="same_kind"
        )
        return lay

    def _rank_in(
        self, slot: _Slot, queries: Any, rows: Any, side: Any, k: int, weights: _Weights
    ) -> RankResult:
        lay = self._prepare(slot, queries, rows, side, k)
        B = lay.batch
        with self._lock:
            s = self._stream.ptr
            cp.cuda.runtime.memcpyAsync(slot.ptr("dev_in"), slot.ptr("host_in"), lay.in_bytes, _H2D, s)
            self._launch_score(slot, lay, weights)
            self._launch_topk(slot, lay)
            cp.cuda.runtime.memcpyAsync(slot.ptr("host_out"), slot.ptr("dev_out"), lay.out_bytes, _D2H, s)
            slot.done.record(self._stream)
        slot.done.synchronize()
        h = slot.host_out
        return RankResult(
            positions=h[lay.positions : lay.positions + 8 * B * k].view(np.int64).reshape(B, k).copy(),
            scores=h[lay.scores : lay.scores + 4 * B * k].view(np.float32).reshape(B, k).copy(),
            similarity=h[lay.similarity : lay.similarity + 4 * B * k].view(np.float32).reshape(B, k).copy(),
        )

    def _launch_score(self, slot: _Slot, lay: _Layout, weights: _Weights) -> None:
        B, C = lay.batch, lay.candidates
        groups = gpu_kernels.SCORE_THREADS // self._tpc
        # Enough blocks for a few waves, each block reading its staged query for several candidates.
        tiles = B * math.ceil(C / groups)
        per_block = groups * min(self._max_iters, max(1, math.ceil(tiles / (16 * self._sms))))
        din, work = slot.ptr("dev_in"), slot.ptr("work")
        w_sim, w0, w1, w2 = weights
        self._score_fn(
            (math.ceil(C / per_block), B),
            (gpu_kernels.SCORE_THREADS,),
            (_ptr(self._table.pointers), np.int32(self._table.shift), np.int64(self._table.n_rows),
             np.int32(self.dim), _ptr(din + lay.queries), _ptr(din + lay.rows), _ptr(din + lay.side),
             w_sim, w0, w1, w2, np.int32(C), np.int32(per_block),
             _ptr(work + lay.total), _ptr(work + lay.sim)),
            shared_mem=4 * self.dim,
            stream=self._stream,
        )  # fmt: skip

    def _key_scratch_bytes(self, B: int, C: int, k: int) -> int:
        sort_max = self._k.sort_max
        if sort_max >= C or k > sort_max // 2:
            return 0
        return 2 * _align(8 * B * math.ceil(C / sort_max) * k)

    def _launch_topk(self, slot: _Slot, lay: _Layout) -> None:
        B, C, k = lay.batch, lay.candidates, lay.k
        sort_max = self._k.sort_max
        work, dout = slot.ptr("work"), slot.ptr("dev_out")
        total, sim = _ptr(work + lay.total), _ptr(work + lay.sim)
        outs = (_ptr(dout + lay.positions), _ptr(dout + lay.scores), _ptr(dout + lay.similarity))
        none = (_ptr(0), _ptr(0), _ptr(0))
        if sort_max < C and k > sort_max // 2:
            self._topk_by_sort(lay, total, sim, outs)
            return
        width, src, from_keys = C, 0, False
        half = self._key_scratch_bytes(B, C, k) // 2
        buffers = (work + lay.keys, work + lay.keys + half)
        passes = 0
        while width > sort_max:  # each tile keeps its top k: the row's top k survive every pass
            tiles = math.ceil(width / sort_max)
            dst = buffers[passes % 2]
            fn = self._k.fn["topk_keys_to_keys" if from_keys else "topk_scores_to_keys"]
            fn(
                (tiles, B), (1024,),
                (total, sim, _ptr(src), np.int32(C), np.int32(width), np.int32(sort_max), np.int32(sort_max),
                 np.int32(k), _ptr(dst), *none),
                shared_mem=8 * sort_max, stream=self._stream,
            )  # fmt: skip
            width, src, from_keys, passes = tiles * k, dst, True, passes + 1
        if width <= gpu_kernels.SORT_SMALL_MAX:
            fn = self._k.fn["topk_small_keys" if from_keys else "topk_small_scores"]
            fn(
                (1, B), (max(32, _next_pow2(width)),),
                (total, sim, _ptr(src), np.int32(C), np.int32(width), np.int32(k), *outs),
                stream=self._stream,
            )  # fmt: skip
            return
        sort_n = _next_pow2(width)
        fn = self._k.fn["topk_keys" if from_keys else "topk_scores"]
        fn(
            (1, B), (min(1024, max(32, sort_n // 2)),),
            (total, sim, _ptr(src), np.int32(C), np.int32(width), np.int32(width), np.int32(sort_n),
             np.int32(k), _ptr(0), *outs),
            shared_mem=8 * sort_n, stream=self._stream,
        )  # fmt: skip

    def _topk_by_sort(
        self, lay: _Layout, total: np.uint64, sim: np.uint64, outs: tuple[np.uint64, ...]
    ) -> None:
        """k too large for tile passes over a very wide batch (rare): a full library sort of the keys."""
        B, C, k = lay.batch, lay.candidates, lay.k
        with self._stream:
            keys = cp.empty((B, C), dtype=np.uint64)
            n = B * C
            self._k.fn["make_keys"](
                (min(65_535, math.ceil(n / 256)),), (256,), (total, np.int32(C), np.int64(n), keys),
                stream=self._stream,
            )  # fmt: skip
            ordered = cp.sort(keys, axis=1)
            self._k.fn["decode_keys"](
                (min(65_535, math.ceil(B * k / 256)),), (256,),
                (ordered, total, sim, np.int32(C), np.int32(k), np.int64(B * k), *outs),
                stream=self._stream,
            )  # fmt: skip
            self._last_sort = (keys, ordered)  # (the pool reuses blocks in stream order anyway)

    def warm_up(self) -> None:
        """Compiles every kernel and ranks a typical batch, so the first request pays for neither."""
        with self._device:
            self._k.load_all()
        rng = np.random.default_rng(0)
        B, C = 64, 1024
        n_rows = max(1, self._table.n_rows)
        rows = rng.integers(0, n_rows, size=(B, C), dtype=np.int64)
        rows[:, -8:] = -1
        batch = RankBatch(
            queries=rng.normal(size=(B, self.dim)).astype(np.float32),
            rows=rows,
            side=rng.random(size=(B, C, 3), dtype=np.float32),
            k=min(C, 100),
        )
        for _ in range(2):  # one slot after another, so every slot has its buffers
            self.rank(batch)

    # --- introspection, used by the benchmark and the tests ----------------------------------------
    @property
    def table_capacity(self) -> int:
        return self._table.capacity

    @property
    def table_rows(self) -> int:
        return self._table.n_rows

    def use_score_variant(self, threads_per_candidate: int, max_iters: int = 8) -> None:
        """The scoring kernel's shape: threads per candidate (4, 8, 16 or 32) and at most how many
        candidates each group scores per block. Set at start; the benchmark also sweeps it."""
        if threads_per_candidate not in gpu_kernels.SCORE_TPCS:
            raise ValueError(f"threads_per_candidate must be one of {gpu_kernels.SCORE_TPCS}")
        kind = "vec" if self.dim % 8 == 0 else "scalar"
        self._tpc = threads_per_candidate
        self._max_iters = max(1, max_iters)
        self._score_fn = self._k.fn[f"score_tpc{threads_per_candidate}_{kind}"]

    def kernel_registers(self) -> dict[str, int]:
        with self._device:
            return self._k.load_all()

    def time_device(self, batch: RankBatch, iterations: int = 50) -> dict[str, float]:
        """Median milliseconds per batch of the scoring kernel, the top-k, and both back to back, on
        inputs already on the device (no copies), timed with CUDA events while a spin kernel holds the
        GPU so the launches queue up and run without gaps."""
        slot = self._slots.get()
        try:
            with self._device:
                lay = self._prepare(slot, batch.queries, batch.rows, batch.side, int(batch.k))
                with self._lock:
                    cp.cuda.runtime.memcpyAsync(
                        slot.ptr("dev_in"), slot.ptr("host_in"), lay.in_bytes, _H2D, self._stream.ptr
                    )

                    weights = _weights(self.model)

                    def both() -> None:
                        self._launch_score(slot, lay, weights)
                        self._launch_topk(slot, lay)

                    runs = {
                        "score": lambda: self._launch_score(slot, lay, weights),
                        "topk": lambda: self._launch_topk(slot, lay),
                        "kernels": both,
                    }
                    out = {}
                    for label, run in runs.items():
                        run()  # warm
                        events = [cp.cuda.Event() for _ in range(iterations + 1)]
                        self._k.fn["spin"]((1,), (1,), (np.int64(40_000_000),), stream=self._stream)
                        events[0].record(self._stream)
                        for i in range(iterations):
                            run()
                            events[i + 1].record(self._stream)
                        events[-1].synchronize()
                        times = [cp.cuda.get_elapsed_time(a, b) for a, b in itertools.pairwise(events)]
                        out[label] = float(np.median(times))
                    self._stream.synchronize()
                return out
        finally:
            self._slots.put(slot)
