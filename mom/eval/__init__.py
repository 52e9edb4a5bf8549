"""Evaluation: metrics, perplexity, fine-tuning on GLUE-format classification and XSUM-format summarisation, and the
lm-eval-harness adapter."""
