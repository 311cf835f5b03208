"""Is the Hugging Face Hub reachable? Asked once per process, before anything touches the hub.

Offline, huggingface_hub retries every request with backoff (5 retries, up to 8 s apart), so a
dry run of a recipe with three hub datasets spent 75-98 s and printed dozens of warnings before
saying the data was not there. One HEAD request with a short timeout answers the question; when
it fails, the process switches to the hub's own offline mode (`HF_HUB_OFFLINE`, which
transformers, datasets and huggingface_hub all honour): cached models and datasets still load,
anything else fails at once.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

log = logging.getLogger("posttrain")
LOCAL_MODELS = ("tiny", "random:olmo-hybrid-7b", "olmo3", "dolma2")  # built or shipped inside posttrain


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _offline_env() -> bool:
    return any(os.environ.get(k, "").upper() in ("1", "ON", "YES", "TRUE")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"))


def go_offline() -> None:
    """Offline mode for this process, also for hub libraries already imported (they read the
    variable at import)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    if "huggingface_hub.constants" in sys.modules:
        sys.modules["huggingface_hub.constants"].HF_HUB_OFFLINE = True
    if "datasets.config" in sys.modules:
        sys.modules["datasets.config"].HF_HUB_OFFLINE = sys.modules["datasets.config"].HF_DATASETS_OFFLINE = True


@functools.lru_cache(maxsize=1)
def hub_problem(timeout: float = 3.0) -> str | None:
    """None when the hub answers; otherwise one line saying why not (and offline mode is on)."""
    if _offline_env():
        go_offline()
        return "offline mode is set (HF_HUB_OFFLINE)"
    try:  # any HTTP answer, even an error status, means the hub is there
        urllib.request.urlopen(urllib.request.Request(endpoint(), method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        pass
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        go_offline()
        return f"{endpoint()} unreachable ({str(reason).strip() or type(e).__name__})"
    return None


def needs_hub(refs: list[str]) -> bool:
    """Whether any model/tokenizer reference or mix source names a hub repo rather than something local."""
    for ref in refs:
        if not ref or ref in LOCAL_MODELS or ref.startswith(("tiny:", "builtin:", "/", ".")) or Path(ref).exists():
            continue
        name = ref.removeprefix("random:")
        if name == "olmo-hybrid-7b" or Path(name).exists():
            continue
        return True
    return False


def check_hub(refs: list[str]) -> None:
    """Probe once if `refs` need the hub; say in one line when it is not there."""
    if needs_hub(refs) and (problem := hub_problem()):
        log.warning("hub: %s: using only cached models and datasets", problem)


def recipe_refs(recipe) -> list[str]:
    """Model, tokenizer and mix sources a recipe reads."""
    from posttrain.data.mix import MixError, load_mix_config
    from posttrain.recipe import resolve_file
    refs = [recipe.cfg.model.name, recipe.cfg.model.tokenizer or ""]
    for st in recipe.stages.values():
        for ref in (st.mix, st.eval.mix, getattr(st, "eval_pairs", None)):
            try:
                refs += [s.path for s in load_mix_config(resolve_file(ref, recipe)).sources] if ref else []
            except MixError:
                pass  # validation reports it, with its file and field
    return refs
