"""Weights in and out of other formats: HF GPT-2 import, export and decomposition into module pools
(:mod:`mom.convert.gpt2`), and MoE upcycling (:mod:`mom.convert.upcycle`)."""
