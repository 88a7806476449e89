"""Capturing a forward into a CUDA graph, and a small LRU cache of graphs sharing one memory pool.

:class:`CudaGraphCapturer` runs the forward ``warmup`` times eagerly on a side stream (kernels
choose their algorithms, lazy state such as a fused gate's kept launches is set up, and
``torch.compile`` compiles), then records one call with ``torch.cuda.graph`` on that same stream
(so state kept per stream is the warm-up's) into the pool shared by every graph of the cache.
The forward's arguments are static buffers made for the graph; replaying after copying new
values into them runs the recorded kernels on the new values.

Sharing one pool: a graph's intermediates are freed at the end of its capture and may be reused
by the next capture, so a replay may overwrite another graph's outputs. Replays run one at a time
on one stream and each replay's outputs are copied out before the next (``Accelerator``), which
makes sharing safe while keeping one graph's worth of intermediates for the whole cache.

The capturer is an interface so the cache's logic can be tested on CPU with a fake one.
"""

from __future__ import annotations

import gc
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


@dataclass
class CapturedCall:
    """One captured forward: ``replay()`` runs it; ``outputs`` are the tensors it writes each time."""

    replay: Callable[[], None]
    outputs: Any
    seconds: float = 0.0            # warm-up and capture, wall time
    compile_seconds: float = 0.0    # the first warm-up call where it compiled, else 0
    pool_bytes: int = 0             # growth of the device's reserved memory during capture


class Capturer(Protocol):
    """Records ``fn(*args, **kwargs)`` (static arguments) so that it can be replayed."""

    def capture(self, fn: Callable[..., Any], args: tuple, kwargs: dict, device: torch.device,
                compiling: bool) -> CapturedCall:
        ...


class CudaGraphCapturer:
    """The real capturer: CUDA graphs in one shared pool, warm-up and capture on one side stream."""

    def __init__(self, warmup: int = 2) -> None:
        self.warmup = max(1, int(warmup))
        self._pool: Any = None
        self._streams: dict[torch.device, torch.cuda.Stream] = {}

    def _stream(self, device: torch.device) -> torch.cuda.Stream:
        stream = self._streams.get(device)
        if stream is None:
            stream = self._streams[device] = torch.cuda.Stream(device)
        return stream

    def capture(self, fn: Callable[..., Any], args: tuple, kwargs: dict, device: torch.device,
                compiling: bool) -> CapturedCall:
        started = time.perf_counter()
        stream = self._stream(device)
        caller = torch.cuda.current_stream(device)
        stream.wait_stream(caller)
        compile_seconds = 0.0
        with torch.cuda.stream(stream):
            for i in range(self.warmup):
                t0 = time.perf_counter()
                fn(*args, **kwargs)
                if i == 0 and compiling:
                    stream.synchronize()
                    compile_seconds = time.perf_counter() - t0
        stream.synchronize()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        # torch.cuda.graph empties the allocator's cache on entry: empty it first, so the growth
        # of reserved memory is what the graph's pool keeps, not the cache released on the way.
        gc.collect()
        torch.cuda.empty_cache()
        reserved = torch.cuda.memory_reserved(device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, stream=stream, capture_error_mode="thread_local"):
            outputs = fn(*args, **kwargs)
        caller.wait_stream(stream)
        return CapturedCall(replay=graph.replay, outputs=outputs, seconds=time.perf_counter() - started,
                            compile_seconds=compile_seconds,
                            pool_bytes=max(0, torch.cuda.memory_reserved(device) - reserved))


@dataclass
class GraphEntry:
    """A cached graph with its static input buffers and what its key refers to by identity."""

    captured: CapturedCall
    static_inputs: list[torch.Tensor]
    held: list[Any] = field(default_factory=list)
    replays: int = 0


class GraphCache:
    """Up to ``capacity`` graphs by signature key, least recently used dropped first."""

    def __init__(self, capacity: int = 4) -> None:
        self.capacity = max(1, int(capacity))
        self._entries: OrderedDict[Any, GraphEntry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Any) -> GraphEntry | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: Any, entry: GraphEntry) -> list[Any]:
        """Store ``entry``; returns the keys dropped to stay within the capacity."""
        self._entries[key] = entry
        self._entries.move_to_end(key)
        dropped = []
        while len(self._entries) > self.capacity:
            old, _ = self._entries.popitem(last=False)
            dropped.append(old)
        return dropped

    def drop_where(self, predicate: Callable[[Any], bool]) -> int:
        """Drop every entry whose key satisfies ``predicate``; returns how many."""
        doomed = [k for k in self._entries if predicate(k)]
        for k in doomed:
            del self._entries[k]
        return len(doomed)

    def clear(self) -> None:
        self._entries.clear()

    def entries(self) -> list[GraphEntry]:
        return list(self._entries.values())
