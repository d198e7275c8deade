"""CUDA graphs for Numba kernels: record a sequence of launches once, replay it with one call.

A GPT-2 training step is ~400 kernel launches at 124M (12 layers x ~30, plus the head, the
loss and AdamW). Launched from Python, each costs several microseconds of host time (Numba's
argument marshalling plus the driver call): at small shapes (B=1, T=128) the GPU finishes the
kernels faster than Python can queue them, and the step's time is the launch time. A CUDA
graph removes that cost: the launches are recorded once into a graph, the driver turns it
into an executable graph, and each later step is one `cuGraphLaunch`.

How (CUDA driver API through cuda-python's ``cuda.bindings.driver``; nothing else):

    cuStreamBeginCapture(stream)     from here on, work queued on `stream` is recorded, not run
    ... every kernel of the step, launched on `stream` (numba_impl._compat.launch_stream) ...
    cuStreamEndCapture(stream)       -> graph (its nodes: one per kernel launch / memcpy / memset)
    cuGraphInstantiate(graph)        -> executable graph
    cuGraphLaunch(exec, stream)      replay: the same kernels, the same arguments

What a replay can and cannot see. Every kernel argument is recorded by value: device pointers,
grid sizes and scalars are frozen into the graph. So a captured step
- must launch everything on the capturing stream (the legacy default stream cannot be captured);
- may not copy between host and device, allocate, or synchronize inside the captured region;
- reads its inputs from fixed device buffers that the caller fills *before* each replay (token
  ids, targets, AdamW's learning rate and bias corrections: numba_impl/model.py does this);
- is only valid for the shapes it was recorded with (the model keeps one graph per (B, T, ...)).
A kernel's first launch compiles it (Numba JIT) and loads its module: the model therefore runs
each step eagerly once before recording it.

In Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1) there are no streams to capture:
`graphs_unavailable()` says why and the model runs eagerly.
"""

from __future__ import annotations

from numba_impl._compat import SIMULATOR, cuda


class GraphError(RuntimeError):
    """A CUDA driver call for graph capture or replay failed."""


def graphs_unavailable() -> str | None:
    """Why CUDA graphs cannot be used here (None when they can)."""
    if SIMULATOR:
        return "CUDA graphs are not available in Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1): running eagerly"
    try:
        from cuda.bindings import driver  # noqa: F401
    except ImportError as e:
        return f"CUDA graphs need cuda-python's cuda.bindings ({e}): running eagerly"
    if not cuda.is_available():
        return "no CUDA GPU is visible to Numba: CUDA graphs unavailable"
    return None


def _driver():
    from cuda.bindings import driver

    return driver


def _call(name: str, *args):
    """driver.<name>(*args), raising GraphError on a CUresult other than CUDA_SUCCESS; returns the outputs."""
    drv = _driver()
    result = getattr(drv, name)(*args)
    err, out = result[0], result[1:]
    if err != drv.CUresult.CUDA_SUCCESS:
        _, err_name = drv.cuGetErrorName(err)
        _, err_text = drv.cuGetErrorString(err)
        decode = lambda b: b.decode() if isinstance(b, bytes) else str(b)  # noqa: E731
        raise GraphError(f"{name} failed: {decode(err_name)} ({decode(err_text)})")
    return out[0] if len(out) == 1 else out


def stream_handle(stream):
    """The CUstream of a Numba stream (numba's `Stream.handle` is a CUstream or a ctypes pointer)."""
    drv = _driver()
    handle = stream.handle
    if isinstance(handle, drv.CUstream):
        return handle
    value = getattr(handle, "value", handle)  # ctypes c_void_p under Numba's ctypes binding
    return drv.CUstream(int(value or 0))


class CapturedGraph:
    """An executable CUDA graph recorded from the launches `record()` queues on `stream`.

        g = CapturedGraph(stream, record)   # record() runs once, under capture: nothing executes
        g.replay()                          # queues the recorded work on `stream` (asynchronous)

    The caller keeps every buffer the launches touch alive (and at the same address) for as long
    as it replays the graph."""

    def __init__(self, stream, record, mode: str = "thread_local"):
        drv = _driver()
        modes = {
            "global": drv.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_GLOBAL,
            "thread_local": drv.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
            "relaxed": drv.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_RELAXED,
        }
        if mode not in modes:
            raise ValueError(f"capture mode must be one of {tuple(modes)}, got {mode!r}")
        self.stream = stream
        self._handle = stream_handle(stream)
        self._graph = self._exec = None
        _call("cuStreamBeginCapture", self._handle, modes[mode])
        try:
            record()
        except BaseException as e:
            # End the capture whatever happened, so that the stream is usable again; report the cause.
            try:
                graph = _call("cuStreamEndCapture", self._handle)
                _call("cuGraphDestroy", graph)
            except GraphError as end_error:
                raise GraphError(f"launching under capture failed ({type(e).__name__}: {e}); {end_error}") from e
            raise
        self._graph = _call("cuStreamEndCapture", self._handle)
        _, self.n_nodes = _call("cuGraphGetNodes", self._graph, 0)
        self._exec = _call("cuGraphInstantiate", self._graph, 0)
        self.replays = 0

    def replay(self) -> None:
        """Queue the recorded launches on the stream (returns at once, like a kernel launch)."""
        _call("cuGraphLaunch", self._exec, self._handle)
        self.replays += 1

    def close(self) -> None:
        """Free the driver's graph objects (also done when the object is garbage-collected)."""
        drv = _driver() if (self._exec is not None or self._graph is not None) else None
        if self._exec is not None:
            drv.cuGraphExecDestroy(self._exec)
            self._exec = None
        if self._graph is not None:
            drv.cuGraphDestroy(self._graph)
            self._graph = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: the driver may be gone already
            pass


__all__ = ["CapturedGraph", "GraphError", "graphs_unavailable", "stream_handle"]
