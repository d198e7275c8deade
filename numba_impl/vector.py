"""8- and 16-byte loads and stores of float32 arrays: the promise of alignment made explicit.

Numba reads and writes a float32 array one float at a time: it cannot know that a device array's
pointer is 16-byte aligned, so the compiler never merges four neighbouring accesses into one. These
small `@intrinsic`s are that promise: LLVM's ``load <4 x float>, align 16`` (NVVM emits
``ld.global.v4.f32`` for a global array, ``ld.shared.v4.f32`` for a shared one) and the matching store.

    load2(arr, i)                    -> (arr[i], arr[i + 1])                  one 8-byte load
    load4(arr, i)                    -> (arr[i], arr[i + 1], arr[i + 2], arr[i + 3])   one 16-byte load
    store4(arr, i, v0, v1, v2, v3)   arr[i : i + 4] = v0, v1, v2, v3          one 16-byte store

The caller guarantees the alignment: &arr[i] must be a multiple of 8 (load2) or 16 bytes (load4,
store4), i.e. the array's pointer aligned (`aligned16`; device allocations are) and i a multiple of
2 or 4. A misaligned vector access faults on the GPU. In the CUDA simulator (CI) these are plain
Python that raise on an index that breaks the rule, so the simulated kernels exercise the same
indexing.
"""

from __future__ import annotations

from numba_impl._compat import SIMULATOR

VEC = 4  # floats per 16-byte access


def aligned16(arr) -> bool:
    """Is the array's first element at a 16-byte aligned address? (device arrays, or host arrays in the
    simulator and in ptx_report, which type kernels with NumPy stand-ins)"""
    iface = getattr(arr, "__cuda_array_interface__", None) or getattr(arr, "__array_interface__", None)
    return iface is not None and iface["data"][0] % 16 == 0


if SIMULATOR:

    def _check(name: str, i, width: int) -> None:
        if i % width:
            raise IndexError(
                f"{name} at index {i}: not a multiple of {width}, the GPU's {4 * width}-byte access would be misaligned"
            )

    def load2(arr, i):
        """(arr[i], arr[i + 1]); i must be even (as on the GPU)."""
        _check("load2", i, 2)
        return arr[i], arr[i + 1]

    def load4(arr, i):
        """(arr[i], arr[i + 1], arr[i + 2], arr[i + 3]); i must be a multiple of 4 (as on the GPU)."""
        _check("load4", i, VEC)
        return arr[i], arr[i + 1], arr[i + 2], arr[i + 3]

    def store4(arr, i, v0, v1, v2, v3):
        """arr[i : i + 4] = (v0, v1, v2, v3); i must be a multiple of 4 (as on the GPU)."""
        _check("store4", i, VEC)
        arr[i], arr[i + 1], arr[i + 2], arr[i + 3] = v0, v1, v2, v3

else:
    from llvmlite import ir
    from numba import types
    from numba.cuda.extending import intrinsic

    _f32 = ir.FloatType()
    _i32 = ir.IntType(32)

    def _element_pointer(context, builder, arr_type, arr, index, index_type, width):
        """A pointer to <width x float> at &arr[index] (arr: a 1-D float32 array)."""
        data = context.make_array(arr_type)(context, builder, arr).data
        i = context.cast(builder, index, index_type, types.intp)
        return builder.bitcast(builder.gep(data, [i]), ir.VectorType(_f32, width).as_pointer())

    def _float32_array(arr) -> bool:
        return isinstance(arr, types.Array) and arr.dtype == types.float32 and arr.ndim == 1

    def _vector_load(width):
        def typer(typingctx, arr, i):
            if not (_float32_array(arr) and isinstance(i, types.Integer)):
                return None

            def codegen(context, builder, sig, args):
                ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1], width)
                vec = builder.load(ptr, align=4 * width)
                values = [builder.extract_element(vec, ir.Constant(_i32, k)) for k in range(width)]
                return context.make_tuple(builder, sig.return_type, values)

            return types.UniTuple(types.float32, width)(arr, i), codegen

        return typer

    def _load2(typingctx, arr, i):
        """(arr[i], arr[i + 1]) of a 1-D float32 array as one 8-byte load; &arr[i] 8-byte aligned."""
        return _vector_load(2)(typingctx, arr, i)

    def _load4(typingctx, arr, i):
        """(arr[i], ..., arr[i + 3]) of a 1-D float32 array as one 16-byte load; &arr[i] 16-byte aligned."""
        return _vector_load(VEC)(typingctx, arr, i)

    def _store4(typingctx, arr, i, v0, v1, v2, v3):
        """arr[i : i + 4] = (v0, v1, v2, v3) as one 16-byte store; &arr[i] 16-byte aligned."""
        if not (_float32_array(arr) and isinstance(i, types.Integer)):
            return None
        if any(v != types.float32 for v in (v0, v1, v2, v3)):
            return None

        def codegen(context, builder, sig, args):
            ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1], VEC)
            vec = ir.Constant(ir.VectorType(_f32, VEC), ir.Undefined)
            for k, value in enumerate(args[2:]):
                vec = builder.insert_element(vec, value, ir.Constant(_i32, k))
            builder.store(vec, ptr, align=16)
            return context.get_dummy_value()

        return types.void(arr, i, types.float32, types.float32, types.float32, types.float32), codegen

    load2 = intrinsic(_load2)
    load4 = intrinsic(_load4)
    store4 = intrinsic(_store4)


__all__ = ["VEC", "aligned16", "load2", "load4", "store4"]
