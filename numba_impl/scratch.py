"""Device buffers the launchers keep between calls: scratch space and a placeholder array.

    buffer(name, n)   a float32 device array of >= n elements for `name` (split-K partial sums, the
                      LayerNorm backward's per-block parameter sums), allocated on first use and
                      grown when a larger shape needs more
    dummy()           a 1-element float32 device array, passed where a kernel takes an array it
                      does not use (no bias, no epilogue output)

Allocate before capturing a CUDA graph (numba_impl/graph.py: the first, eager call of each shape
does): an allocation inside a capture fails it. A buffer that grows is never freed, because a
graph recorded earlier may still point at the old one: it is kept in `_RETIRED` for the life of
the process.
"""

from __future__ import annotations

import numpy as np

from numba_impl._compat import cuda

_BUFFERS: dict[str, object] = {}
_RETIRED: list = []


def buffer(name: str, n: int):
    """A device buffer of >= n floats for `name`, allocated once and grown when needed."""
    buf = _BUFFERS.get(name)
    if buf is None or buf.size < n:
        if buf is not None:
            _RETIRED.append(buf)
        buf = _BUFFERS[name] = cuda.device_array(max(int(n), 1), dtype=np.float32)
    return buf


def dummy():
    """A 1-element device array to pass where a kernel takes an array it does not use."""
    if "dummy" not in _BUFFERS:
        _BUFFERS["dummy"] = cuda.to_device(np.zeros(1, dtype=np.float32))
    return _BUFFERS["dummy"]


__all__ = ["buffer", "dummy"]
