"""RL: prompt queue, active sampling, advantages and loss by hand, resume state."""

import pytest
import torch
from datasets import Dataset
from trl import GRPOConfig

from posttrain.model.tiny import build_tiny_model, build_tiny_tokenizer
from posttrain.rollout.sampler import PromptQueue, nonzero_variance_groups
from posttrain.stages.rl import ActiveGRPOTrainer, with_prefix
from posttrain.stages.rl_batch import cat_batches, step_time_split

G = 4


def test_queue_is_seeded_resumable_and_strided():
    rows = [{"i": i} for i in range(10)]
    a, b = PromptQueue(rows, seed=3), PromptQueue(rows, seed=3)
    assert a.take(7) == b.take(7)
    state = a.state_dict()
    c = PromptQueue(rows, seed=3)
    c.load_state_dict(state)
    assert c.take(5) == a.take(5)  # continues where it stopped, across the epoch boundary
    r0, r1 = PromptQueue(rows, seed=1, rank=0, world=2), PromptQueue(rows, seed=1, rank=1, world=2)
    assert not set(r0.take(5)) & set(r1.take(5))


def test_queue_retires_prompts_solved_often():
    q = PromptQueue([{"i": i} for i in range(4)], seed=0, skip_solved_rate=0.875)
    q.record(2, 7, 8)   # 87.5%: retired
    q.record(1, 6, 8)   # 75%: kept
    drawn = q.take(12)
    assert 2 not in drawn and 1 in drawn and q.skipped >= 3
    for i in range(4):
        q.record(i, 8, 8)
    with pytest.raises(RuntimeError, match="every RL prompt is solved"):
        q.take(1)


def test_variance_groups_and_padding():
    assert nonzero_variance_groups([0.5] * 4 + [0, 1, 0, 0], 4) == [False, True]
    a = {"prompt_ids": torch.ones(2, 3), "completion_ids": torch.ones(2, 2), "advantages": torch.ones(2),
         "num_items_in_batch": torch.tensor(4)}
    b = {"prompt_ids": torch.ones(1, 5) * 2, "completion_ids": torch.ones(1, 4) * 2, "advantages": torch.zeros(1),
         "num_items_in_batch": torch.tensor(4)}
    out = cat_batches([a, b])
    assert out["prompt_ids"].shape == (3, 5) and out["prompt_ids"][0].tolist() == [0, 0, 1, 1, 1]  # left pad
    assert out["completion_ids"][0].tolist() == [1, 1, 0, 0]  # right pad


def test_prefix_is_added_for_rewards():
    seen = []
    f = with_prefix(lambda completions, **kw: seen.extend(completions) or [0.0] * len(completions), "<think>")
    f(["a</think>1", [{"role": "assistant", "content": "b"}]])
    assert seen == ["<think>a</think>1", [{"role": "assistant", "content": "<think>b"}]]


def reward_by_row(completions, verifier, **kw):
    """'const' rows always score 1 (no signal); 'vary' rows alternate 0/1 inside each group."""
    return [1.0 if v == "const" else float(j % 2) for j, v in enumerate(verifier)]


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    tok = build_tiny_tokenizer("olmo-think")
    model = build_tiny_model(tok, seed=0)
    rows = [{"prompt": [{"role": "user", "content": f"{kind} {i}"}], "verifier": kind}
            for i in range(6) for kind in ("const", "vary")]
    args = GRPOConfig(output_dir=str(tmp_path_factory.mktemp("g")), per_device_train_batch_size=2 * G,
                      num_generations=G, steps_per_generation=1, max_completion_length=6, beta=0.0, loss_type="dapo",
                      scale_rewards="none", report_to=[], use_cpu=True, bf16=False, gradient_checkpointing=False,
                      learning_rate=1e-3, temperature=1.0, log_completions=False)
    q = PromptQueue(rows, seed=0, skip_solved_rate=2.0)  # no retirement here
    tr = ActiveGRPOTrainer(model=model, args=args, reward_funcs=[reward_by_row], train_dataset=Dataset.from_list(rows),
                           processing_class=tok, queue=q, prompt_rows=rows, active=True, solve_threshold=1.0)
    tr.model.train()
    tr.current_gradient_accumulation_steps = 1  # set by train(); one window here
    return tr, tok


def test_active_sampling_fills_the_batch_without_zero_variance_groups(trainer):
    tr, tok = trainer
    for _ in range(3):  # the seeded queue draws 'const' prompts within these rounds
        batch = tr._generate_and_score_completions([{}] * (2 * G))
        adv = batch["advantages"].view(-1, G)
        # reward - group mean with no std scaling: alternating 0/1 gives -0.5/+0.5
        assert adv.tolist() == [[-0.5, 0.5, -0.5, 0.5]] * 2
        prompts = tok.batch_decode(batch["prompt_ids"], skip_special_tokens=True)
        assert all("vary" in p for p in prompts)
    assert sum(tr._metrics["train"]["active/groups_filtered_frac"]) > 0


def test_loss_by_hand_and_zero_advantage_gives_zero_loss(trainer):
    tr, _ = trainer
    batch = tr._generate_and_score_completions([{}] * (2 * G))
    mask = batch["completion_mask"].float()
    # on-policy (ratio 1), token-level loss: -sum(A_i over completion tokens) / tokens in the batch
    expect = -(batch["advantages"][:, None] * mask).sum() / batch["num_items_in_batch"]
    assert tr.compute_loss(tr.model, batch).item() == pytest.approx(expect.item(), abs=1e-5)
    zero = {**batch, "advantages": torch.zeros_like(batch["advantages"])}
    assert tr.compute_loss(tr.model, zero).item() == 0.0


def test_grpo_settings_reach_trl(monkeypatch, tmp_path):
    """The recipe's OlmoRL fields land on GRPOConfig as TRL names them."""
    from posttrain.recipe import load_recipe
    r = load_recipe("olmo-hybrid-7b-think")
    st = r.stages["rl"]
    assert (st.beta, st.loss_type, st.epsilon, st.epsilon_high, st.scale_rewards, st.tis_cap) == \
           (0.0, "dapo", 0.2, 0.272, "none", 2.0)
    assert st.rollouts_per_prompt == 8 and st.prompts_per_step == 64 and st.skip_solved_rate == 0.875


def test_save_once_has_one_writer_per_node(tmp_path):
    """Every rank starts vLLM from the same folder; only local rank 0 writes it, the others wait."""
    import threading

    from posttrain.rollout.vllm_engine import save_once
    tok = build_tiny_tokenizer("olmo-think")
    model = build_tiny_model(tok)
    path, saves = tmp_path / "init_model-host", []
    real = model.save_pretrained
    model.save_pretrained = lambda *a, **k: (saves.append(1), real(*a, **k))
    waiter = threading.Thread(target=save_once, args=(model, tok, path, 1, 60.0))
    waiter.start()
    save_once(model, tok, path, 0)
    waiter.join(timeout=60)
    assert not waiter.is_alive() and saves == [1] and (path / "READY").is_file()
    save_once(model, tok, path, 0)  # a resumed attempt reuses it
    assert saves == [1]
    with pytest.raises(TimeoutError):
        save_once(model, tok, tmp_path / "never", 1, timeout_s=0.5)


def test_rollout_rate_counts_every_generated_token_of_the_step(trainer, monkeypatch):
    """New tokens are every completion token TRL's generation returned in the step, refill rounds
    and dropped groups included, before any masking; the rate divides them by generation time."""
    from trl import GRPOTrainer
    tr, _ = trainer
    seen, real = [], GRPOTrainer._generate

    def spy(self, prompts):
        out = real(self, prompts)
        seen.append(sum(len(c) for c in out[1]))
        return out
    monkeypatch.setattr(GRPOTrainer, "_generate", spy)
    tr._split = dict.fromkeys(tr._split, 0.0)
    for _ in range(2):
        tr._generate_and_score_completions([{}] * (2 * G))
    assert len(seen) >= 2 and tr._split["new_tokens"] == sum(seen) > 0
    split = step_time_split(step=tr._split["rollout"] + 1.0, **tr._split)
    assert split["rollout/new_tokens_per_s"] == pytest.approx(sum(seen) / split["time/generation_s"])


def test_reward_health_reaches_the_log_and_a_crash_storm_stops(trainer):
    from reward import build_reward_fn, metrics
    from reward.health import RewardHealthError
    from reward.registry import route
    tr, _ = trainer
    metrics.reset()
    math = build_reward_fn([{"name": "math"}])[0][0]
    math(["The answer is 4", "The answer is 5", "no"], ground_truth=["4", "4", None], verifier=["math"] * 3)
    tr.log({"loss": 1.0})
    last = tr.state.log_history[-1]
    assert (last["health/math/scored"], last["health/math/none"], last["health/math/crashed"],
            last["health/math/mean"]) == (2, 1, 0, 0.5)
    route(lambda c, **_: 1 / 0, None, {}, "broken")(["a", "b"])
    tr.reward_crash_limit = 0.5
    try:
        with pytest.raises(RewardHealthError, match="'broken' crashed on 2 of 2 rows"):
            tr.log({"loss": 1.0})
    finally:
        tr.reward_crash_limit = 1.0


def test_rows_no_reward_scores_stop_the_stage_before_the_model_loads(monkeypatch):
    from types import SimpleNamespace

    from posttrain.recipe import GRPOStage
    from posttrain.stages import rl
    from reward.health import RewardHealthError

    def no_model(ctx):
        raise AssertionError("model loaded")
    monkeypatch.setattr(rl, "load_stage_model", no_model)
    rows = [{"prompt": [{"role": "user", "content": "q"}], "ground_truth": ["x"], "verifier": ["code_stdio"]}]
    ctx = SimpleNamespace(stage=GRPOStage(rewards=[{"name": "math"}, {"name": "format_think"}]), name="rl",
                          mix=SimpleNamespace(format="prompt", rows=rows, manifest={"mix": "m.yaml"}))
    with pytest.raises(RewardHealthError, match=r"rl \(m.yaml\): no reward .* code_stdio \(1 rows\)"):
        rl.run(ctx)
    ctx.stage = GRPOStage(rewards=[{"name": "code"}])
    with pytest.raises(AssertionError, match="model loaded"):
        rl.run(ctx)
