"""End to end on AI2's formats: SFT -> DPO -> GRPO of a small random hybrid with the real Olmo tokenizer
(dolma2) and the olmo3-think template, over fixture rows in each Dolci format (tests/fixtures/dolci)."""

import json
from pathlib import Path

import pytest
import torch

from posttrain.data.mix import resolve_mix
from posttrain.pipeline import Pipeline
from posttrain.recipe import GRPOStage, load_recipe
from reward._text import completion_text
from reward.registry import REWARDS

DOLCI = Path(__file__).resolve().parent / "fixtures" / "dolci"

RECIPE = """
name: olmo3-e2e
output_dir: {out}
model: {{name: tiny, tokenizer: olmo3}}
chat_template: olmo3-think
stages:
  sft:
    kind: sft
    mix: {mixes}/sft.yaml
    learning_rate: 1.0e-3
    max_steps: 1
    max_length: 384
    batch_tokens: 768
    micro_batch_size: 1
    adam_beta2: 0.95
    logging_steps: 1
    eval: {{max_examples: 0}}
  dpo:
    kind: dpo
    init_from: sft
    mix: {mixes}/dpo.yaml
    learning_rate: 1.0e-4
    max_steps: 1
    max_length: 384
    batch_pairs: 5
    micro_batch_size: 1
    eval: {{max_examples: 0}}
  rl:
    kind: grpo
    init_from: dpo
    mix: {mixes}/rl.yaml
    learning_rate: 1.0e-5
    max_steps: 2
    prompts_per_step: 4
    rollouts_per_prompt: 2
    mini_batches: 2
    micro_batch_size: 4
    max_prompt_length: 256
    max_completion_length: 12
    active_sampling: false
    mask_truncated_completions: false
    rewards:
      - {{name: spy, weight: 1.0, verifier: "*"}}
      - {{name: math, weight: 1.0, verifier: "*"}}
    logging_steps: 1
    eval: {{mix: {dolci}/think_rl.yaml, max_examples: 2, max_new_tokens: 6, batch_size: 2}}
"""


def _mix(path: Path, name: str, files: list[str]) -> None:
    src = "".join(f"  - path: {DOLCI / f}.jsonl\n" + ("    columns: {dataset: verifier}\n" if f.endswith("_rl") else "")
                  for f in files)
    path.write_text(f"name: {name}\nseed: 0\nsources:\n{src}")


@pytest.mark.parametrize("name,fmt,rows", [("instruct_sft", "messages", 4), ("think_sft", "messages", 3),
                                           ("instruct_dpo", "preference", 3), ("think_dpo", "preference", 2),
                                           ("think_rl", "prompt", 2), ("instruct_rl", "prompt", 2)])
def test_posttrain_mix_reports_each_dolci_fixture(name, fmt, rows, capsys):
    from posttrain.cli import main
    assert main(["mix", str(DOLCI / f"{name}.yaml"), "--json"]) == 0
    out = capsys.readouterr().out
    assert f"format {fmt}," in out and f"rows {rows}," in out
    m = json.loads(out[out.index("{"):])
    assert m["format"] == fmt and m["rows"] == rows and m["invalid_dropped"] == 0


def test_sft_dpo_grpo_on_dolci_formats(tmp_path, monkeypatch):
    mixes = tmp_path / "mixes"
    mixes.mkdir()
    _mix(mixes / "sft.yaml", "sft", ["instruct_sft", "think_sft"])
    _mix(mixes / "dpo.yaml", "dpo", ["instruct_dpo", "think_dpo"])
    _mix(mixes / "rl.yaml", "rl", ["think_rl", "instruct_rl"])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(out=tmp_path / "run", mixes=mixes, dolci=DOLCI))

    seen, starts = [], []  # what reached the rewards: (prompt, ground_truth, verifier) per completion

    def spy(completions, prompts=None, ground_truth=None, verifier=None, **kw):
        seen.extend(zip([json.dumps(p) for p in prompts], ground_truth, verifier))
        starts.extend(completion_text(c).startswith("<think>") for c in completions)  # the template's '<think>' put back
        return [0.0] * len(completions)
    monkeypatch.setitem(REWARDS, "spy", spy)
    trainers = {}
    from posttrain.stages import dpo, sft
    for mod, cls in ((sft, "FixedRowSFTTrainer"), (dpo, "CachedRefDPOTrainer")):
        base = getattr(mod, cls)
        monkeypatch.setattr(mod, cls, type(cls, (base,), {"__init__": lambda self, *a, _b=base, _n=cls, **k: (
            _b.__init__(self, *a, **k), trainers.__setitem__(_n, self))[0]}))

    Pipeline(load_recipe(str(recipe))).run()
    run = tmp_path / "run"
    for st in ("sft", "dpo", "rl"):
        assert (run / st / "DONE").is_file(), st
    tok = trainers["FixedRowSFTTrainer"].processing_class
    assert len(tok) == 100278 and tok.eos_token == "<|endoftext|>"

    # SFT: every row kept (nothing dropped by validation), tool calls and final answers carry loss,
    # tool outputs and prompts do not.
    sft_rows = resolve_mix(mixes / "sft.yaml")
    assert sft_rows.manifest["rows"] == 7 and sft_rows.manifest["invalid_dropped"] == 0
    ds = trainers["FixedRowSFTTrainer"].train_dataset
    ids = [i for row in ds["input_ids"] for i in row]
    mask = [lab != -100 for row in ds["labels"] for lab in row]  # TRL folds the generation masks into labels
    trained = tok.decode([i for i, m in zip(ids, mask) if m])
    untrained = tok.decode([i for i, m in zip(ids, mask) if not m])
    assert '<function_calls>get_weather(city="Paris")</function_calls><|im_end|>' in trained
    assert '<function_calls>get_weather(city="Oslo")</function_calls><|im_end|>' in trained
    assert "Yes: it is raining in Paris, 11 degrees.<|endoftext|>" in trained
    assert "<think>\n3 + 4 = 7\n</think>\n\nThe answer is 7.<|endoftext|>" in trained
    assert '"sky": "rain"' in untrained and "<functions>" in untrained and "Is it raining in Paris?" in untrained
    assert '"sky": "rain"' not in trained and "Is it raining in Paris?" not in trained

    # DPO: the prompt is rendered once (Dolci-Think-DPO-7B's prompt column repeats the user turn),
    # and the Think prompt ends as the generation prompt does, '<think>' tokenized alone.
    dds = trainers["CachedRefDPOTrainer"].train_dataset
    assert len(dds) == 5
    think_ids = tok("<think>", add_special_tokens=False)["input_ids"]
    for ex in dds:
        for side in ("chosen_ids", "rejected_ids"):
            text = tok.decode(ex["prompt_ids"] + ex[side])
            user = text.split("<|im_start|>user\n")[-1].split("<|im_end|>")[0]
            assert text.count(f"<|im_start|>user\n{user}<|im_end|>") == 1
            assert text.count("<|im_start|>assistant\n") == tok.decode(ex["prompt_ids"]).count("<|im_start|>assistant\n")
        assert tok.decode(ex["chosen_ids"]).endswith("<|endoftext|>")
    # Think pairs: the prompt ends in '<think>' as at inference, the answers continue inside it.
    think = [ex for ex in dds if ex["prompt_ids"][-len(think_ids):] == think_ids]
    assert len(think) == 2
    for ex in think:
        assert tok.decode(ex["prompt_ids"] + ex["chosen_ids"]).count("<think>") == 1
        assert not tok.decode(ex["chosen_ids"]).startswith("<think>")

    # GRPO: every RL row (messages rows and flat-prompt rows) reached the rewards with its ground truth list.
    rl_rows = resolve_mix(mixes / "rl.yaml").rows
    want = {json.dumps(r["prompt"]): r["ground_truth"] for r in rl_rows}
    got = {p: gt for p, gt, _ in seen}
    assert set(got) == set(want) and all(got[p] == want[p] for p in want)
    assert all(v == ["math"] for _, _, v in seen) and starts and all(starts)
    assert {json.dumps([{"role": "user", "content": "What is 100 - 1?"}]),
            json.dumps([{"role": "user", "content": "What is 3 cubed?"}]),
            json.dumps([{"role": "user", "content": "What is 5 * 5?"}])} <= set(want)
    evals = json.loads((run / "rl" / "evals.json").read_text())
    assert evals["n"] == 2 and all(s["completion"].startswith("<think>") for s in evals["samples"])
    saved = (run / "rl" / "model" / "chat_template.jinja").read_text()
    assert "<|im_start|>assistant\n<think>" in saved and "{% generation %}" in saved


def test_im_end_ends_a_completion_hf_engine_and_vllm_stops(tmp_path):
    """A completion ending in <|im_end|> is finished, not truncated, though dolma2's eos is <|endoftext|>."""
    from datasets import Dataset

    from posttrain.data.templates import resolve_template
    from posttrain.model.load import end_token_ids, load_model, load_tokenizer
    from posttrain.rollout.sampler import PromptQueue
    from posttrain.stages.rl import ActiveGRPOTrainer, grpo_config
    tok = load_tokenizer("olmo3", resolve_template("olmo3-think"))
    model = load_model("tiny", tokenizer=tok)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")

    def favour_im_end(module, inputs, out):  # the model always ends its turn at once
        out = out.clone()
        out[..., im_end] += 1e4
        return out
    model.lm_head.register_forward_hook(favour_im_end)
    st = GRPOStage(kind="grpo", mix="x", learning_rate=1e-5, max_steps=1, prompts_per_step=2, rollouts_per_prompt=2,
                   micro_batch_size=4, max_completion_length=8, mask_truncated_completions=True,
                   active_sampling=False, logging_steps=1)
    rows = [{"prompt": [{"role": "user", "content": f"q{i}"}], "ground_truth": ["1"]} for i in range(2)]
    trainer = ActiveGRPOTrainer(
        model=model, args=grpo_config(st, tmp_path / "t", [1.0], stop_token_ids=end_token_ids(tok)),
        reward_funcs=[lambda completions, **k: [float(i % 2) for i in range(len(completions))]],
        train_dataset=Dataset.from_list(rows), processing_class=tok, queue=PromptQueue(rows), prompt_rows=rows,
        active=False, solve_threshold=1.0)
    assert {im_end, tok.eos_token_id} <= set(trainer.eos_token_ids)
    trainer.train()
    logs = next(h for h in trainer.state.log_history if "completions/clipped_ratio" in h)
    assert logs["completions/clipped_ratio"] == 0.0 and logs["completions/mean_terminated_length"] == 1.0
    # vLLM engine: every end token goes into its sampling parameters (stop_token_ids).
    vst = GRPOStage(**{**st.__dict__, "engine": "vllm"})
    args = grpo_config(vst, tmp_path / "v", [1.0], stop_token_ids=end_token_ids(tok))
    assert set(args.generation_kwargs["stop_token_ids"]) == {im_end, tok.eos_token_id}
    assert torch.is_tensor(torch.tensor(args.generation_kwargs["stop_token_ids"]))
