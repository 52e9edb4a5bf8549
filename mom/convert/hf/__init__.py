"""Hugging Face transformers export: see :func:`mom.convert.hf.export.export_hf`."""
