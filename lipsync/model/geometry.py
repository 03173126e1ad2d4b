"""Geometry decoder: audio latent -> pose-normalized 3D vertices through the speaker's PCA basis."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


def fit_pca(vertices: np.ndarray, components: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PCA of flattened shapes (T, V, 3): mean (V*3,), basis (K, V*3) orthonormal rows, std (K,)."""
    x = np.asarray(vertices, np.float64).reshape(len(vertices), -1)
    mean = x.mean(0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    k = min(components, len(vt))
    std = s[:k] / np.sqrt(max(len(x) - 1, 1))
    return mean.astype(np.float32), vt[:k].astype(np.float32), std.astype(np.float32)


class GeometryDecoder(nn.Module):
    """(B, latent) -> (B, V, 3): ``mean + (head(latent) * std) @ basis``.

    The output layer starts as the speaker's own PCA (mean as bias, basis scaled by each
    component's standard deviation as weights), so the network begins by predicting plausible
    shapes of this face and only learns coefficients; the basis is fine-tuned with the rest.
    """

    def __init__(self, latent: int, num_vertices: int, components: int):
        super().__init__()
        self.num_vertices = num_vertices
        self.head = nn.Sequential(nn.Linear(latent, 128), nn.LeakyReLU(0.2, inplace=True), nn.Linear(128, components))
        self.basis = nn.Linear(components, num_vertices * 3)

    def init_from_pca(self, mean: np.ndarray, basis: np.ndarray, std: np.ndarray) -> None:
        with torch.no_grad():
            k = basis.shape[0]
            w = torch.zeros_like(self.basis.weight)
            w[:, :k] = torch.from_numpy((basis * std[:, None]).T.copy())
            self.basis.weight.copy_(w)
            self.basis.bias.copy_(torch.from_numpy(mean))
            self.head[-1].weight.mul_(0.1)
            self.head[-1].bias.zero_()

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.basis(self.head(latent)).view(-1, self.num_vertices, 3)
