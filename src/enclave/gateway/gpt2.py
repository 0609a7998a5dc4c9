"""GPT-2's forward pass for serving: the Hugging Face module's weights, our own batched arithmetic.

Hugging Face's `forward` is built for one padded batch that starts and ends together. Continuous
batching needs something else: every running sequence sits in its own *slot* of a preallocated KV
cache, a new sequence's prompt is prefilled into a free slot, and one decode step runs one token for
every running sequence in a single batched forward, each attending over its own valid prefix. New
prompts and the running sequences' next tokens share one forward, so the weights are read once for
both. The weights are the HF module's own tensors (no copy, except the LM head's transpose and the
packed weights on CPU), so this file holds arithmetic only.

GPT-2 recap: Conv1D computes `x @ weight + bias` (weight is [in, out]); the MLP activation is
`gelu_new`, the tanh approximation; layer norms come before attention and MLP (pre-LN); the LM head
is tied to the token embedding.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from enclave.gateway import cpu_kernels
from enclave.gateway import hooks as hook_points
from enclave.gateway.settings import CpuKernelSettings

# On CPU, oneDNN/MKL give a matrix row the same bits whatever the number of rows *between 2 and a
# few hundred* (checked for GPT-2's shapes with 1 and 2 threads); one row takes a gemv kernel and
# ~400+ rows a differently-split one. Batch-invariant mode keeps every product inside that range.
INVARIANT_ROWS = (2, 256)
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def _activation(name: str):
    """The MLP activation (other than GELU's tanh form, which `_Linear` applies itself), applied in
    place where PyTorch has an in-place kernel (the same kernel, so the same bits): the MLP's widest
    tensor then needs no second buffer."""
    if name == "gelu":
        return torch.ops.aten.gelu_
    from transformers.activations import ACT2FN

    return ACT2FN[name]


def _shape_free_attention():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


class _Linear:
    """`x @ weight + bias` with weight [in, out] (GPT-2's Conv1D layout), computed the way the
    forward asks: with our CPU kernel where it was built (batch-invariant at any row count, and
    faster than MKL both for a decode step's few rows and for prompts), else with PyTorch's, kept
    batch-invariant or not, with a pre-packed copy of the weight for one row count.

    MKL's sgemm repacks the weight on every call, which for a decode step (a few rows, every weight
    read once) is a large part of the cost; packing once for `pack_rows` rows made the 124M model's
    decode step at batch 16 about 1.3x faster on a 2-core CPU. A packed weight is kept only where the packed kernel gives
    the same bits as the plain product (probed once here: with 2 threads MKL splits the 3072-deep
    MLP projection differently, for one), so which path a row takes never shows in its bits.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, invariant: bool, pack_rows: int,
                 kernels: cpu_kernels.CpuKernels | None = None):
        self.weight, self.bias, self.invariant, self.pack_rows = weight, bias, invariant, pack_rows
        self.kernel = kernels.linear(weight, bias) if kernels is not None else None
        self.packed = None
        if pack_rows:
            packed = torch.ops.mkl._mkl_reorder_linear_weight(weight.t().contiguous(), pack_rows)
            probe = torch.randn(pack_rows, weight.shape[0], generator=torch.Generator().manual_seed(0))
            plain = self._plain(probe)
            fast = torch.ops.mkl._mkl_linear(probe, packed, weight.t(), bias, pack_rows)
            if torch.equal(fast, plain) and torch.equal(fast[:2], self._plain(probe[:2])):
                self.packed = packed

    def _plain(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        if self.bias is not None:
            return torch.addmm(self.bias, x, self.weight, out=out)
        return torch.mm(x, self.weight, out=out)

    def __call__(self, x: torch.Tensor, gelu: bool = False, residual: torch.Tensor | None = None) -> torch.Tensor:
        """The product, then GELU's tanh form if `gelu`, then + `residual`: fused into the CPU
        kernel's store, else in place afterwards (the same kernels, so the same bits, as before)."""
        if self.kernel is not None:
            return self.kernel(x, x.new_empty(x.shape[0], self.weight.shape[1]), gelu=gelu, residual=residual)
        y = self._product(x)
        if gelu:
            torch.ops.aten.gelu_(y, approximate="tanh")
        return y if residual is None else y.add_(residual)

    def _product(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[0]
        if self.packed is not None and self.pack_rows // 2 <= rows <= self.pack_rows:
            # Padding a half-full batch to the packed size costs less than the repacking it saves.
            padded = torch.cat([x, x.new_zeros(self.pack_rows - rows, x.shape[1])]) if rows < self.pack_rows else x
            out = torch.ops.mkl._mkl_linear(padded, self.packed, self.weight.t(), self.bias, self.pack_rows)
            return out[:rows]
        low, high = INVARIANT_ROWS
        if not self.invariant or low <= rows <= high:
            return self._plain(x)
        if rows < low:  # one row would take the gemv kernel: compute it twice
            return self._product(torch.cat([x, x]))[:rows]
        # Nearly equal slices, each well inside the range (> high / 2 rows), each written straight into
        # its rows of the output rather than concatenated afterwards (one copy of the output fewer).
        out = x.new_empty(rows, self.weight.shape[1])
        slices = -(-rows // high)
        for part, target in zip(x.tensor_split(slices), out.tensor_split(slices)):
            self._plain(part, out=target)
        return out


class _Block:
    """One transformer block's weights, and the two halves of its arithmetic."""

    def __init__(self, block, layer_idx: int, config, linear):
        self.ln_1 = (block.ln_1.weight, block.ln_1.bias)
        self.c_attn = linear(block.attn.c_attn.weight, block.attn.c_attn.bias)
        self.c_proj = linear(block.attn.c_proj.weight, block.attn.c_proj.bias)
        self.ln_2 = (block.ln_2.weight, block.ln_2.bias)
        self.c_fc = linear(block.mlp.c_fc.weight, block.mlp.c_fc.bias)
        self.mlp_proj = linear(block.mlp.c_proj.weight, block.mlp.c_proj.bias)
        self.eps = config.layer_norm_epsilon
        self.tanh_gelu = config.activation_function in TANH_GELUS
        self.act = None if self.tanh_gelu else _activation(config.activation_function)
        scale = 1.0 / math.sqrt(config.n_embd // config.n_head) if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:
            scale /= layer_idx + 1
        self.scale = scale

    def qkv(self, x: torch.Tensor) -> torch.Tensor:
        """[N, E] hidden states -> [N, 3E] queries, keys and values."""
        return self.c_attn(F.layer_norm(x, x.shape[-1:], *self.ln_1, self.eps))

    def finish(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """Residual stream after the attention output projection and the MLP."""
        x = self.c_proj(attended, residual=x)
        h = F.layer_norm(x, x.shape[-1:], *self.ln_2, self.eps)
        h = self.c_fc(h, gelu=True) if self.tanh_gelu else self.act(self.c_fc(h))
        return self.mlp_proj(h, residual=x)


class GPT2Forward:
    """Batched GPT-2 inference over a slot-based KV cache.

    `k_cache[layer]` and `v_cache[layer]` are [slots, n_head, n_positions, head_dim]. A slot's
    positions 0..n-1 hold the keys and values of its sequence's first n tokens. Positions past
    that are never attended, but a masked product still multiplies them by zero, so they must
    hold finite numbers: hence zero-initialised.

    `batch_invariant` (default: on CPU) makes a row's logits bit-identical whatever else is in the
    batch: decode rows attend one by one over exactly their own prefix, and every matrix product
    keeps its row count in `INVARIANT_ROWS`. On CUDA the decode rows share one masked attention call.

    On CPU in fp32 the linear layers and decode attention use `cpu_kernels` where they could be
    built (`kernel_settings`, on by default): both give a row the same bits at any batch by design.
    """

    def __init__(self, model, max_slots: int, batch_invariant: bool | None = None,
                 kernel_settings: CpuKernelSettings = CpuKernelSettings()):
        config = model.config
        self.n_layer, self.n_head, self.n_embd = config.n_layer, config.n_head, config.n_embd
        self.head_dim = self.n_embd // self.n_head
        self.context_length = config.n_positions
        self.eps = config.layer_norm_epsilon
        # Upcasting only changes anything below fp32: then attention runs in fp32 as HF does.
        self.upcast_attention = bool(config.reorder_and_upcast_attn)
        t = model.transformer
        self.wte, self.wpe = t.wte.weight, t.wpe.weight
        self.device, self.dtype = self.wte.device, self.wte.dtype
        on_cpu = self.device.type == "cpu"
        self.invariant = on_cpu if batch_invariant is None else batch_invariant
        # cuDNN's attention builds a plan for every new shape, and here the spans change every step
        # (tens of milliseconds each time on an H200); flash and memory-efficient kernels do not.
        self._attention_kernels = contextlib.nullcontext if on_cpu else _shape_free_attention
        self.ln_f = (t.ln_f.weight, t.ln_f.bias)
        fp32_cpu = on_cpu and self.dtype == torch.float32
        self.kernels = cpu_kernels.load(kernel_settings) if fp32_cpu \
            and cpu_kernels.CpuKernels.supports(self.head_dim) else None
        # Otherwise weights are packed for a full batch of decode rows where MKL can.
        pack_rows = max_slots if fp32_cpu and self.kernels is None and torch.backends.mkl.is_available() \
            and max_slots >= INVARIANT_ROWS[0] else 0

        def linear(weight, bias):
            return _Linear(weight, bias, self.invariant, pack_rows, self.kernels)

        # For MKL on CPU a contiguous [E, vocab] copy of the LM head is faster (about 1.4x at batch 16)
        # and, unlike the [vocab, E] layout, gives a row the same bits at any row count from 2 up. On
        # CUDA the [vocab, E] layout keeps the leading dimension aligned for tensor cores. Our kernels
        # pack their own copy, so they need none.
        lm_head = model.lm_head.weight.t()
        if on_cpu and self.kernels is None:
            lm_head = lm_head.contiguous()
        self.lm_head = linear(lm_head, None)
        self.blocks = [_Block(block, i, config, linear) for i, block in enumerate(t.h)]
        shape = (max_slots, self.n_head, self.context_length, self.head_dim)
        self.k_cache = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.n_layer)]
        self.v_cache = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.n_layer)]
        # Per-layer, per-slot views [1, H, P, D], made once: the row-by-row attention would
        # otherwise spend more time slicing than attending.
        if self.invariant and self.kernels is None:
            self._k_slots = [list(cache.split(1)) for cache in self.k_cache]
            self._v_slots = [list(cache.split(1)) for cache in self.v_cache]

    # -- the API --------------------------------------------------------------------------------

    def prefill(self, slot: int, token_ids: Sequence[int]) -> torch.Tensor:
        """Run a whole prompt into `slot` (positions 0..T-1); return the last position's logits [vocab]."""
        return self.forward([], [], [], [(slot, token_ids)])[0]

    def decode(self, slots: Sequence[int], token_ids: Sequence[int], positions: Sequence[int]) -> torch.Tensor:
        """One token for each slot at that slot's position, in one batched forward -> logits [B, vocab].
        Each slot attends over its own positions 0..position (the new token's included)."""
        return self.forward(slots, token_ids, positions, [])

    @torch.inference_mode()
    def forward(self, slots: Sequence[int], token_ids: Sequence[int], positions: Sequence[int],
                prompts: Sequence[tuple[int, Sequence[int]]]) -> torch.Tensor:
        """Decode rows and whole prompts in one forward. Returns logits [len(slots) + len(prompts),
        vocab]: one row per decode slot, then the last position of each prompt (written into its
        slot from position 0)."""
        slots, token_ids, positions = list(slots), list(token_ids), list(positions)
        prompts = [(slot, list(ids)) for slot, ids in prompts]
        b = len(slots)
        if not b == len(token_ids) == len(positions) or not (b or prompts):
            raise ValueError("forward needs one token and one position per decode slot, and some work")
        if any(not 0 < len(ids) <= self.context_length for _, ids in prompts):
            raise ValueError(f"a prompt must have 1..{self.context_length} tokens")
        if positions and not 0 <= min(positions) <= max(positions) < self.context_length:
            raise ValueError(f"positions must lie in 0..{self.context_length - 1}")

        row_slots = slots + [slot for slot, ids in prompts for _ in ids]
        row_positions = positions + [p for _, ids in prompts for p in range(len(ids))]
        slot_t = torch.as_tensor(row_slots, dtype=torch.long, device=self.device)
        pos_t = torch.as_tensor(row_positions, dtype=torch.long, device=self.device)
        ids_t = torch.as_tensor(token_ids + [t for _, ids in prompts for t in ids], dtype=torch.long, device=self.device)
        decode_attention = self._decode_attention(slots, positions) if b else None
        x = F.embedding(ids_t, self.wte) + F.embedding(pos_t, self.wpe)
        with self._attention_kernels():
            x = self._layers(x, slot_t, pos_t, b, decode_attention, prompts)
        ends, start = list(range(b)), b
        for _, ids in prompts:
            start += len(ids)
            ends.append(start - 1)
        return self._logits(x[ends] if len(ends) < x.shape[0] else x)

    def _layers(self, x, slot_t, pos_t, b: int, decode_attention, prompts) -> torch.Tensor:
        """The transformer blocks over all rows: write each row's keys and values into its slot,
        then attend (decode rows over their slot's prefix, each prompt causally over itself)."""
        for layer, (block, k_cache, v_cache) in enumerate(zip(self.blocks, self.k_cache, self.v_cache)):
            qkv = block.qkv(x)
            q, k, v = self._heads(qkv)
            if self.kernels is not None:  # one call instead of two scatters (~55 us each)
                self.kernels.store_kv(qkv, k_cache, v_cache, slot_t, pos_t)
            else:
                k_cache[slot_t, :, pos_t] = k
                v_cache[slot_t, :, pos_t] = v
            parts = [decode_attention(q[:b], layer, block.scale)] if b else []
            start = b
            for slot, ids in prompts:
                n = len(ids)
                parts.append(self._attend(q[start:start + n].transpose(0, 1)[None], k_cache[slot:slot + 1, :, :n],
                                          v_cache[slot:slot + 1, :, :n], block.scale, causal=True)[0])
                start += n
            x = block.finish(x, torch.cat(parts) if len(parts) > 1 else parts[0])
        return x

    @torch.inference_mode()
    def copy_slot(self, source: int, target: int, length: int) -> None:
        """Make `target` hold the first `length` positions of `source` (compaction, n > 1 samples)."""
        for cache in (*self.k_cache, *self.v_cache):
            cache[target, :, :length] = cache[source, :, :length]

    @torch.inference_mode()
    def sequence_logits(self, token_ids: Sequence[int]) -> torch.Tensor:
        """Logits [T, vocab] at every position of one sequence (causal), without touching the cache:
        for scoring a text and for next-token distributions."""
        ids = torch.as_tensor(token_ids, dtype=torch.long, device=self.device)
        n = ids.shape[0]
        if not 0 < n <= self.context_length:
            raise ValueError(f"a sequence must have 1..{self.context_length} tokens, not {n}")
        x = F.embedding(ids, self.wte) + F.embedding(torch.arange(n, device=self.device), self.wpe)
        with self._attention_kernels():
            for block in self.blocks:
                q, k, v = (part.transpose(0, 1)[None] for part in self._heads(block.qkv(x)))
                x = block.finish(x, self._attend(q, k, v, block.scale, causal=True)[0])
        return self._logits(x)

    @torch.inference_mode()
    def activations(self, token_ids: Sequence[int], hooks: Sequence[str], positions: Sequence[int]) -> dict:
        """The activations at `hooks` (TransformerLens names, `enclave.gateway.hooks`) for one
        sequence, cut to `positions`, as float16 on the CPU; without touching the cache.

        The same weights and the same linear layers as `sequence_logits` (our CPU kernels where
        built), with the residual additions and GELU done outside the fused kernels so that each
        hook point exists as a tensor: a hook's value may differ from the fused path's in the last
        bits. The forward stops after the last block a hook needs."""
        ids = torch.as_tensor(token_ids, dtype=torch.long, device=self.device)
        n = ids.shape[0]
        if not 0 < n <= self.context_length:
            raise ValueError(f"a sequence must have 1..{self.context_length} tokens, not {n}")
        wanted = set(hooks)
        parsed = [hook_points.parse(h, self.n_layer) for h in hooks]
        last_layer = max((layer for layer, _ in parsed if layer is not None), default=-1)
        if any(layer is None and name.startswith("ln_final.") for layer, name in parsed):
            last_layer = self.n_layer - 1
        pick = torch.as_tensor(list(positions), dtype=torch.long, device=self.device)
        out: dict[str, torch.Tensor] = {}

        def keep(name: str, value: torch.Tensor, axis: int = 0) -> None:
            if name in wanted:
                out[name] = value.index_select(axis, pick).to(device="cpu", dtype=torch.float16)

        def layer_norm(prefix: str, x: torch.Tensor, weight_bias) -> torch.Tensor:
            if f"{prefix}.hook_scale" in wanted or f"{prefix}.hook_normalized" in wanted:
                centred = x.float() - x.float().mean(-1, keepdim=True)
                scale = (centred.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()
                keep(f"{prefix}.hook_scale", scale)
                keep(f"{prefix}.hook_normalized", centred / scale)
            return F.layer_norm(x, x.shape[-1:], *weight_bias, self.eps)

        embed = F.embedding(ids, self.wte)
        pos_embed = F.embedding(torch.arange(n, device=self.device), self.wpe)
        keep("hook_embed", embed)
        keep("hook_pos_embed", pos_embed)
        x = embed + pos_embed
        causal = torch.ones(n, n, dtype=torch.bool, device=self.device).tril_()
        with self._attention_kernels():
            x = self._traced_blocks(x, last_layer, wanted, keep, layer_norm, causal)
        if "ln_final.hook_scale" in wanted or "ln_final.hook_normalized" in wanted:
            layer_norm("ln_final", x, self.ln_f)
        return {name: out[name] for name in hooks}

    def _traced_blocks(self, x, last_layer: int, wanted: set, keep, layer_norm, causal) -> torch.Tensor:
        """Blocks 0..last_layer of `activations`, keeping each hook point that is `wanted`."""
        n = x.shape[0]
        for i, block in enumerate(self.blocks[:last_layer + 1]):
            p = f"blocks.{i}."
            keep(p + "hook_resid_pre", x)
            q, k, v = self._heads(block.c_attn(layer_norm(p + "ln1", x, block.ln_1)))
            keep(p + "attn.hook_q", q)
            keep(p + "attn.hook_k", k)
            keep(p + "attn.hook_v", v)
            if p + "attn.hook_attn_scores" in wanted or p + "attn.hook_pattern" in wanted:
                # Written out (SDPA does not expose the pattern), in fp32 as TransformerLens does.
                qh, kh, vh = (t.transpose(0, 1).float() for t in (q, k, v))  # [H, T, D]
                scores = (qh @ kh.transpose(1, 2) * block.scale).masked_fill_(~causal, -math.inf)
                keep(p + "attn.hook_attn_scores", scores, axis=1)
                pattern = torch.softmax(scores, dim=-1)
                keep(p + "attn.hook_pattern", pattern, axis=1)
                z = (pattern @ vh).to(x.dtype).transpose(0, 1)  # [T, H, D]
            else:
                z = self._attend(*(t.transpose(0, 1)[None] for t in (q, k, v)), block.scale, causal=True)[0]
                z = z.view(n, self.n_head, self.head_dim)
            keep(p + "attn.hook_z", z)
            attn_out = block.c_proj(z.reshape(n, self.n_embd).contiguous())
            keep(p + "hook_attn_out", attn_out)
            x = x + attn_out
            keep(p + "hook_resid_mid", x)
            pre = block.c_fc(layer_norm(p + "ln2", x, block.ln_2))
            keep(p + "mlp.hook_pre", pre)
            post = torch.ops.aten.gelu(pre, approximate="tanh") if block.tanh_gelu else block.act(pre.clone())
            keep(p + "mlp.hook_post", post)
            mlp_out = block.mlp_proj(post)
            keep(p + "hook_mlp_out", mlp_out)
            x = x + mlp_out
            keep(p + "hook_resid_post", x)
        return x

    # -- pieces ---------------------------------------------------------------------------------

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(F.layer_norm(x, x.shape[-1:], *self.ln_f, self.eps))

    def _heads(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[N, 3E] -> three [N, n_head, head_dim] views."""
        n = qkv.shape[0]
        return tuple(part.view(n, self.n_head, self.head_dim) for part in qkv.split(self.n_embd, dim=1))

    def _sdpa(self, q, k, v, scale: float, mask=None, causal: bool = False) -> torch.Tensor:
        if self.upcast_attention and q.dtype != torch.float32:
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask,
                                                  is_causal=causal, scale=scale).to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale)

    def _attend(self, q, k, v, scale: float, mask=None, causal: bool = False) -> torch.Tensor:
        """SDPA over [B, H, Lq, D] queries and [B, H, Lk, D] keys/values -> [B, Lq, E]."""
        out = self._sdpa(q, k, v, scale, mask=mask, causal=causal)
        return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], self.n_embd)

    def _decode_attention(self, slots: list[int], positions: list[int]):
        """A function (q [B, H, D], layer, scale) -> [B, E]: each decode row attends over its own
        slot's positions 0..position. Built once per forward, used by every layer."""
        b = len(slots)
        if self.kernels is not None:
            slot_t = torch.as_tensor(slots, dtype=torch.long)
            length_t = torch.as_tensor(positions, dtype=torch.long) + 1
            return lambda q, layer, scale: self.kernels.decode_attention(
                q, self.k_cache[layer], self.v_cache[layer], slot_t, length_t, scale, q.new_empty(b, self.n_embd))
        if self.invariant:
            # Row by row over exactly its own prefix: on CPU no slower than one masked call (it
            # reads no padding), and a row's bits cannot depend on the other rows' lengths.
            spans = [(slot, position + 1) for slot, position in zip(slots, positions)]

            def each_row(q, layer, scale):
                queries = q.unsqueeze(2).split(1)  # B views [1, H, 1, D], made in one call
                k_slots, v_slots = self._k_slots[layer], self._v_slots[layer]
                rows = [self._sdpa(query, k_slots[s].narrow(2, 0, n), v_slots[s].narrow(2, 0, n), scale)
                        for query, (s, n) in zip(queries, spans)]
                return torch.cat(rows).view(b, self.n_embd)  # [B, H, 1, D] is already head-major

            return each_row
        span = max(positions) + 1
        pos_t = torch.as_tensor(positions, device=self.device)
        # An additive mask, made once per forward rather than converted from booleans in every
        # layer, with rows padded to a multiple of 16 so the memory-efficient kernel takes it as is.
        width = -(-span // 16) * 16
        hidden = torch.arange(width, device=self.device)[None, :] > pos_t[:, None]
        dtype = torch.float32 if self.upcast_attention else self.dtype
        mask = torch.zeros(b, width, dtype=dtype, device=self.device).masked_fill_(hidden, -math.inf)
        mask = mask.view(b, 1, 1, width)[..., :span]
        # Consecutive slots (the engine keeps them 0..B-1) are a strided view: no gather per layer.
        if slots == list(range(slots[0], slots[0] + b)):
            select = lambda cache: cache[slots[0]:slots[0] + b, :, :span]  # noqa: E731
        else:
            slot_t = torch.as_tensor(slots, device=self.device)
            select = lambda cache: cache[slot_t, :, :span]  # noqa: E731
        return lambda q, layer, scale: self._attend(
            q[:, :, None], select(self.k_cache[layer]), select(self.v_cache[layer]), scale, mask=mask)[:, 0]
