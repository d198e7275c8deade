"""A row of C floats held in registers by one warp: the layout the warp kernels of LayerNorm
(kernels/layernorm.py) and RMSNorm (kernels/rmsnorm.py) share.

    row = warp_row(C, vec)            built once per (C, vec): C and the layout are compile-time constants
    row.VPL                           values per lane (ceil(C / 32), or whole runs of 4 with vec)
    row.CP                            VPL * 32: C rounded up to whole lanes (a shared row of per-channel sums)
    row.channel(lane, k)              the channel of the lane's k-th value
    row.load_row(values, src, base, lane, valid)   values[k] = src[base + channel(lane, k)], 0 past C
                                                   or when not `valid` (a row past the end)
    row.store_row(dst, base, lane, values)         dst[base + channel(lane, k)] = values[k] for channels < C

Without vec, lane l holds channels l, l + 32, l + 64, ... (one float access each, coalesced across the
warp). With vec (C % 4 == 0 and every array 16-byte aligned: the caller checks, `row_vectorized`), lane
l holds the runs of 4 channels 4l + 128j .. 4l + 128j + 3 and moves each run with one 16-byte load or
store (numba_impl/vector.py).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

from numba_impl._compat import WARP, ceil_div, device, float32
from numba_impl.vector import VEC, aligned16, load4, store4


class WarpRow(NamedTuple):
    VPL: int
    CP: int
    channel: object
    load_row: object
    store_row: object


def row_vectorized(C: int, *arrays) -> bool:
    """Can the warp kernels move runs of 4 channels with 16-byte accesses? Rows of a multiple of 4 floats
    (so every row starts 16-byte aligned) in arrays whose pointers are 16-byte aligned."""
    return C % VEC == 0 and all(aligned16(a) for a in arrays)


@functools.cache
def warp_row(C: int, vec: bool = False) -> WarpRow:
    """The device functions that move one row of C channels between memory and a warp's registers."""
    VPL = VEC * ceil_div(C, VEC * WARP) if vec else ceil_div(C, WARP)  # values per lane
    RUNS = VPL // VEC  # vec: runs of 4 per lane

    @device
    def channel(lane, k):
        if vec:
            return VEC * lane + VEC * WARP * (k // VEC) + k % VEC
        return lane + WARP * k

    @device
    def load_row(values, src, base, lane, valid):
        """values[k] = src[base + channel(lane, k)] (0 outside the row or for an invalid row)."""
        if vec:
            for j in range(RUNS):
                c = VEC * lane + VEC * WARP * j
                v = VEC * j
                if valid and c < C:
                    values[v], values[v + 1], values[v + 2], values[v + 3] = load4(src, base + c)
                else:
                    for u in range(VEC):
                        values[v + u] = float32(0.0)
        else:
            for k in range(VPL):
                c = lane + WARP * k
                values[k] = src[base + c] if valid and c < C else float32(0.0)

    @device
    def store_row(dst, base, lane, values):
        if vec:
            for j in range(RUNS):
                c = VEC * lane + VEC * WARP * j
                if c < C:
                    store4(
                        dst, base + c, values[VEC * j], values[VEC * j + 1], values[VEC * j + 2], values[VEC * j + 3]
                    )
        else:
            for k in range(VPL):
                c = lane + WARP * k
                if c < C:
                    dst[base + c] = values[k]

    return WarpRow(VPL, VPL * WARP, channel, load_row, store_row)


__all__ = ["WarpRow", "row_vectorized", "warp_row"]
