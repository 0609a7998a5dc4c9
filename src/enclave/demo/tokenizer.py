"""GPT-2's real tokenizer, built offline from the BPE files `scripts/fetch-gpt2-bpe.sh` cached.

transformers 5 quietly builds an *empty* tokenizer from `vocab_file=`; passing the vocabulary and
merges themselves works, so that is what we do.
"""

from __future__ import annotations

import json
from pathlib import Path

from enclave.envsettings import cache_dir


class TokenizerFilesMissing(RuntimeError):
    pass


def bpe_dir() -> Path:
    return cache_dir("gpt2-bpe")


def gpt2_tokenizer():
    """A GPT2TokenizerFast with GPT-2's 50,257-token vocabulary ("Hello world" -> [15496, 995])."""
    from transformers import GPT2TokenizerFast

    folder = bpe_dir()
    encoder, merges_file = folder / "encoder.json", folder / "vocab.bpe"
    if not (encoder.is_file() and merges_file.is_file()):
        raise TokenizerFilesMissing(f"GPT-2's BPE files are not in {folder}: run scripts/fetch-gpt2-bpe.sh (make does)")
    vocab = json.loads(encoder.read_text(encoding="utf-8"))
    merges = [tuple(line.split(" ")) for line in merges_file.read_text(encoding="utf-8").splitlines()[1:] if line]
    tokenizer = GPT2TokenizerFast(vocab=vocab, merges=merges, unk_token="<|endoftext|>",
                                  bos_token="<|endoftext|>", eos_token="<|endoftext|>", add_prefix_space=False)
    if tokenizer.encode("Hello world") != [15496, 995]:
        raise TokenizerFilesMissing(f"the tokenizer built from {folder} is not GPT-2's")
    return tokenizer
