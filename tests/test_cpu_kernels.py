"""The gateway's hand-written CPU kernels: they build here, agree with PyTorch, give a row the same
bits whatever else is in the batch, and fall back to PyTorch's kernels when they can't be built."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from enclave.gateway import cpu_kernels
from enclave.gateway.gpt2 import GPT2Forward
from enclave.gateway.settings import CpuKernelSettings, GatewaySettings


@pytest.fixture(scope="module")
def kernels():
    built = cpu_kernels.load()
    # `make test` installs g++ (scripts/system-packages.sh): a machine without the kernels would
    # quietly serve at the old speed, so here their absence is a failure, not a skip.
    assert built is not None, "the CPU kernels did not build; see the warning logged by enclave.gateway"
    return built


def settings_from_env() -> CpuKernelSettings:
    """The kernel settings the gateway reads from this environment at start-up."""
    return GatewaySettings.from_env(model_dir="unused").kernels


@pytest.fixture
def fresh_load(monkeypatch, tmp_path):
    """`load()` from scratch with the settings from the environment: no memoised result, an empty
    build cache."""
    monkeypatch.setenv("ENCLAVE_CACHE_DIR", str(tmp_path))
    cpu_kernels.load.cache_clear()
    yield lambda: cpu_kernels.load(settings_from_env())
    cpu_kernels.load.cache_clear()


@pytest.mark.parametrize("k,n,bias", [(64, 40, True), (768, 2304, True), (96, 50257, False), (3072, 16, True)])
def test_linear_matches_torch(kernels, k, n, bias):
    g = torch.Generator().manual_seed(k + n)
    w, b = torch.randn(k, n, generator=g) * 0.05, torch.randn(n, generator=g) if bias else None
    packed = kernels.linear(w, b)
    for m in (1, 3, 16, 21):
        x = torch.randn(m, k, generator=g)
        want = x @ w + (b if bias else 0)
        torch.testing.assert_close(packed(x, torch.empty(m, n)), want, atol=2e-4, rtol=1e-4)


def test_linear_row_bits_do_not_depend_on_the_other_rows(kernels):
    g = torch.Generator().manual_seed(1)
    w, b = torch.randn(200, 72, generator=g), torch.randn(72, generator=g)
    packed = kernels.linear(w, b)
    x = torch.randn(40, 200, generator=g)
    full = packed(x, torch.empty(40, 72))
    for start, stop in ((0, 1), (5, 6), (0, 2), (3, 7), (0, 16), (9, 26), (17, 40), (39, 40)):
        part = packed(x[start:stop], torch.empty(stop - start, 72))
        assert torch.equal(part, full[start:stop]), (start, stop)


def test_linear_reads_strided_rows_and_writes_into_a_slice(kernels):
    g = torch.Generator().manual_seed(2)
    w = torch.randn(32, 48, generator=g)
    wide = torch.randn(5, 100, generator=g)
    x = wide[:, 10:42]  # rows 100 apart
    out = torch.full((7, 48), 7.0)
    kernels.linear(w, None)(x, out[1:6])
    torch.testing.assert_close(out[1:6], x @ w, atol=1e-4, rtol=1e-4)
    assert (out[0] == 7).all() and (out[6] == 7).all()
    with pytest.raises(ValueError):
        kernels.linear(w, None)(x.t(), out[1:6])


@pytest.mark.parametrize("m", [3, 40])
def test_linear_fuses_gelu_and_the_residual(kernels, m):
    g = torch.Generator().manual_seed(m)
    w, b = torch.randn(64, 40, generator=g) * 0.3, torch.randn(40, generator=g)
    x, residual = torch.randn(m, 64, generator=g), torch.randn(m, 40, generator=g)
    packed = kernels.linear(w, b)
    want = F.gelu(x @ w + b, approximate="tanh")
    torch.testing.assert_close(packed(x, torch.empty(m, 40), gelu=True), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed(x, torch.empty(m, 40), residual=residual), x @ w + b + residual,
                               atol=1e-4, rtol=1e-4)
    # Large arguments: tanh saturates to +-1 rather than overflowing.
    big = packed(x * 1000, torch.empty(m, 40), gelu=True)
    torch.testing.assert_close(big, F.gelu((x * 1000) @ w + b, approximate="tanh"), atol=1e-2, rtol=1e-5)


def test_store_kv_writes_each_rows_key_and_value_and_checks_bounds(kernels):
    heads, dim = 2, 16
    k_cache, v_cache = torch.zeros(3, heads, 8, dim), torch.zeros(3, heads, 8, dim)
    qkv = torch.randn(4, 3 * heads * dim)
    slots, positions = torch.tensor([2, 0, 2, 1]), torch.tensor([0, 7, 5, 3])
    kernels.store_kv(qkv, k_cache, v_cache, slots, positions)
    keys, values = qkv[:, heads * dim:2 * heads * dim], qkv[:, 2 * heads * dim:]
    want_k, want_v = torch.zeros_like(k_cache), torch.zeros_like(v_cache)
    want_k[slots, :, positions] = keys.view(4, heads, dim)
    want_v[slots, :, positions] = values.view(4, heads, dim)
    assert torch.equal(k_cache, want_k) and torch.equal(v_cache, want_v)
    for bad_slots, bad_positions in (([3, 0, 0, 0], [0, 0, 0, 0]), ([0, 0, 0, 0], [0, 8, 0, 0]),
                                     ([-1, 0, 0, 0], [0, 0, 0, 0])):
        with pytest.raises(ValueError, match="out of range"):
            kernels.store_kv(qkv, k_cache, v_cache, torch.tensor(bad_slots), torch.tensor(bad_positions))
    assert torch.equal(k_cache, want_k), "a refused call wrote nothing"
    with pytest.raises(ValueError, match="layout"):
        kernels.store_kv(qkv, k_cache, v_cache, slots.int(), positions)


@pytest.mark.parametrize("dim", [16, 64, 128])
def test_decode_attention_matches_sdpa(kernels, dim):
    g = torch.Generator().manual_seed(dim)
    heads, slots, positions = 3, 5, 300
    k_cache, v_cache = (torch.randn(slots, heads, positions, dim, generator=g) for _ in range(2))
    qkv = torch.randn(6, 3 * heads * dim, generator=g)
    q = qkv[:, :heads * dim].view(6, heads, dim)  # the forward's layout: a view of the fused projection
    rows = [(4, 1), (0, 15), (2, 16), (1, 17), (3, 300), (0, 129)]
    slot_t, length_t = (torch.tensor(column) for column in zip(*rows))
    got = kernels.decode_attention(q, k_cache, v_cache, slot_t, length_t, dim ** -0.5, torch.empty(6, heads * dim))
    for row, (slot, length) in enumerate(rows):
        want = F.scaled_dot_product_attention(q[row, :, None], k_cache[slot, :, :length], v_cache[slot, :, :length],
                                              scale=dim ** -0.5)
        torch.testing.assert_close(got[row], want.reshape(-1), atol=2e-5, rtol=1e-4)
    # A row's bits do not depend on the other rows or on the order of the batch.
    for subset in ([3], [5, 1], [2, 0, 4]):
        part = kernels.decode_attention(q[subset], k_cache, v_cache, slot_t[subset], length_t[subset], dim ** -0.5,
                                        torch.empty(len(subset), heads * dim))
        assert torch.equal(part, got[subset])


def test_decode_attention_softmax_survives_large_scores(kernels):
    # Scores in the thousands: the kernel subtracts the maximum before exponentiating, as SDPA does.
    q = torch.full((1, 1, 64), 30.0)
    k_cache = torch.randn(1, 1, 50, 64, generator=torch.Generator().manual_seed(3)) * 10
    v_cache = torch.randn(1, 1, 50, 64)
    got = kernels.decode_attention(q, k_cache, v_cache, torch.tensor([0]), torch.tensor([50]), 1.0, torch.empty(1, 64))
    want = F.scaled_dot_product_attention(q[:, :, None], k_cache, v_cache, scale=1.0).reshape(1, 64)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_decode_attention_refuses_out_of_range_slots_and_lengths(kernels):
    q, cache = torch.randn(1, 1, 16), torch.randn(2, 1, 4, 16)
    for slot, length in ((2, 1), (0, 0), (0, 5), (-1, 1)):
        with pytest.raises(ValueError, match="out of range"):
            kernels.decode_attention(q, cache, cache, torch.tensor([slot]), torch.tensor([length]), 1.0,
                                     torch.empty(1, 16))


def test_unsupported_head_size_is_refused(kernels):
    with pytest.raises(ValueError, match="head size 24"):
        kernels.decode_attention(torch.randn(1, 1, 24), torch.randn(1, 1, 4, 24), torch.randn(1, 1, 4, 24),
                                 torch.tensor([0]), torch.tensor([4]), 1.0, torch.empty(1, 24))


@pytest.fixture(scope="module")
def head64_model():
    """GPT-2's head size (64) in a model small enough to be quick."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=128, n_head=2, n_positions=128)).eval()


def test_forward_with_kernels_agrees_with_pytorch_and_stays_batch_invariant(kernels, head64_model):
    with_kernels = GPT2Forward(head64_model, max_slots=4)
    without = GPT2Forward(head64_model, max_slots=4, kernel_settings=CpuKernelSettings(enabled=False))
    assert with_kernels.kernels is not None and without.kernels is None
    prompts = [[464 + i * 3 for i in range(n)] for n in (5, 30, 1, 17)]
    for forward in (with_kernels, without):
        for slot, prompt in enumerate(prompts):
            forward.prefill(slot, prompt)
    positions = [len(p) for p in prompts]
    fast = with_kernels.decode([0, 1, 2, 3], [11, 12, 13, 14], positions)
    torch.testing.assert_close(fast, without.decode([0, 1, 2, 3], [11, 12, 13, 14], positions), atol=1e-4, rtol=0)
    # The same row alone, beside other rows, and beside a new prompt: the same bits.
    assert torch.equal(with_kernels.decode([2], [13], positions[2:3])[0], fast[2])
    assert torch.equal(with_kernels.decode([3, 2], [14, 13], [positions[3], positions[2]])[1], fast[2])
    beside_prompt = with_kernels.forward([2], [13], positions[2:3], [(0, prompts[0])])
    assert torch.equal(beside_prompt[0], fast[2])


def test_load_builds_once_into_the_cache_and_reuses_it(fresh_load, tmp_path):
    assert fresh_load() is not None
    built = list((tmp_path / "kernels").glob("*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    cpu_kernels.load.cache_clear()
    assert fresh_load() is not None
    assert [p.stat().st_mtime_ns for p in (tmp_path / "kernels").glob("*.so")] == [stamp]


def test_without_a_compiler_the_forward_falls_back_and_says_why(fresh_load, monkeypatch, caplog, head64_model):
    monkeypatch.setenv("CXX", "/bin/false")
    with caplog.at_level(logging.WARNING, logger="enclave.gateway"):
        assert fresh_load() is None
    assert "CPU kernels unavailable" in caplog.text and "false failed" in caplog.text
    forward = GPT2Forward(head64_model, max_slots=2, kernel_settings=settings_from_env())
    assert forward.kernels is None
    forward.prefill(0, [464, 318])
    assert torch.isfinite(forward.decode([0], [50], [2])).all()


def test_switched_off_by_environment(fresh_load, monkeypatch):
    monkeypatch.setenv("ENCLAVE_CPU_KERNELS", "0")
    assert fresh_load() is None
