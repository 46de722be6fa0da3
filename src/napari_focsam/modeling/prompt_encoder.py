"""SAM's prompt encoder: clicks as sparse tokens, previous logits as a dense map."""

from __future__ import annotations

import math

import torch
from torch import nn

from .common import LayerNorm2d


class RandomFourierPositionEncoding(nn.Module):
    """Positional encoding with a fixed Gaussian frequency matrix (2, C/2).

    Coordinates normalised to [0, 1] become ``[sin(2*pi*p@G), cos(2*pi*p@G)]`` with
    p = 2 * coord - 1, a C-dimensional vector.
    """

    def __init__(self, num_pos_feats: int = 128) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_pos_feats))

    def _encode(self, coords: torch.Tensor) -> torch.Tensor:
        coords = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Dense encoding of an (h, w) grid of cell centres -> (C, h, w)."""
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (h, w, 2) as (x, y)
        return self._encode(grid).permute(2, 0, 1)

    def forward_with_coords(self, coords: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """(B, N, 2) pixel coordinates (x, y) on an (H, W) canvas -> (B, N, C)."""
        coords = coords.clone().float()
        coords[..., 0] = coords[..., 0] / image_size[1]
        coords[..., 1] = coords[..., 1] / image_size[0]
        return self._encode(coords)


class PromptEncoder(nn.Module):
    """Encodes clicks and a previous low-res mask for the mask decoder.

    Point labels: 1 positive, 0 negative, -1 padding ("not a point"); 2 and 3 are a box's
    top-left and bottom-right corners (SAM's box embedding: the corners' positional encodings
    plus the learnt corner embeddings), given after the points.
    """

    def __init__(
        self,
        embed_dim: int = 256,
        image_embedding_size: tuple[int, int] = (64, 64),
        input_image_size: tuple[int, int] = (1024, 1024),
        mask_in_chans: int = 16,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = image_embedding_size
        self.input_image_size = input_image_size
        self.pe_layer = RandomFourierPositionEncoding(embed_dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """(1, C, 64, 64) positional encoding of the image-embedding grid.

        It depends only on the fixed Gaussian matrix, so it is computed once per
        device/dtype/matrix version and reused on every click (not under autograd).
        """
        g = self.pe_layer.positional_encoding_gaussian_matrix
        key = (g.device, g.dtype, g._version, g.data_ptr())
        cached = getattr(self, "_dense_pe_cache", None)
        if cached is None or cached[0] != key or torch.is_grad_enabled():
            pe = self.pe_layer(self.image_embedding_size).unsqueeze(0)
            if torch.is_grad_enabled():
                return pe
            self._dense_pe_cache = (key, pe.clone())
            cached = self._dense_pe_cache
        return cached[1]

    def embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool = True) -> torch.Tensor:
        """(B, N, 2) canvas (x, y) and (B, N) labels -> (B, N+pad, C) sparse tokens."""
        points = points + 0.5  # pixel centres
        if pad:
            points = torch.cat([points, torch.zeros_like(points[:, :1])], dim=1)
            labels = torch.cat([labels, -torch.ones_like(labels[:, :1])], dim=1)
        emb = self.pe_layer.forward_with_coords(points, self.input_image_size)
        lab = labels[..., None]
        emb = torch.where(lab == -1, torch.zeros_like(emb), emb)
        emb = emb + (lab == -1) * self.not_a_point_embed.weight
        for i, table in enumerate(self.point_embeddings):
            emb = emb + (lab == i) * table.weight
        return emb

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        masks: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns sparse (B, N+1, C) and dense (B, C, 64, 64) prompt embeddings.

        ``masks`` are previous raw decoder logits (B, 1, 256, 256) or None.
        """
        if points is not None:
            # as SAM: a padding token only when the prompt holds no box corners
            has_box = bool((points[1] >= 2).any())
            sparse = self.embed_points(points[0], points[1], pad=not has_box)
            bs = sparse.shape[0]
        else:
            bs = masks.shape[0] if masks is not None else 1
            sparse = torch.empty(bs, 0, self.embed_dim, device=self.no_mask_embed.weight.device)
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            h, w = self.image_embedding_size
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(bs, -1, h, w)
        return sparse, dense
