"""Generation: the KV-cached :class:`~mom.inference.engine.Engine` (sampling, batching, streaming, compiled decode
steps) and beam search."""
