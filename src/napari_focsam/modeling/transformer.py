"""SAM's two-way transformer: prompt tokens and image tokens attend to each other."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import MLPBlock


def _softmax_short_last_dim(x: torch.Tensor) -> torch.Tensor:
    """Softmax over a short last axis (a few tokens), written out: torch's fused CPU
    softmax does not vectorise over an axis of ~10 elements and is about 6x slower here."""
    e = (x - x.amax(dim=-1, keepdim=True)).exp()
    return e / e.sum(dim=-1, keepdim=True)


class TokenAttention(nn.Module):
    """Multi-head attention with an optional down-projection of the inner dimension."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.num_heads = num_heads
        inner = embedding_dim // downsample_rate
        self.q_proj = nn.Linear(embedding_dim, inner)
        self.k_proj = nn.Linear(embedding_dim, inner)
        self.v_proj = nn.Linear(embedding_dim, inner)
        self.out_proj = nn.Linear(inner, embedding_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        return x.reshape(B, N, self.num_heads, C // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                residual: torch.Tensor | None = None) -> torch.Tensor:
        """q (B, Nq, C), k and v (B, Nk, C) -> (B, Nq, C), plus ``residual`` (B, Nq, C) if given.

        The image side may be given once for all B prompts: q (1, Nq, C) against k, v (B, Nk, C)
        (image tokens attending to the prompts), or k, v (1, Nk, C) against q (B, Nq, C).
        """
        nq, nk, inner = q.shape[1], k.shape[1], self.q_proj.out_features
        if nq >= self.FOLD_MIN_TOKENS and nk * self.num_heads < inner:
            return self._few_keys(q, k, v, residual)
        if nk >= self.FOLD_MIN_TOKENS and nq * self.num_heads < inner:
            out = self._few_queries(q, k, v)
        else:
            B = max(q.shape[0], k.shape[0])
            out = self._projected(q.expand(B, -1, -1), k.expand(B, -1, -1), v.expand(B, -1, -1))
        return out if residual is None else residual + out

    def _projected(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The textbook form: project all tokens, attend per head, project back."""
        q, k, v = self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(c)) v, fused
        B, H, N, c = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(B, N, H * c))

    #: the folded forms below pay off only against thousands of image tokens
    FOLD_MIN_TOKENS = 1024

    def _head_weights(self, linear: nn.Linear) -> torch.Tensor:
        """(inner, C) projection weight -> (H, c, C) per-head blocks."""
        return linear.weight.view(self.num_heads, -1, linear.in_features)

    def _few_queries(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Few tokens attend to many image tokens, with the key and value projections
        folded into the queries: (q_h W_k,h) k_in^T equals q_h k_h^T up to a per-row
        constant (q_h . b_k,h) that softmax ignores, and attention rows sum to one, so
        softmax(.) (v_in W_v,h^T + b_v,h) = (softmax(.) v_in) W_v,h^T + b_v,h. Costs
        2 Nq H Nk C instead of 2 Nk C inner for projecting every image token.
        """
        B, nq, _ = q.shape
        H = self.num_heads
        qh = self._heads(self.q_proj(q))  # (B, H, Nq, c)
        c = qh.shape[-1]
        q_folded = torch.matmul(qh, self._head_weights(self.k_proj))  # (B, H, Nq, C)
        # image tokens shared by all B prompts (k, v: (1, Nk, C)): one product for all queries
        b = 1 if k.shape[0] == 1 and v.shape[0] == 1 else B
        scores = torch.matmul(q_folded.reshape(b, B // b * H * nq, -1), k.transpose(1, 2)) * c**-0.5
        pooled = torch.matmul(scores.softmax(dim=-1), v).view(B, H, nq, -1)  # (B, H, Nq, C)
        out = torch.matmul(pooled, self._head_weights(self.v_proj).transpose(1, 2))  # (B, H, Nq, c)
        out = out.transpose(1, 2).reshape(B, nq, H * c) + self.v_proj.bias
        return self.out_proj(out)

    def _few_keys(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  residual: torch.Tensor | None = None) -> torch.Tensor:
        """Many image tokens attend to few tokens, with the query and output projections
        folded into the keys and values: (W_q,h x + b_q,h) . k_h = x . (W_q,h^T k_h) +
        b_q,h . k_h, and sum_h a_h v_h W_o,h^T = sum_h a_h (v_h W_o,h^T). Costs
        2 Nq H Nk C instead of 2 Nq C inner for projecting every image token. With a
        ``residual``, the output bias is folded into the values (each row of the H x Nk
        attention weights sums to H) and the product accumulates onto the residual.
        """
        nq, C = q.shape[1:]
        B = max(q.shape[0], k.shape[0])
        H = self.num_heads
        kh, vh = self._heads(self.k_proj(k)), self._heads(self.v_proj(v))  # (B, H, Nk, c)
        nk, c = kh.shape[2], kh.shape[3]
        k_folded = torch.matmul(kh, self._head_weights(self.q_proj))  # (B, H, Nk, C)
        key_bias = torch.matmul(kh, self.q_proj.bias.view(H, c, 1)).view(B, 1, H, nk)
        if q.shape[0] == 1 < B:  # image tokens shared by all B prompts: one product for all keys
            scores = torch.mm(q[0], k_folded.reshape(B * H * nk, C).t()).view(nq, B, H, nk).transpose(0, 1)
        else:
            scores = torch.matmul(q, k_folded.reshape(B, H * nk, C).transpose(1, 2)).view(B, nq, H, nk)
        attn = _softmax_short_last_dim((scores + key_bias) * c**-0.5)
        w_out = self.out_proj.weight.view(C, H, c).permute(1, 2, 0)  # (H, c, C)
        v_folded = torch.matmul(vh, w_out).reshape(B, H * nk, C)  # (B, H*Nk, C)
        if residual is None:
            return torch.baddbmm(self.out_proj.bias.expand(B, 1, C), attn.reshape(B, nq, H * nk), v_folded)
        v_folded = v_folded + self.out_proj.bias / H
        return torch.baddbmm(residual.expand(B, nq, C), attn.reshape(B, nq, H * nk), v_folded)


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token->image, MLP on tokens, image->token; each followed by LN."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, downsample: int, skip_first_pe: bool):
        super().__init__()
        self.self_attn = TokenAttention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = TokenAttention(dim, num_heads, downsample)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim, nn.ReLU)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = TokenAttention(dim, num_heads, downsample)
        self.skip_first_pe = skip_first_pe

    def forward(self, queries, keys, query_pe, key_pe, keys_with_pe=None):
        """``keys_with_pe``: ``keys + key_pe`` when the caller already has it."""
        if self.skip_first_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        # keys do not change before norm4: one sum serves both cross-attentions
        k = keys + key_pe if keys_with_pe is None else keys_with_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(queries + query_pe, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        keys = self.norm4(self.cross_attn_image_to_token(k, queries + query_pe, queries, residual=keys))
        return queries, keys


def _tokens_of(image: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> contiguous (B, h*w, C) tokens."""
    return image.flatten(2).transpose(1, 2).contiguous()


class TwoWayTransformer(nn.Module):
    """(B, C, 64, 64) image + (B, N, C) tokens -> updated tokens (B, N, C) and image (B, 4096, C)."""

    def __init__(self, depth: int = 2, embedding_dim: int = 256, num_heads: int = 8,
                 mlp_dim: int = 2048, attention_downsample_rate: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(embedding_dim, num_heads, mlp_dim, attention_downsample_rate, i == 0)
            for i in range(depth)
        )
        self.final_attn_token_to_image = TokenAttention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(self, image_embedding, image_pe, point_embedding, image_tokens=None):
        """image_embedding (B, C, h, w); image_pe (1, C, h, w); point_embedding (B, N, C).

        ``image_tokens``: optional (tokens, tokens + pe tokens) of ``image_embedding``, both
        (B, h*w, C), from :meth:`image_tokens` (reused while the image side is unchanged).
        """
        if image_tokens is None:
            image_tokens = self.image_tokens(image_embedding, image_pe)
        keys, keys_with_pe = image_tokens
        image_pe = self._pe_tokens(image_pe)
        queries = point_embedding
        for i, layer in enumerate(self.layers):
            queries, keys = layer(queries, keys, point_embedding, image_pe, keys_with_pe if i == 0 else None)
        q, k = queries + point_embedding, keys + image_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys

    def image_tokens(self, image_embedding: torch.Tensor, image_pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, h, w) image -> its contiguous (B, h*w, C) tokens and tokens + PE tokens
        (the click-independent input of the first layer)."""
        # token layout, contiguous once, so that every projection is a single GEMM
        tokens = _tokens_of(image_embedding)
        return tokens, tokens + self._pe_tokens(image_pe)

    def _pe_tokens(self, image_pe: torch.Tensor) -> torch.Tensor:
        """Token layout of the positional encoding, kept while the same (cached) tensor
        comes back click after click; recomputed whenever gradients are on."""
        cached = getattr(self, "_pe_cache", None)
        if torch.is_grad_enabled() or cached is None or cached[0] is not image_pe:
            tokens = _tokens_of(image_pe)
            if torch.is_grad_enabled():
                return tokens
            self._pe_cache = cached = (image_pe, tokens)
        return cached[1]
