"""Async RL: the producer's staleness bound and queue state, the HF engine against the trainer,
a killed async stage that replays no prompt, and async GRPO still improving the DPO model."""

import json
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset
from trl import GRPOConfig

from posttrain.model.tiny import build_tiny_model, build_tiny_tokenizer
from posttrain.recipe import RecipeError, load_recipe
from posttrain.rollout import async_stage
from posttrain.rollout.producer import RolloutGroup, RolloutProducer, trim_log
from posttrain.rollout.sampler import PromptQueue
from posttrain.stages.rl import ActiveGRPOTrainer

ROOT = Path(__file__).resolve().parent.parent
G = 4


class InstantEngine:
    """Finishes every job at once, stamping the version it was ordered with."""

    def __init__(self):
        self.pushed, self.jobs = [], []

    def sync_weights(self, model, version):
        self.pushed.append(version)

    def submit(self, jobs):
        self.jobs += jobs
        futs = [Future() for _ in jobs]
        for f, job in zip(futs, jobs):
            f.set_result(RolloutGroup(job.idx, job.prompt_ids, [[1]] * job.n, [[0.0]] * job.n, job.version))
        return futs

    def close(self):
        pass


@pytest.mark.parametrize("n_async,k", [(0, 1), (1, 1), (2, 1), (2, 3), (3, 2)])
def test_producer_staleness_is_bounded_and_fifo(n_async, k):
    q = PromptQueue([{}] * 50, seed=0, skip_solved_rate=2.0)
    eng = InstantEngine()
    p = RolloutProducer(eng, q, lambda i: [i], G, prompts_per_step=2, async_steps=n_async, weight_sync_steps=k)
    seen, lags = [], []
    for step in range(12):
        p.step_start(None, step, max_steps=12)
        groups = p.primary(2)
        seen += [gr.idx for gr in groups]
        lags += [step - gr.version for gr in groups]
        assert len(p.in_flight()) == 2 * min(n_async - k + 1, 11 - step)
    assert max(lags) <= n_async and (k > 1 or lags[-1] == n_async)  # k = 1: steady state is exactly N
    assert eng.pushed == list(range(0, 12, k))
    assert seen == PromptQueue([{}] * 50, seed=0).take(24)  # dispatch order, nothing drawn twice or skipped
    assert q.pos == 24  # never ordered past max_steps


class ManualEngine(InstantEngine):
    """Finishes a job only when the test says so."""

    def __init__(self):
        super().__init__()
        self.pending = []

    def submit(self, jobs):
        self.jobs += jobs
        futs = [Future() for _ in jobs]
        self.pending += zip(jobs, futs)
        return futs

    def finish(self, pred=lambda job, fut: True):
        for job, f in self.pending:
            if not f.done() and pred(job, f):
                f.set_result(RolloutGroup(job.idx, job.prompt_ids, [[1]] * job.n, [[0.0]] * job.n, job.version))


def test_slack_trains_finished_groups_past_a_slow_one_until_its_deadline():
    """async_steps 3, lookahead 1: slack 2. A slow group of step 0 is passed over at steps 0 and 1
    (finished groups of later steps train instead) and holds step 2, its deadline, until it is done."""
    import threading
    q = PromptQueue([{}] * 50, seed=0, skip_solved_rate=2.0)
    eng = ManualEngine()
    p = RolloutProducer(eng, q, lambda i: [i], G, prompts_per_step=2, async_steps=3, lookahead=1)
    assert p.slack == 2
    p.step_start(None, 0)
    slow = eng.jobs[0].idx
    eng.finish(lambda job, f: job.idx != slow)
    got = p.primary(2)
    assert [gr.idx for gr in got] == [j.idx for j in eng.jobs[1:3]]  # step 0's other group, then step 1's first
    assert p.step_metrics()["async/slipped"] == 1.0 and p.in_flight()[0] == slow
    p.step_start(None, 1)
    eng.finish(lambda job, f: job.idx != slow)
    assert slow not in [gr.idx for gr in p.primary(2)]  # not due yet (ordered for step 0, slack 2)
    p.step_start(None, 2)
    eng.finish(lambda job, f: job.idx != slow)
    threading.Timer(0.3, eng.finish).start()
    got = p.primary(2)
    p.log(got, 0)  # trained: their staleness counts
    m = p.step_metrics()
    assert got[0].idx == slow and got[0].version == 0 and m["async/wait_s"] >= 0.25  # due: waited for it
    assert m["async/staleness_max"] == 2.0 and m["async/slipped"] == 0.0


def test_group_latency_runs_from_order_to_done():
    """async/group_latency_s_*: seconds from a group's order to its last completion, over the groups
    a step took (the figure that sizes lookahead), whether the trainer waited for them or not."""
    import time
    q = PromptQueue([{}] * 50, seed=0, skip_solved_rate=2.0)
    eng = ManualEngine()
    p = RolloutProducer(eng, q, lambda i: [i], G, prompts_per_step=2, async_steps=1)
    p.step_start(None, 0)  # orders steps 0 and 1
    time.sleep(0.2)
    eng.finish(lambda job, f: job.step == 0)
    time.sleep(0.2)  # done before the trainer asks: latency stops at done, not at the ask
    p.primary(2)
    m = p.step_metrics()
    assert 0.2 <= m["async/group_latency_s_mean"] <= m["async/group_latency_s_max"] < 0.35
    p.step_start(None, 1)
    eng.finish()
    p.primary(2)
    assert p.step_metrics()["async/group_latency_s_max"] >= 0.4  # step 1's groups: ordered at step 0


@pytest.mark.parametrize("n_async,k,look", [(2, 1, 0), (2, 1, 1), (4, 1, 2), (4, 2, 1), (3, 1, 3)])
def test_slack_keeps_the_bound_and_trains_every_group_once(n_async, k, look):
    """Groups finish in a random order; every step still gets its batch, no group is older than
    async_steps when trained, and every prompt drawn is trained exactly once."""
    import random
    rnd = random.Random(n_async * 10 + look)
    q = PromptQueue([{}] * 200, seed=0, skip_solved_rate=2.0)
    eng = ManualEngine()
    p = RolloutProducer(eng, q, lambda i: [i], G, prompts_per_step=3, async_steps=n_async, weight_sync_steps=k,
                        lookahead=look)
    seen, lags, steps = [], [], 30
    for step in range(steps):
        p.step_start(None, step, max_steps=steps)
        eng.finish(lambda job, f: job.step + p.slack <= step or rnd.random() < 0.5)  # due ones, half the rest
        first = [f for _, _, f in list(p.ahead)[:3]]
        if sum(f.done() for _, _, f in p.ahead) < 3:  # never so slow that a step's worth is not ready
            eng.finish(lambda job, f: any(f is x for x in first))
        got = p.primary(3)
        assert len(got) == 3
        seen += [gr.idx for gr in got]
        lags += [step - gr.version for gr in got]
    assert max(lags) <= n_async
    assert sorted(seen) == sorted(PromptQueue([{}] * 200, seed=0).take(3 * steps)) and len(set(seen)) == len(seen)
    assert q.pos == 3 * steps  # never ordered past max_steps


def test_refills_jump_the_queue_at_the_current_version():
    q = PromptQueue([{}] * 50, seed=0, skip_solved_rate=2.0)
    eng = InstantEngine()
    p = RolloutProducer(eng, q, lambda i: [i], G, prompts_per_step=2, async_steps=2)
    for step in range(3):
        p.step_start(None, step)
        p.primary(2)
    # each order is for the step that will train on it (a priority server serves it in that order)
    assert [j.step for j in eng.jobs] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    ahead = p.in_flight()
    extra = p.refill(3)
    assert [gr.version for gr in extra] == [2] * 3 and eng.jobs[-1].urgent
    assert [j.step for j in eng.jobs[-3:]] == [2] * 3  # a refill is for the step now training: first
    assert p.in_flight() == ahead  # the next steps' groups are still there, in order


def test_an_engine_error_reaches_the_training_thread():
    class Failing(InstantEngine):
        def submit(self, jobs):
            futs = [Future() for _ in jobs]
            for f in futs:
                f.set_exception(RuntimeError("engine died: CUDA out of memory"))
            return futs
    p = RolloutProducer(Failing(), PromptQueue([{}] * 10, seed=0), lambda i: [i], G, prompts_per_step=2, async_steps=1)
    p.step_start(None, 0)
    with pytest.raises(RuntimeError, match="engine died"):
        p.primary(2)


def test_queue_state_covers_prompts_in_flight():
    rows = [{}] * 20
    a = PromptQueue(rows, seed=1)
    drawn = a.take(6)
    state = json.loads(json.dumps(a.state_dict(in_flight=drawn[4:])))  # 4 trained, 2 in flight
    b = PromptQueue(rows, seed=1)
    b.load_state_dict(state)
    assert b.take(3) == drawn[4:] + a.take(1)  # in-flight prompts first, then where the queue stopped
    assert b.state_dict()["pending"] == []


def test_resume_trims_the_rollout_log_past_a_line_the_kill_cut(tmp_path):
    """A kill mid-append leaves half a line: the resume drops it (and any later step's lines), not fails."""
    log = tmp_path / "rollouts.jsonl"
    log.write_text('{"step": 0, "idx": 1}\n\n{"step": 1, "idx": 2}\n{"step": 2, "idx": 3}\n{"step": 2, "id')
    trim_log(log, 2)
    assert [json.loads(x)["idx"] for x in log.read_text().splitlines()] == [1, 2]


@pytest.mark.parametrize("over,msg", [
    (["stages.rl.async_steps=1", "stages.rl.weight_sync_steps=3"], "weight_sync_steps: must be in [1, async_steps + 1 = 2]"),
    (["stages.rl.async_steps=0", "stages.rl.weight_sync_steps=2"], "weight_sync_steps"),
    (["stages.rl.async_steps=-1"], "async_steps: must be >= 0"),
    (["stages.rl.async_steps=1", "stages.rl.engine=vllm"], "async_steps: async RL needs the engine in its own process"),
    (["stages.rl.async_steps=1", "stages.rl.mini_batches=2"], "async_steps: not yet with mini_batches > 1"),
    (["stages.rl.async_steps=2", "stages.rl.async_lookahead=3"],
     "async_lookahead: must be in [0, async_steps - weight_sync_steps + 1 = 2]"),
    (["stages.rl.async_steps=0", "stages.rl.async_lookahead=0"], "async_lookahead"),
    (["stages.rl.async_steps=2", "stages.rl.weight_sync_steps=2", "stages.rl.async_lookahead=2"], "async_lookahead"),
])
def test_recipe_rejects_bad_async_settings(over, msg):
    with pytest.raises(RecipeError, match=f"stages.rl.{msg}".replace("[", r"\[").replace("+", r"\+")):
        load_recipe("tiny", over)


def reward_len(completions, **kw):
    return [float(len(c[-1]["content"]) % 3) for c in completions]


def _async_hf_trainer(tmp_path, micro_batches: int = 1, async_steps: int = 1, lookahead: int | None = None,
                      tis_mode: str = "token_truncate", active: bool = False, reward=None):
    """A tiny async GRPO trainer on the HF engine (TIS on, as with vLLM), `micro_batches` a step."""
    tok = build_tiny_tokenizer("olmo-think")
    model = build_tiny_model(tok, seed=0)
    rows = [{"prompt": [{"role": "user", "content": f"what is {i} + {i}?"}]} for i in range(12)]
    args = GRPOConfig(output_dir=str(tmp_path / "t"), per_device_train_batch_size=2 * G // micro_batches,
                      gradient_accumulation_steps=micro_batches, num_generations=G,
                      steps_per_generation=micro_batches, max_completion_length=8, beta=0.0, loss_type="dapo",
                      scale_rewards="none", report_to=[], use_cpu=True, bf16=False, learning_rate=1e-3,
                      temperature=0.7, log_completions=False, vllm_importance_sampling_mode=tis_mode,
                      vllm_importance_sampling_clip_max=2.0)
    st = SimpleNamespace(engine="hf", temperature=0.7, max_completion_length=8, async_steps=async_steps,
                         weight_sync_steps=1, seed=0, vllm_server_base_url=None, prompts_per_step=2,
                         async_lookahead=lookahead)
    async_stage.prepare_args(args, st)
    q = PromptQueue(rows, seed=0, skip_solved_rate=2.0)
    tr = ActiveGRPOTrainer(model=model, args=args, reward_funcs=[reward or reward_len],
                           train_dataset=Dataset.from_list(rows), processing_class=tok, queue=q, prompt_rows=rows,
                           active=active, solve_threshold=1.0, rollout_func=async_stage.from_producer, max_refills=2)
    prod = async_stage.attach(tr, st, q, rows, tok, tmp_path, resume_step=0)
    tr.model.train()
    tr.current_gradient_accumulation_steps = micro_batches
    return tr, prod


def _stale_batch(tr) -> dict:
    """Step 1's rollouts: sampled by version 0 (the producer ran a step ahead), trained at version 1."""
    tr._generate_and_score_completions([{}] * (2 * G))
    with torch.no_grad():  # a training step happened
        for p in tr.model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    tr.state.global_step = 1
    return tr._generate_and_score_completions([{}] * (2 * G))


def _step_gap(tr) -> dict:
    gap, tr._gap = tr._gap, None
    return gap.finish(tr.accelerator.gather)


def test_hf_engine_logprobs_match_the_trainer_and_tis_corrects_the_lag(tmp_path):
    """At lag 0 the engine's logprobs are the trainer's (ratio 1); after a weight change the next
    step's groups, sampled a step earlier, are 1 version stale and TIS sees it. The ratio comes from
    the training forward: the batch has no old log-probs (stages/rl_tis.py)."""
    torch.manual_seed(0)
    tr, prod = _async_hf_trainer(tmp_path)
    try:
        assert tr.tis_in_loss()
        batch = tr._generate_and_score_completions([{}] * (2 * G))
        assert "old_per_token_logps" not in batch and "importance_sampling_ratio" not in batch
        tr._compute_loss(tr.model, batch)
        mask = batch["completion_mask"].bool()
        assert (batch["importance_sampling_ratio"][mask] - 1).abs().max() < 1e-4  # TIS is on with the HF engine
        m0 = _step_gap(tr)
        assert m0["async/abs_logp_diff_lag0"] < 1e-4 and "async/abs_logp_diff_lag1" not in m0
        with torch.no_grad():  # a training step happened
            for p in tr.model.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        tr.state.global_step = 1
        batch = tr._generate_and_score_completions([{}] * (2 * G))
        assert batch["rollout_lag"].tolist() == [1] * (2 * G)
        tr._compute_loss(tr.model, batch)
        m1 = _step_gap(tr)
        assert m1["async/abs_logp_diff_lag1"] > 1e-3 and m1["async/kl_k3_lag1"] > 0  # sampled by 0, scored by 1
        assert m1["sampling/sampling_logp_difference/mean"] == pytest.approx(m1["async/abs_logp_diff_lag1"])
        assert tr._metrics["train"]["async/staleness_max"][-1] == 1.0
        assert batch["importance_sampling_ratio"].max() <= 2.0 and m1["sampling/importance_sampling_ratio/max"] <= 2.0
        lines = [json.loads(x) for x in (tmp_path / "rollouts.jsonl").read_text().splitlines()]
        assert [(x["step"], x["version"]) for x in lines] == [(0, 0)] * 2 + [(1, 0)] * 2
    finally:
        prod.close()


def test_a_slipped_group_trains_later_in_the_stage_trainer(tmp_path):
    """async_steps 2, lookahead 1 (slack 1) through the stage's trainer and the HF engine: step 0's
    first group is held back, so step 0 trains step 0's other group and one of step 1's; step 1
    waits for the held group (its deadline) and trains it with lag 1, TIS and the log in step."""
    import threading
    torch.manual_seed(0)
    tr, prod = _async_hf_trainer(tmp_path, async_steps=2, lookahead=1)
    try:
        assert prod.slack == 1
        real, held = prod.engine.submit, []

        def submit(jobs):
            futs = real(jobs)
            if held:
                return futs
            proxy = Future()
            held.append((futs[0], proxy, jobs[0].idx))
            return [proxy, *futs[1:]]
        prod.engine.submit = submit
        batch = tr._generate_and_score_completions([{}] * (2 * G))
        slow = held[0][2]
        trained = [gr.idx for gr in tr._groups]
        assert slow not in trained and len(trained) == 2 and tr._metrics["train"]["async/slipped"][-1] == 1.0
        tr._compute_loss(tr.model, batch)
        tr.state.global_step = 1
        f, proxy, _ = held[0]
        threading.Timer(0.3, lambda: proxy.set_result(f.result())).start()
        batch = tr._generate_and_score_completions([{}] * (2 * G))
        assert tr._groups[0].idx == slow and batch["rollout_lag"].tolist()[:G] == [1] * G
        tr._compute_loss(tr.model, batch)
        assert batch["importance_sampling_ratio"].max() <= 2.0
        lines = [json.loads(x) for x in (tmp_path / "rollouts.jsonl").read_text().splitlines()]
        assert [(x["step"], x["idx"]) for x in lines][2] == (1, slow) and lines[2]["staleness"] == 1
    finally:
        prod.close()


def test_with_active_sampling_the_log_and_staleness_cover_only_trained_groups(tmp_path):
    """Active sampling drops groups without signal and refills: rollouts.jsonl and async/staleness_* are
    the training history, so a dropped group has no line and no say in the staleness figures."""
    def flat_for_even_prompts(prompts, completions, **kw):  # "what is 4 + 4?": every completion scores 0
        return [0.0 if int(p[-1]["content"].split()[2]) % 2 == 0 else float(len(c[-1]["content"]) % 3)
                for p, c in zip(prompts, completions)]
    torch.manual_seed(0)
    tr, prod = _async_hf_trainer(tmp_path, active=True, reward=flat_for_even_prompts)
    try:
        for step in range(3):
            tr.state.global_step = step
            batch = tr._generate_and_score_completions([{}] * (2 * G))
            tr._compute_loss(tr.model, batch)
        m = tr._metrics["train"]
        assert max(m["active/rounds"]) > 1 and max(m["active/groups_filtered_frac"]) > 0  # groups were dropped
        lines = [json.loads(x) for x in (tmp_path / "rollouts.jsonl").read_text().splitlines()]
        assert lines and all(x["idx"] % 2 == 1 for x in lines)  # no flat group is in the history
        for step in range(3):
            assert 0 < sum(x["step"] == step for x in lines) <= 2  # 2 prompts a step, fewer if refills ran out
        # each step's staleness is over its own trained groups; a refill's lag-0 groups count only if trained
        for step, mean in enumerate(m["async/staleness_mean"]):
            mine = [x["staleness"] for x in lines if x["step"] == step]
            assert mean == pytest.approx(sum(mine) / len(mine))
    finally:
        prod.close()


def test_a_window_of_steps_logs_the_largest_staleness_not_the_mean(tmp_path):
    """TRL averages each metric over logging_steps; async/*_max must stay a maximum."""
    tr, prod = _async_hf_trainer(tmp_path)
    try:
        m = tr._metrics["train"]
        m["async/staleness_max"] += [0.0, 1.0, 0.0]
        m["async/group_latency_s_max"] += [2.0, 5.0]
        m["async/staleness_mean"] += [0.0, 1.0]
        logs = {}
        tr.log(logs)
        assert logs["async/staleness_max"] == 1.0 and logs["async/group_latency_s_max"] == 5.0
        assert logs["async/staleness_mean"] == 0.5
    finally:
        prod.close()


@pytest.mark.parametrize("micro_batches,tis_mode", [(1, "token_truncate"), (2, "token_truncate"),
                                                   (1, "token_mask"), (2, "sequence_truncate")])
def test_tis_from_the_training_forward_is_trls_old_logprob_pass(tmp_path, monkeypatch, micro_batches, tis_mode):
    """The same stale batch trained both ways: TRL's extra old-logprob forward at generation, and
    the ratio filled in from the training forward. Ratio, loss, every gradient and the logged gap
    agree; one micro-batch or two, token and sequence, truncate and mask modes."""
    torch.manual_seed(0)
    tr, prod = _async_hf_trainer(tmp_path, micro_batches, tis_mode=tis_mode)
    try:
        monkeypatch.setattr(tr, "tis_in_loss", lambda: False)
        batch = _stale_batch(tr)
        trl_gap = tr._metrics["train"]["sampling/sampling_logp_difference/mean"][-1]
        extra = _step_gap(tr)  # on TRL's path only what TRL does not log itself, from its own tensors
        lagged = [f"async/{k}_lag{n}" for k in ("abs_logp_diff", "kl_k3") for n in (0, 1)]
        assert sorted(extra) == lagged + ["sampling/kl_k3"]
        assert extra["async/abs_logp_diff_lag0"] < 1e-4  # the rounds at steps 0 and 1, both through TRL's pass
        assert extra["async/abs_logp_diff_lag1"] == pytest.approx(trl_gap, rel=1e-4)
        monkeypatch.undo()
        assert "old_per_token_logps" in batch and tr.tis_in_loss()

        def step(b):
            tr.model.zero_grad()
            n = len(b["advantages"]) // micro_batches
            parts = [{k: (v[i * n:(i + 1) * n] if isinstance(v, torch.Tensor) and v.dim() else v) for k, v in b.items()}
                     for i in range(micro_batches)]
            loss = sum(tr._compute_loss(tr.model, p) for p in parts)
            loss.backward()
            return loss.item(), [p.grad.clone() for p in tr.model.parameters()], parts

        loss_a, grads_a, parts_a = step(batch)
        ours = {k: v for k, v in batch.items() if k not in ("old_per_token_logps", "importance_sampling_ratio")}
        loss_b, grads_b, parts_b = step(ours)
        ratio_a = torch.cat([p["importance_sampling_ratio"] for p in parts_a])
        ratio_b = torch.cat([p["importance_sampling_ratio"] for p in parts_b])
        assert (ratio_a - 1).abs().max() > 1e-3  # the lag is there to correct
        torch.testing.assert_close(ratio_b, ratio_a, rtol=1e-5, atol=1e-6)
        assert loss_b == pytest.approx(loss_a, rel=1e-5, abs=1e-7)
        for a, b in zip(grads_a, grads_b):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-7)
        ours_gap = _step_gap(tr)
        assert ours_gap["sampling/sampling_logp_difference/mean"] == pytest.approx(trl_gap, rel=1e-4)
        assert ours_gap["sampling/kl_k3"] == pytest.approx(extra["async/kl_k3_lag1"], rel=1e-4)
    finally:
        prod.close()


def test_hf_engine_samples_are_a_function_of_the_job_not_of_the_trainer_thread():
    """Each completion has its own generator (job seed + index): the engine never touches torch's
    global generator, which the trainer thread draws from meanwhile, and a job samples the same
    completions whatever shares its order."""
    from posttrain.rollout.engines import HFEngine
    from posttrain.rollout.producer import RolloutJob
    tok = build_tiny_tokenizer("olmo-think")
    model = build_tiny_model(tok, seed=0)

    def order(idxs):
        return [RolloutJob(i, [tok.bos_token_id or 1, 40 + i, 41, 42], G, 0, seed=1000 * i) for i in idxs]

    def sample(idxs, trainer_draws: bool):
        eng = HFEngine(model, tok.pad_token_id, [tok.eos_token_id], temperature=1.0, max_tokens=16)
        eng.sync_weights(model, 0)
        torch.manual_seed(0)
        state = torch.get_rng_state()
        futs = eng.submit(order(idxs))
        while trainer_draws and not all(f.done() for f in futs):
            torch.randn(256)  # the trainer thread drawing from the global generator meanwhile
        groups = [f.result(timeout=120) for f in futs]
        eng.close()
        if not trainer_draws:
            assert torch.equal(torch.get_rng_state(), state)  # global generator untouched
        return {gr.idx: (gr.completion_ids, gr.logprobs) for gr in groups}

    quiet, busy = sample([0, 1, 2], False), sample([0, 1, 2], True)
    assert {i: ids for i, (ids, _) in quiet.items()} == {i: ids for i, (ids, _) in busy.items()}
    # The same tokens; their logprobs only to float rounding: a trainer thread running ops meanwhile
    # changes how the CPU's intra-op threads split the engine's reductions (2026-12-07: one in 1e7 differed).
    for i in quiet:
        flat = lambda lps: torch.tensor([x for row in lps for x in row])  # noqa: E731
        torch.testing.assert_close(flat(busy[i][1]), flat(quiet[i][1]), rtol=1e-5, atol=1e-5)
    alone = sample([1], False)[1]  # alone or in an order of three: the batch shape moves only the last bits
    assert alone[0] == quiet[1][0]
    assert all(abs(a - b) < 1e-4 for x, y in zip(alone[1], quiet[1][1]) for a, b in zip(x, y))
    comps = [c for gr in quiet.values() for c in gr[0]]
    assert len({tuple(c) for c in comps}) > len(comps) // 2  # it samples: seeds give different completions


def test_cpu_engine_takes_half_the_pool_and_leaves_the_trainers(monkeypatch):
    """The engine thread runs on half of torch's CPU pool while the trainer keeps all of it, and
    threads started after close get the whole pool back (set_num_threads also sets what new
    threads take)."""
    import threading

    from posttrain.rollout.engines import HFEngine
    from posttrain.rollout.producer import RolloutJob
    tok = build_tiny_tokenizer("olmo-think")
    model = build_tiny_model(tok, seed=0)
    seen, later = [], []
    gen = HFEngine._generate
    monkeypatch.setattr(HFEngine, "_generate", lambda self, jobs: seen.append(torch.get_num_threads()) or gen(self, jobs))
    pool = torch.get_num_threads()
    torch.set_num_threads(2)  # what the suite's machines have; the halving must show at 2
    try:
        eng = HFEngine(model, tok.pad_token_id, [tok.eos_token_id], temperature=1.0, max_tokens=4)
        eng.sync_weights(model, 0)
        eng.submit([RolloutJob(0, [tok.bos_token_id or 1, 40, 41], 2, 0, seed=0)])[0].result(timeout=120)
        trainer = torch.get_num_threads()
        eng.close()
        eng._thread.join(timeout=30)
        t = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
        t.start()
        t.join()
    finally:
        torch.set_num_threads(pool)
    assert (seen, trainer, later) == ([1], 2, [2])


@pytest.mark.parametrize("extra,bound", [("async_steps: 1", 1), ("async_steps: 2\nasync_lookahead: 1", 2)])
def test_killed_async_stage_replays_no_prompt(tmp_path, extra, bound):
    """Also with slack (async_steps 2, lookahead 1): the CPU engine finishes in order, so the
    trained order is the same; the recipe field reaches the producer and resume keeps its state."""
    from posttrain.pipeline import Pipeline
    from posttrain.rundir import read_done
    from tests.test_rl_resume import PROMPTS, STEPS, kill_after_checkpoint, write_recipe
    path = write_recipe(tmp_path, extra)
    saved = kill_after_checkpoint(tmp_path, path)
    # Steps 1-4 trained 8 prompts; step 5's were already ordered (one step ahead) and are in flight.
    assert saved["pos"] == 5 * PROMPTS and len(saved["pending"]) == PROMPTS

    res = Pipeline(load_recipe(str(path))).run()
    assert res[0].action == "resumed" and res[0].summary.steps == STEPS
    n_rows = json.loads((tmp_path / "run" / "rl" / "manifest.json").read_text())["train"]["rows"]
    first12 = PromptQueue([{}] * n_rows, seed=0).take(STEPS * PROMPTS)  # the stage's seeded order
    assert saved["pending"] == first12[4 * PROMPTS:5 * PROMPTS]
    done = read_done(tmp_path / "run" / "rl")
    assert done.summary.to_dict()["prompt_queue"]["pos"] == STEPS * PROMPTS, done
    lines = [json.loads(x) for x in (tmp_path / "run" / "rl" / "rollouts.jsonl").read_text().splitlines()]
    trained = [x["idx"] for x in lines]
    assert trained == first12, lines  # each of the first 12 once, in order: none replayed, none skipped
    assert [x["step"] for x in lines] == [s for s in range(STEPS) for _ in range(PROMPTS)]
    assert all(x["staleness"] <= bound for x in lines)
    logged = [json.loads(x) for x in (tmp_path / "run" / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert any("async/slipped" in r for r in logged) == ("lookahead" in extra)  # the slack path ran


ASSET = ROOT / "tests" / "assets" / "tiny-dpo"


@pytest.mark.slow
@pytest.mark.skipif(not (ASSET / "model.safetensors").is_file(),
                    reason="tests/assets/tiny-dpo missing: rebuild it with scripts/make_tiny_dpo_asset.sh")
def test_async_grpo_raises_accuracy_over_the_dpo_model(tmp_path, monkeypatch):
    """The tiny recipe's RL stage with `async_steps: 1`, from the tiny recipe's DPO model (shipped:
    making it costs ~4 min of SFT + DPO), must beat that model's held-out accuracy on the same
    200 problems, as the synchronous stage does. 2 CPU cores, 2026-12-07 (asset rebuilt from that
    day's `posttrain run tiny`): DPO 0.635 -> synchronous GRPO 0.750 there, async 0.720 here (256 s).
    The asset before it (2026-12-01) gave DPO 0.575 -> sync 0.605 and async 0.585: a 1-point margin,
    too thin to trust on another CPU, hence the rebuild. The same figure and bit-identical weights
    come run after run, since the HF engine samples from per-completion generators
    (producer.job_seed). An asset built with one thread and the SFT eval off scored 0.145 instead:
    rebuild it the way scripts/make_tiny_dpo_asset.sh does."""
    from posttrain.pipeline import Pipeline
    from posttrain.rundir import read_done
    monkeypatch.chdir(ROOT)
    before = json.loads((ASSET / "evals.json").read_text())
    recipe = load_recipe("tiny", [f"output_dir={tmp_path}/run", f"model.name={ASSET}", "stages.rl.init_from=null",
                                  "stages.rl.async_steps=1"])
    res = Pipeline(recipe).run(only="rl")
    assert res[0].action == "ran"
    after = json.loads((tmp_path / "run" / "rl" / "evals.json").read_text())
    assert after["n"] == before["n"] == 200
    assert after["accuracy"] > before["accuracy"], (before["accuracy"], after["accuracy"])
    rl = [json.loads(x) for x in (tmp_path / "run" / "rl" / "metrics.jsonl").read_text().splitlines()]
    stale = [r["async/staleness_max"] for r in rl if "async/staleness_max" in r]
    assert stale and max(stale) <= 1 and any(s > 0 for s in stale)  # it really trained on 1-step-old rollouts
    assert read_done(tmp_path / "run" / "rl").summary.steps == 32
