# Copyright (c) napari-focsam developers.
# SPDX-License-Identifier: BSD-3-Clause
"""P-DyReLU: the query-conditioned dynamic ReLU of FocSAM (design doc section 2)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class PixelDynamicReLU(nn.Module):
    """Pixel-wise dynamic ReLU with two linear pieces combined by an element-wise max.

    For window tokens ``x`` (N, L, C) and a projected query token ``q`` (N, 1, C):

    * pixel piece: ``s = x @ q^T`` (N, L, 1), one raw dot product per token;
      ``[a0 | b0] = tanh(pixel_mlp(s)) * exp(pixel_scale) + pixel_bias`` (N, L, 2C);
      ``P = a0 * x + b0``.
    * channel piece: ``m = mean_L(x)`` (N, 1, C), the per-window token mean;
      ``[a1 | b1] = tanh(channel_mlp(m)) * exp(channel_scale) + channel_bias`` (N, 1, 2C);
      ``Q = a1 * x + b1``.
    * output: ``max(P, Q)`` (N, L, C).

    Coefficient layout: the ``2C`` outputs are split into halves; the first ``C`` are the
    slopes ``a`` and the last ``C`` the intercepts ``b`` (this is the layout the official
    FocSAM checkpoint was trained with).  ``pixel_scale``/``pixel_bias``/``channel_scale``/
    ``channel_bias`` are zero-initialised, so the rescale starts as the identity.
    """

    def __init__(self, channels: int, hidden_dim: int | None = None) -> None:
        """
        Arguments:
          channels (int): token width C.
          hidden_dim (int or None): hidden width of both MLPs (default C, as in FocSAM).
        """
        super().__init__()
        hidden_dim = channels if hidden_dim is None else hidden_dim
        self.channels = channels
        self.pixel_scale = nn.Parameter(torch.zeros(2 * channels))
        self.pixel_bias = nn.Parameter(torch.zeros(2 * channels))
        self.pixel_mlp = nn.Sequential(
            nn.Linear(1, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, 2 * channels),
            nn.Tanh(),
        )
        self.channel_scale = nn.Parameter(torch.zeros(2 * channels))
        self.channel_bias = nn.Parameter(torch.zeros(2 * channels))
        self.channel_mlp = nn.Sequential(
            nn.Linear(channels, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, 2 * channels),
            nn.Tanh(),
        )

    def _coefficients(self, h: Tensor, scale: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
        """h: (..., 2C) tanh outputs -> slope (..., C), intercept (..., C)."""
        h = h * scale.exp() + bias
        return h[..., : self.channels], h[..., self.channels :]

    def forward(self, x: Tensor, q: Tensor) -> Tensor:
        """
        Arguments:
          x (Tensor): (N, L, C) normalised window tokens.
          q (Tensor): (N, 1, C) projected query token of each window.

        Returns:
          (Tensor): (N, L, C).
        """
        a0, b0 = self._coefficients(
            self.pixel_mlp(x @ q.transpose(-1, -2)), self.pixel_scale, self.pixel_bias
        )
        a1, b1 = self._coefficients(
            self.channel_mlp(x.mean(dim=1, keepdim=True)), self.channel_scale, self.channel_bias
        )
        return torch.maximum(a0 * x + b0, a1 * x + b1)


# Short alias matching the paper's name.
PDyReLU = PixelDynamicReLU
