"""reranker-skill: distil a large reranker into a small domain cross-encoder, end to end."""

__version__ = "0.1.0"
