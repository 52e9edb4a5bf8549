"""Data: the tokenizers (GPT-2's, and a byte-level BPE learnt from a corpus), the built-in offline corpus, ``prepare``
(token files in nanoGPT's layout), bits per byte and the unigram yardstick, token loading and validation windows,
and the fine-tuning tasks and offline proxies."""
