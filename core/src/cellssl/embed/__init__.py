"""Embedding: the one :class:`~cellssl.embed.embedder.Embedder` (dataset -> preprocessing -> channel strategy ->
backbone and feature recipe -> embeddings in memory or a sharded set)."""

from cellssl.embed.embedder import Embedder

__all__ = ["Embedder"]
