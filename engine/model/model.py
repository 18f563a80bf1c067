"""A Llama-family decoder (Llama, Qwen2, Mistral, SmolLM) over a paged KV cache.

RMSNorm -> attention (RoPE, grouped-query) -> residual -> RMSNorm -> SwiGLU -> residual,
with the numerics of the Hugging Face implementation in float32. In bfloat16 the residual
stream and the norms stay in float32 (matrix products, attention and the KV cache are
bfloat16): 30 layers of bf16 residual additions would cost about twice the logit error,
for a few element-wise operations. Q, K and V are one matrix product, and so are gate and up.
Weights are plain tensors, read-only after loading; the model holds no per-request state,
so ``forward`` is a pure function of its inputs and the KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.config import ModelConfig
from engine.errors import ModelNotFoundError
from engine.model.attention import AttentionMetadata, paged_attention
from engine.model.kv_cache import KVCache
from engine.model.rope import apply_rope, rope_table


@dataclass(frozen=True)
class LayerWeights:
    input_norm: torch.Tensor  # [hidden]
    qkv: torch.Tensor  # [(Hq + 2 Hkv) * D, hidden]
    qkv_bias: torch.Tensor | None  # [(Hq + 2 Hkv) * D]
    o: torch.Tensor  # [hidden, Hq * D]
    post_norm: torch.Tensor  # [hidden]
    gate_up: torch.Tensor  # [2 * intermediate, hidden]
    down: torch.Tensor  # [hidden, intermediate]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x: [T, hidden] float32 -> [T, hidden] in the weight's dtype (cast before the weight,
    as transformers does)."""
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(weight.dtype)


def _take(weights: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    if name not in weights:
        raise ModelNotFoundError(f"the weights lack tensor {name}")
    return weights[name]


def _layer_weights(w: dict[str, torch.Tensor], i: int, bias: bool) -> LayerWeights:
    p = f"model.layers.{i}."
    attn = [_take(w, f"{p}self_attn.{n}_proj.weight") for n in "qkv"]
    return LayerWeights(
        input_norm=_take(w, f"{p}input_layernorm.weight"),
        qkv=torch.cat(attn),
        qkv_bias=torch.cat([_take(w, f"{p}self_attn.{n}_proj.bias") for n in "qkv"]) if bias else None,
        o=_take(w, f"{p}self_attn.o_proj.weight"),
        post_norm=_take(w, f"{p}post_attention_layernorm.weight"),
        gate_up=torch.cat([_take(w, f"{p}mlp.gate_proj.weight"), _take(w, f"{p}mlp.up_proj.weight")]),
        down=_take(w, f"{p}mlp.down_proj.weight"),
    )


class LlamaModel:
    def __init__(self, config: ModelConfig, weights: dict[str, torch.Tensor], max_position: int):
        self.config = config
        self.embed = _take(weights, "model.embed_tokens.weight")  # [V, hidden]
        self.dtype = self.embed.dtype
        self.layers = [_layer_weights(weights, i, config.attention_bias) for i in range(config.num_layers)]
        self.norm = _take(weights, "model.norm.weight")
        head = self.embed if config.tie_word_embeddings else _take(weights, "lm_head.weight")
        # Logits in float32: bfloat16 logits (8-bit mantissa, steps of 0.125 at 20) tie often
        # enough to flip greedy choices; the extra cost is one matrix-vector row per sequence.
        self.lm_head = head.float()  # [V, hidden]
        self.cos_sin = rope_table(config, max_position, self.dtype).to(self.embed.device)  # [P, 2, D]

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMetadata,
        kv_cache: KVCache,
        logit_rows: torch.Tensor,
    ) -> torch.Tensor:
        """Logits of the rows in ``logit_rows``.

        input_ids, positions, the slot mapping: [T]; logit_rows: [B] int64.
        Writes the K/V of all T rows into ``kv_cache``. Returns [B, vocab] float32.
        """
        cfg = self.config
        h = self.embed[input_ids].float()  # [T, hidden], the residual stream in float32
        qk_heads = cfg.num_heads + cfg.num_kv_heads
        rope = _rope_cuda if h.is_cuda else _rope_torch(self.cos_sin, positions)
        delta = None  # what the last block adds to the residual stream
        for i, layer in enumerate(self.layers):
            x = residual_norm(h, delta, layer.input_norm, cfg.rms_norm_eps)
            heads = F.linear(x, layer.qkv, layer.qkv_bias).view(-1, qk_heads + cfg.num_kv_heads, cfg.head_dim)
            qk = rope(heads[:, :qk_heads], self.cos_sin, positions)  # [T, Hq + Hkv, D]
            q, k = qk.split([cfg.num_heads, cfg.num_kv_heads], 1)
            o = paged_attention(q, k, heads[:, qk_heads:], kv_cache.layer(i), meta)  # [T, Hq, D]
            x = residual_norm(h, F.linear(o.flatten(1), layer.o), layer.post_norm, cfg.rms_norm_eps)
            gate, up = F.linear(x, layer.gate_up).chunk(2, dim=-1)  # [T, I] each
            delta = F.linear(F.silu(gate) * up, layer.down)
        last = residual_norm(h, delta, self.norm, cfg.rms_norm_eps)[logit_rows]  # [B, hidden]
        return F.linear(last.float(), self.lm_head)


def residual_norm(h: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor,
                  eps: float) -> torch.Tensor:
    """``h += delta`` in place (if given); returns RMSNorm of ``h`` in the weight's dtype.
    On a GPU one fused kernel does both."""
    if h.is_cuda:
        from engine.model.triton_kernels import residual_rms_norm

        return residual_rms_norm(h, delta, weight, eps)
    if delta is not None:
        h += delta
    return rms_norm(h, weight, eps)


def _rope_torch(cos_sin: torch.Tensor, positions: torch.Tensor):
    """RoPE with PyTorch operations, the positions' cos and sin gathered once per step."""
    rows = cos_sin[positions].unsqueeze(2)  # [T, 2, 1, D]
    cos, sin = rows[:, 0], rows[:, 1]

    def rope(x: torch.Tensor, _table: torch.Tensor, _positions: torch.Tensor) -> torch.Tensor:
        return apply_rope(x, cos, sin)

    return rope


def _rope_cuda(x: torch.Tensor, cos_sin: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """RoPE in place, one kernel for the step's queries and keys."""
    from engine.model.triton_kernels import rope_

    rope_(x, cos_sin, positions)
    return x
