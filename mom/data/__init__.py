"""Data: the GPT-2 tokenizer, the built-in offline corpus, ``prepare`` (token files in nanoGPT's layout), token loading
and validation windows, and the fine-tuning tasks and offline proxies."""
