"""Hand-written CPU kernels for GPT-2's forward (fp32): the linear layers, decode attention and
the KV-cache store.

Why: a decode step reads every weight once for a few rows, so it is bound by memory, and MKL's
small-row gemm streams weights at about 14 GB/s on the 2-core reference machine where plain reads
run at 24 (it does not prefetch ahead of its arithmetic). The packed-panel kernel in
`cpu_kernels.cpp` prefetches and reaches about 20 GB/s: GPT-2 124M's products at 16 rows take 25 ms
instead of 38. With a prompt's hundreds of rows it is compute-bound and level with MKL, so one call
serves a step's decode and prompt rows together and the weights are read once per step. It also
applies GELU and adds the residual as it stores, saving two passes over the output.

Decode attention was one PyTorch call per row (that kept a row's bits independent of the batch) at
about 70 us of dispatch each; one call for all rows does the same arithmetic per row. The KV store
replaces two scatters of ~55 us each per layer with one memcpy loop.

Every kernel gives a row the same bits whatever else is in the batch, by construction (see the .cpp).

The source is compiled on first use with the machine's C++ compiler (`-O3 -march=native`, no torch
headers, about 2 s) into `kernels/` of the enclave cache (`enclave.envsettings.cache_dir`), keyed
by the source, the flags, the compiler and the CPU. Without a compiler, or if the build or its
self-check fails, `load()` logs why and returns None, and the forward keeps PyTorch's kernels.
Whether to use them, the compiler and the cache folder are the gateway's settings
(`CpuKernelSettings`: ENCLAVE_CPU_KERNELS=0 turns them off, CXX names the compiler).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from enclave.envsettings import cache_dir
from enclave.gateway.settings import CpuKernelSettings

log = logging.getLogger("enclave.gateway")

SOURCE = Path(__file__).with_name("cpu_kernels.cpp")
FLAGS = ["-O3", "-march=native", "-ffp-contract=fast", "-fopenmp", "-fPIC", "-shared", "-std=c++17"]
PANEL = 16
_float_p, _long = ctypes.c_void_p, ctypes.c_long


class PackedLinear:
    """A weight [in, out] (and bias) repacked into the kernel's column panels: `x @ weight + bias`."""

    def __init__(self, kernels: CpuKernels, weight: torch.Tensor, bias: torch.Tensor | None):
        k, n = weight.shape
        width = -(-n // PANEL) * PANEL
        padded = weight.new_zeros(k, width)
        padded[:, :n] = weight
        self.panels = padded.view(k, width // PANEL, PANEL).transpose(0, 1).contiguous()
        self.bias = None
        if bias is not None:
            self.bias = bias.new_zeros(width)
            self.bias[:n] = bias
        self.k, self.n, self._run = k, n, kernels.lib.enclave_linear

    def __call__(self, x: torch.Tensor, out: torch.Tensor, gelu: bool = False,
                 residual: torch.Tensor | None = None) -> torch.Tensor:
        """x [m, in] -> out [m, out] = x @ weight + bias, then GELU (tanh form) if `gelu`, then
        + `residual` [m, out] if given. Rows may be strided; each row must be contiguous."""
        shape = (x.shape[0], self.n)
        if x.dtype != torch.float32 or out.dtype != torch.float32 or x.stride(-1) != 1 or out.stride(-1) != 1 or x.shape[1] != self.k or out.shape != shape or (
                residual is not None and (residual.shape != shape or residual.stride(-1) != 1)):
            raise ValueError("PackedLinear needs row-contiguous [m, in] input and [m, out] output and residual")
        self._run(x.data_ptr(), x.stride(0), x.shape[0], self.k, self.panels.data_ptr(),
                  self.bias.data_ptr() if self.bias is not None else None, self.n, out.data_ptr(), out.stride(0),
                  int(gelu), residual.data_ptr() if residual is not None else None,
                  residual.stride(0) if residual is not None else 0)
        return out


class CpuKernels:
    def __init__(self, path: Path):
        self.lib = ctypes.CDLL(str(path))
        if self.lib.enclave_kernels_abi() != 3:
            raise OSError(f"{path} has another ABI")
        self.lib.enclave_linear.argtypes = [_float_p, _long, _long, _long, _float_p, _float_p, _long, _float_p, _long,
                                            ctypes.c_int, _float_p, _long]
        self.lib.enclave_linear.restype = None
        self.lib.enclave_decode_attention.argtypes = [_float_p, _long, _long, _long, _long, _float_p, _float_p,
                                                      _long, _long, _float_p, _float_p, ctypes.c_float, _float_p]
        self.lib.enclave_decode_attention.restype = ctypes.c_int
        self.lib.enclave_store_kv.argtypes = [_float_p, _long, _long, _long, _long, _float_p, _float_p, _long, _long,
                                              _float_p, _float_p]
        self.lib.enclave_store_kv.restype = ctypes.c_int

    def linear(self, weight: torch.Tensor, bias: torch.Tensor | None) -> PackedLinear:
        return PackedLinear(self, weight, bias)

    def decode_attention(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor,
                         lengths: torch.Tensor, scale: float, out: torch.Tensor) -> torch.Tensor:
        """q [B, H, D] (any row stride, heads and dims contiguous); caches [S, H, P, D] contiguous;
        slots and lengths int64 [B]: row b attends over positions 0..lengths[b]-1 of its slot.
        Writes and returns out [B, H*D]."""
        rows, heads, dim = q.shape
        if q.stride(2) != 1 or q.stride(1) != dim or k_cache.shape[1:2] + k_cache.shape[3:] != (heads, dim) \
                or v_cache.shape != k_cache.shape or out.shape != (rows, heads * dim) or not _all_contiguous(
                    k_cache, v_cache, out) or not _indices(rows, slots, lengths):
            raise ValueError("decode_attention: unexpected layout")
        done = self.lib.enclave_decode_attention(
            q.data_ptr(), q.stride(0), rows, heads, dim, k_cache.data_ptr(), v_cache.data_ptr(), k_cache.shape[0],
            k_cache.shape[2], slots.data_ptr(), lengths.data_ptr(), scale, out.data_ptr())
        if done == -1:
            raise ValueError(f"decode_attention: head size {dim} is not supported")
        if done == -2:
            raise ValueError("decode_attention: a slot or length is out of range")
        return out

    def store_kv(self, qkv: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor,
                 positions: torch.Tensor) -> None:
        """Row r's key and value (qkv [N, 3E]: queries, keys, values) into its slot at its position
        of the caches [S, H, P, D]; slots and positions int64 [N]."""
        heads, dim = k_cache.shape[1], k_cache.shape[3]
        rows = qkv.shape[0]
        if qkv.stride(1) != 1 or qkv.shape[1] != 3 * heads * dim or v_cache.shape != k_cache.shape \
                or not _indices(rows, slots, positions) or not _all_contiguous(k_cache, v_cache):
            raise ValueError("store_kv: unexpected layout")
        done = self.lib.enclave_store_kv(qkv.data_ptr(), qkv.stride(0), rows, heads, dim, k_cache.data_ptr(),
                                         v_cache.data_ptr(), k_cache.shape[0], k_cache.shape[2], slots.data_ptr(),
                                         positions.data_ptr())
        if done != 0:
            raise ValueError("store_kv: a slot or position is out of range")

    @staticmethod
    def supports(head_dim: int) -> bool:
        return head_dim in (16, 32, 64, 128)


def _all_contiguous(*tensors: torch.Tensor) -> bool:
    return all(t.is_contiguous() for t in tensors)


def _indices(rows: int, *columns: torch.Tensor) -> bool:
    """Index columns the C side reads as `long[rows]`."""
    return all(c.dtype == torch.int64 and c.shape == (rows,) and c.is_contiguous() for c in columns)


@functools.cache
def load(settings: CpuKernelSettings = CpuKernelSettings()) -> CpuKernels | None:
    """The compiled kernels, built on first use; None where `settings` turn them off, or (with the
    reason logged) where they can't be built."""
    if not settings.enabled:
        return None
    try:
        kernels = CpuKernels(_build(settings.compiler, Path(settings.cache) if settings.cache else cache_dir("kernels")))
        _self_check(kernels)
        return kernels
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        log.warning("CPU kernels unavailable, using PyTorch's (slower decode): %s", str(exc).strip()[:500])
        return None


def _build(compiler: str | None, folder: Path) -> Path:
    compiler = compiler or shutil.which("g++") or shutil.which("c++")
    if not compiler:
        raise OSError("no C++ compiler (g++) found")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), " ".join(FLAGS), version, _cpu_flags()]).encode()).hexdigest()
    target = folder / f"enclave_cpu_kernels-{key[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Built beside the target and renamed into place: processes building at once never load half a file.
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built = Path(scratch) / target.name
        done = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", str(built)], capture_output=True, text=True,
                              timeout=300)
        if done.returncode != 0:
            raise OSError(f"{Path(compiler).name} failed: {done.stderr[-400:]}")
        os.replace(built, target)
    return target


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            return next((line for line in info if line.startswith(("flags", "Features"))), "")
    except OSError:
        return ""


def _self_check(kernels: CpuKernels) -> None:
    """A few products and attentions against PyTorch, once per process: a miscompiled kernel must
    not serve wrong logits."""
    g = torch.Generator().manual_seed(0)
    for m, k, n, bias in ((1, 64, 40, True), (19, 96, 48, False)):
        x, w = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
        b = torch.randn(n, generator=g) if bias else None
        packed, want = kernels.linear(w, b), x @ w + (b if bias else 0)
        if not torch.allclose(packed(x, torch.empty(m, n)), want, atol=1e-4, rtol=1e-4):
            raise ValueError("the linear kernel disagrees with PyTorch")
        fused = packed(x, torch.empty(m, n), gelu=True, residual=want)
        if not torch.allclose(fused, F.gelu(want, approximate="tanh") + want, atol=1e-4, rtol=1e-4):
            raise ValueError("the linear kernel's GELU or residual disagrees with PyTorch")
    q = torch.randn(3, 2, 64, generator=g)
    cache_k, cache_v = torch.randn(4, 2, 40, 64, generator=g), torch.randn(4, 2, 40, 64, generator=g)
    slots, lengths = torch.tensor([2, 0, 3]), torch.tensor([1, 17, 40])
    got = kernels.decode_attention(q, cache_k, cache_v, slots, lengths, 0.125, torch.empty(3, 128))
    for row, (slot, length) in enumerate(zip(slots.tolist(), lengths.tolist())):
        want = F.scaled_dot_product_attention(
            q[row, :, None], cache_k[slot, :, :length], cache_v[slot, :, :length], scale=0.125)
        if not torch.allclose(got[row], want.reshape(-1), atol=1e-5, rtol=1e-4):
            raise ValueError("the attention kernel disagrees with PyTorch")
