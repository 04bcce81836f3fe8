"""``PixelMLP``: a small per-pixel network on filter-bank features (the pixel-evidence model's network).

Two hidden layers; applied to (N, F) feature rows in training and to a (F, H, W) feature stack at prediction.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


class PixelMLP(nn.Module):
    """F standardised features -> one logit per pixel."""

    def __init__(self, n_features: int, hidden: int = 64):
        super().__init__()
        self.n_features, self.hidden = int(n_features), int(hidden)
        self.body = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(inplace=True),
                                  nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, F) -> (N,) logits."""
        return self.body(x).squeeze(-1)

    @torch.no_grad()
    def score_map(self, features: np.ndarray, mean: np.ndarray, std: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
        """Sigmoid probability map (H, W) float32 of a (F, H, W) feature stack (standardised with mean/std)."""
        f, h, w = features.shape
        return self.score_rows(features.reshape(f, -1).T, mean, std, chunk).reshape(h, w)

    @torch.no_grad()
    def score_rows(self, rows: np.ndarray, mean: np.ndarray, std: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
        """Sigmoid probabilities (N,) float32 of (N, F) feature rows (standardised with mean/std)."""
        if rows.shape[1] != self.n_features:
            raise ValueError(f"expected {self.n_features} feature channels, got {rows.shape[1]}")
        out = np.empty(rows.shape[0], np.float32)
        for i in range(0, rows.shape[0], chunk):
            z = torch.from_numpy(((rows[i:i + chunk] - mean) / std).astype(np.float32))
            out[i:i + chunk] = torch.sigmoid(self(z)).numpy()
        return out


__all__ = ["PixelMLP"]
