"""The contract between `decode.c` and Python: the ctypes mirrors of its structs, the ABI
version, and `check`, which refuses a library whose structs or version differ from these.

A struct passed across ctypes must match its C definition byte for byte, and nothing in
ctypes says when it does not: drift corrupts memory. So the library exports `gptcli_abi`
(its version and the `sizeof` of every struct in `STRUCTS`' order) and `check` compares them
with `ctypes.sizeof` here before any other call. A new entry point adds its structs at the end
of `STRUCTS` and of the C list in `gptcli_abi`; a change in what an existing struct or
function means bumps `VERSION` on both sides. No torch here (`library()` checks before it
hands the library out).
"""

from __future__ import annotations

import ctypes

VERSION = 1
P = ctypes.c_void_p


class Matrix(ctypes.Structure):
    _fields_ = [("w", P), ("scale", P), ("bias", P)]


class Layer(ctypes.Structure):
    _fields_ = [
        ("ln1_w", P),
        ("ln1_b", P),
        ("ln2_w", P),
        ("ln2_b", P),
        ("q_norm", P),
        ("k_norm", P),
        ("attn", Matrix),
        ("proj", Matrix),
        ("fc", Matrix),
        ("mlp_proj", Matrix),
    ]


class Model(ctypes.Structure):
    _fields_ = [
        ("n_layer", ctypes.c_int64),
        ("n_embd", ctypes.c_int64),
        ("n_head", ctypes.c_int64),
        ("head_size", ctypes.c_int64),
        ("vocab", ctypes.c_int64),
        ("max_len", ctypes.c_int64),
        ("family", ctypes.c_int32),
        ("wtype", ctypes.c_int32),
        ("ptype", ctypes.c_int32),
        ("embed_norm", ctypes.c_int32),
        ("eps", ctypes.c_float),
        ("wte", P),
        ("wpe", P),
        ("ln_f_w", P),
        ("ln_f_b", P),
        ("head", Matrix),
        ("k_cache", P),
        ("v_cache", P),
        ("layers", ctypes.POINTER(Layer)),
        ("layer_stride", ctypes.c_int64),
    ]


class Rows(ctypes.Structure):
    """Which cache rows a pass of gptcli_forward_rows feeds, and where each one stands."""

    _fields_ = [
        ("n", ctypes.c_int64),
        ("row", P),
        ("pos", P),
        ("count", P),
        ("row_stride", ctypes.c_int64),
    ]


# Every struct an entry point takes, in the order gptcli_abi reports their sizes
# (gptcli_forward: Model, which holds Layer and Matrix; gptcli_forward_rows: Model and Rows).
STRUCTS: list[type[ctypes.Structure]] = [Matrix, Layer, Model, Rows]


class AbiMismatch(Exception):
    """The library speaks another ABI than this Python side (one line: what differs)."""


def check(lib: ctypes.CDLL) -> None:
    """Raises AbiMismatch unless `lib` reports VERSION and the sizes of STRUCTS."""
    try:
        report = lib.gptcli_abi
    except AttributeError:
        raise AbiMismatch("the native kernel exports no ABI (gptcli_abi)") from None
    report.restype = ctypes.c_int32
    report.argtypes = [
        ctypes.POINTER(ctypes.c_int32),
        ctypes.POINTER(ctypes.c_int64),
        ctypes.c_int32,
    ]
    version = ctypes.c_int32(-1)
    capacity = len(STRUCTS) + 16
    sizes = (ctypes.c_int64 * capacity)()
    count = report(ctypes.byref(version), sizes, capacity)
    if version.value != VERSION:
        raise AbiMismatch(f"the native kernel speaks ABI {version.value}, this gptcli {VERSION}")
    if count != len(STRUCTS):
        raise AbiMismatch(
            f"the native kernel passes {count} structs, this gptcli {len(STRUCTS)} (ABI {VERSION})"
        )
    for struct, size in zip(STRUCTS, sizes, strict=False):
        if size != ctypes.sizeof(struct):
            raise AbiMismatch(
                f"the native kernel's {struct.__name__} is {size} bytes, "
                f"this gptcli's {ctypes.sizeof(struct)} (ABI {VERSION})"
            )
