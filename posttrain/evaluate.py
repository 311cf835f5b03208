"""Quick held-out evals of a stage's model: task accuracy, format compliance, response length.

Greedy decoding on a fixed slice of a held-out mix, answers checked by the same verifiable
reward that RL optimises (`reward.math`), so 'accuracy' means one thing across stages.
"""

from __future__ import annotations

from posttrain.data.templates import generation_prefix
from posttrain.rollout.hf import generate


def prompts_and_truths(rows: list[dict]) -> tuple[list[list[dict]], list[str | list]]:
    """Held-out rows (messages with ground_truth, or prompt rows) -> prompts and gold answers."""
    prompts, truths = [], []
    for r in rows:
        if "messages" in r:
            msgs = r["messages"]
            cut = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
            prompts.append(msgs[:cut])
        else:
            prompts.append(r["prompt"])
        gt = r.get("ground_truth", "")  # Dolci RL rows carry a list (math_reward takes any of them)
        truths.append(list(gt) if isinstance(gt, (list, tuple)) else str(gt))
    return prompts, truths


def evaluate_model(model, tokenizer, rows: list[dict], max_new_tokens: int = 96, batch_size: int = 64) -> dict:
    from reward.format import format_instruct, format_think
    from reward.math import math_reward
    prompts, truths = prompts_and_truths(rows)
    completions = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    correct = math_reward(completions, ground_truth=truths)
    think = generation_prefix(tokenizer.chat_template or "") == "<think>"
    fmt = format_think(completions) if think else format_instruct(completions)
    lengths = [len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in completions]
    n = max(len(rows), 1)
    return {
        "n": len(rows),
        "accuracy": sum(c or 0.0 for c in correct) / n,
        "format": sum(f or 0.0 for f in fmt) / n,
        "mean_length": sum(lengths) / n,
        "samples": [{"prompt": p[-1]["content"], "completion": c, "truth": t}
                    for p, c, t in list(zip(prompts, completions, truths))[:5]],
    }
