"""Alignment: token pairing across tokenizers, the embedding cache, streaming batches, the trainer."""
