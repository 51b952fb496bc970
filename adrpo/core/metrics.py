"""Diversity metrics on embeddings (the W2 proxy is ``flow_losses.squared_error(v, v_ref)``)."""

from __future__ import annotations

import torch


def mean_pairwise_distance(embeddings: torch.Tensor) -> torch.Tensor:
    """Mean Euclidean distance over the G·(G−1)/2 distinct pairs: (G, E) -> scalar."""
    g = embeddings.shape[0]
    if g < 2:
        raise ValueError(f"pairwise distance needs at least 2 samples, got {g}")
    dist = torch.cdist(embeddings.unsqueeze(0), embeddings.unsqueeze(0)).squeeze(0)  # (G, G)
    upper = torch.triu_indices(g, g, offset=1, device=embeddings.device)
    return dist[upper[0], upper[1]].mean()


def grouped_diversity(embeddings: torch.Tensor, *, group_size: int) -> torch.Tensor:
    """Per-prompt diversity: (N, E) prompt-major embeddings -> (B,) mean pairwise distances.

    This is the ClipDiversity rule (mean pairwise distance of embeddings among samples of
    one prompt) with whatever embedding network the caller supplies.
    """
    groups = embeddings.view(-1, group_size, embeddings.shape[-1])  # (B, G, E)
    return torch.stack([mean_pairwise_distance(g) for g in groups])

