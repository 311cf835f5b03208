"""Rollout engines for async RL: each takes orders of `RolloutJob`s, returns a Future of a
`RolloutGroup` per job, and takes the trainer's weights at a version.

- `HFEngine`: transformers `generate` on a copy of the policy in a background thread (CPU, CI,
  small models). It keeps a snapshot per version still in use, so each job runs on exactly the
  weights it was ordered with, whatever the trainer did since, and samples each completion from
  a generator of its own, so what it samples does not depend on thread timing either.
- `VLLMServerEngine`: vLLM's OpenAI server in its own process (`vllm serve` with the dev RLHF
  routes; `trl vllm-serve` execs the same). Requests are n=1 with a seed each, sent from an
  asyncio loop, so every order of every step is in the engine's batch at once. A weight push
  freezes requests in place (`/pause?mode=keep`), streams the weights, `/resume`s:
  open-instruct's in-flight updates. Transport is vLLM's own: NCCL through TRL's
  `VLLMGeneration.sync_weights` (engine on other GPUs), or CUDA IPC
  (`IPCWeightTransferEngine.trainer_send_weights`, engine on the training GPU; NCCL cannot put
  two ranks on one device).
"""

from __future__ import annotations

import asyncio
import copy
import queue as queue_mod
import threading
import time
from concurrent.futures import Future

import torch

from posttrain.rollout.producer import RolloutGroup, RolloutJob


class GumbelSampler:
    """A transformers logits processor that makes greedy `generate` sample: argmax(logits / T + g),
    g ~ Gumbel(0, 1), is a draw from softmax(logits / T) (the Gumbel-max trick). The noise of row r
    comes from `torch.Generator` r, so sampling never touches torch's global generator.

    Why not `do_sample=True`: transformers draws with `torch.multinomial(probs)` on the global
    generator and takes no generator argument (generation/utils.py, `_sample`). The trainer thread
    draws from that same generator, and reseeding it per job (`torch.manual_seed` in the engine
    thread, or `torch.random.fork_rng`, which saves and restores the global state and is not
    thread-safe) still lets the two threads' draws interleave by timing. A private generator per
    completion, seeded from the job, makes a job's completions a function of its seed and weights.

    >>> gens = [torch.Generator().manual_seed(0)]
    >>> logits = torch.tensor([[0.0, 1.0, float("-inf")]])
    >>> picks = torch.stack([GumbelSampler(gens, 1.0)(None, logits) for _ in range(20000)]).argmax(-1)
    >>> abs(picks.float().mean().item() - torch.tensor([0.0, 1.0]).softmax(0)[1].item()) < 0.015  # 0.731
    True
    >>> GumbelSampler(gens, 1.0)(None, logits)[0, 2].item()  # a banned token stays banned
    -inf
    """

    def __init__(self, generators: list[torch.Generator], temperature: float):
        self.generators, self.temperature = generators, temperature

    def __call__(self, input_ids, scores: torch.Tensor) -> torch.Tensor:
        e = torch.stack([torch.empty(scores.shape[-1], dtype=torch.float32).exponential_(generator=g)
                         for g in self.generators]).to(scores.device)
        return scores.float() / self.temperature - e.log()  # -log(Exp(1)) ~ Gumbel(0, 1)


class HFEngine:
    """Generation on a private copy of the policy, one order of same-version jobs at a time;
    urgent orders (active-sampling refills) first."""

    def __init__(self, model, pad_token_id: int, eos_token_ids: list[int], temperature: float, max_tokens: int,
                 max_batch_groups: int = 64):
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)
        self.pad, self.eos, self.temperature, self.max_tokens = pad_token_id, set(eos_token_ids), temperature, max_tokens
        self.max_batch_groups = max_batch_groups
        self.snapshots: dict[int, dict] = {}
        self.refs: dict[int, int] = {}  # version -> jobs submitted and not finished
        self.loaded = None
        self.latest = None
        self._jobs: queue_mod.PriorityQueue = queue_mod.PriorityQueue()
        self._n = 0
        self._lock = threading.Lock()
        # On CPU the engine and the trainer compute at once, and each thread's OpenMP team takes
        # torch's whole pool: 2 x 2 threads on 2 cores spin against each other. Half the pool for
        # the engine (torch's thread count is per thread once a thread has run an op, and this
        # call sets the caller's first) took the tiny async RL stage from ~340 s to 263 s
        # (2 cores, 2026-12-07); CUDA work does not use the pool.
        self._pool = torch.get_num_threads()
        self._threads = max(1, self._pool // 2) if next(self.model.parameters()).device.type == "cpu" else None
        self._thread = threading.Thread(target=self._work, name="hf-rollout-engine", daemon=True)
        self._thread.start()

    def sync_weights(self, model, version: int) -> None:
        sd = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        with self._lock:
            self.snapshots[version] = sd
            self.latest = version
            self._drop_unused()

    def _drop_unused(self) -> None:
        for v in [v for v in self.snapshots if v != self.latest and not self.refs.get(v)]:
            del self.snapshots[v]

    def submit(self, jobs: list[RolloutJob]) -> list[Future]:
        """One order (all of the same version and urgency): it becomes one `generate` call (or
        several of `max_batch_groups`), never merged with other orders. What shares a batch sets
        the padding and the batch shape, which move logits in the last bits and so, rarely, a
        sampled token; batching by order keeps that independent of when the thread got to it."""
        futs = [Future() for _ in jobs]
        if not jobs:
            return futs
        with self._lock:
            for j in jobs:
                self.refs[j.version] = self.refs.get(j.version, 0) + 1
            self._n += 1
            self._jobs.put((0 if jobs[0].urgent else 1, self._n, jobs, futs))
        return futs

    def _work(self) -> None:
        if self._threads:
            torch.set_num_threads(self._threads)
        while True:
            _, _, jobs, futs = self._jobs.get()
            if jobs is None:  # close()
                if self._threads:  # set_num_threads also sets the count threads started later take
                    torch.set_num_threads(self._pool)
                return
            for a in range(0, len(jobs), self.max_batch_groups):
                batch = list(zip(jobs[a:a + self.max_batch_groups], futs[a:a + self.max_batch_groups]))
                live = [(j, f) for j, f in batch if f.set_running_or_notify_cancel()]
                try:
                    groups = self._generate([j for j, _ in live]) if live else []
                    for (_, fut), gr in zip(live, groups):
                        fut.set_result(gr)
                except BaseException as e:  # the trainer sees it at its next take
                    for _, fut in live:
                        if not fut.done():
                            fut.set_exception(e)
                finally:
                    with self._lock:
                        for j, _ in batch:
                            self.refs[j.version] -= 1
                        self._drop_unused()

    @torch.no_grad()
    def _generate(self, jobs: list[RolloutJob]) -> list[RolloutGroup]:
        v = jobs[0].version
        if self.loaded != v:
            with self._lock:
                sd = self.snapshots[v]
            self.model.load_state_dict(sd)
            self.loaded = v
        t0 = time.perf_counter()
        rows = [j.prompt_ids for j in jobs for _ in range(j.n)]
        width = max(map(len, rows))
        dev = next(self.model.parameters()).device
        # Left padding: the GDN layers zero padded positions, which is exact only on the left.
        ids = torch.tensor([[self.pad] * (width - len(r)) + r for r in rows], device=dev)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=dev)
        # Completion c of a job: generator seeded job.seed + c, as the vLLM engine seeds its requests.
        gens = [torch.Generator().manual_seed(j.seed + c) for j in jobs for c in range(j.n)]
        max_new = max(max(j.max_tokens) if j.max_tokens else self.max_tokens for j in jobs)
        # Greedy over Gumbel-perturbed scores = sampling at temperature T with no top-k/top-p (see
        # GumbelSampler); with do_sample off, generate adds none of its sampling warpers.
        out = self.model.generate(input_ids=ids, attention_mask=mask, do_sample=False, temperature=None, top_k=None,
                                  top_p=None, logits_processor=[GumbelSampler(gens, self.temperature)],
                                  max_new_tokens=max_new, output_logits=True, return_dict_in_generate=True,
                                  pad_token_id=self.pad, eos_token_id=sorted(self.eos))
        new = out.sequences[:, width:]
        # The trainer scores tokens with log_softmax(logits / T) (TRL), so the engine's logprobs are
        # taken from the raw logits the same way: no top-k/top-p, so that is also what was sampled.
        logits = torch.stack(out.logits, dim=1).float() / self.temperature
        lp = torch.log_softmax(logits, dim=-1).gather(-1, new[:, :, None]).squeeze(-1)
        groups, r = [], 0
        for j in jobs:
            comps, lps = [], []
            for c in range(j.n):
                ids_r = new[r].tolist()
                cap = j.max_tokens[c] if j.max_tokens else self.max_tokens
                end = next((k + 1 for k, t in enumerate(ids_r[:cap]) if t in self.eos), min(cap, len(ids_r)))
                comps.append(ids_r[:end])
                lps.append(lp[r, :end].tolist())
                r += 1
            groups.append(RolloutGroup(j.idx, j.prompt_ids, comps, lps, v, v, {"gen_s": time.perf_counter() - t0}))
        return groups

    def close(self) -> None:
        self._jobs.put((3, float("inf"), None, None))


def server_config(url: str) -> dict:
    """A `vllm serve`'s config (its dev-mode /server_info), or one line saying why there is none."""
    import requests
    url = url.rstrip("/")
    try:
        info = requests.get(f"{url}/server_info", params={"config_format": "json"}, timeout=60)
    except requests.RequestException as e:
        raise RuntimeError(f"{url}: no vLLM server answers ({type(e).__name__}); start it first (README: async RL)") from None
    if info.status_code == 404:
        raise RuntimeError(f"{url}: no /server_info; start the server with VLLM_SERVER_DEV_MODE=1")
    try:
        info.raise_for_status()
        return info.json()["vllm_config"]
    except (requests.RequestException, ValueError, KeyError, TypeError) as e:
        raise RuntimeError(f"{url}: /server_info is not a vLLM server's config ({type(e).__name__}: {e})") from None


class VLLMServerEngine:
    """A running vLLM server (`VLLM_SERVER_DEV_MODE=1 vllm serve MODEL --weight-transfer-config
    '{"backend": "nccl"|"ipc"}' --logprobs-mode processed_logprobs`)."""

    def __init__(self, base_url: str, temperature: float, max_tokens: int, trl_generation=None,
                 ignore_eos: bool = False, timeout_s: float = 3600.0, is_main: bool = True, world_size: int = 1,
                 stop_token_ids: list[int] | None = None):
        import requests
        self.url, self.temperature, self.max_tokens, self.ignore_eos = base_url.rstrip("/"), temperature, max_tokens, ignore_eos
        self.timeout_s = timeout_s
        cfg = server_config(self.url)
        wt = cfg.get("weight_transfer_config") or {}
        self.backend = wt.get("backend")
        if self.backend not in ("nccl", "ipc"):
            raise RuntimeError(f"{self.url}: weight transfer backend {self.backend!r}; start it with "
                               """--weight-transfer-config '{"backend": "ipc"}' (same GPU) or nccl (other GPUs)""")
        if cfg["model_config"].get("logprobs_mode") != "processed_logprobs":
            raise RuntimeError(f"{self.url}: TIS needs --logprobs-mode processed_logprobs (after temperature)")
        if self.backend == "ipc" and world_size > 1:
            raise RuntimeError(f"{self.url}: CUDA-IPC weight transfer is for one training process on the engine's GPU; "
                               "with several, give the server GPUs of its own (nccl)")
        if self.backend == "nccl" and trl_generation is None:
            raise RuntimeError("nccl weight transfer goes through TRL's VLLMGeneration (use_vllm, vllm_mode server)")
        self.trl_generation, self.is_main = trl_generation, is_main
        # `vllm serve --scheduling-policy priority` (lower first, ties by arrival): each completion
        # then carries the step its group is for, so in async's fill the next step's groups come
        # back first instead of sharing the batch evenly with later steps'. vLLM refuses a nonzero
        # priority under fcfs, so it is sent only where the server says it schedules by priority.
        self.priority = (cfg.get("scheduler_config") or {}).get("policy") == "priority"
        self.stop_token_ids = list(stop_token_ids or [])
        self.model_name = requests.get(f"{self.url}/v1/models", timeout=60).json()["data"][0]["id"]
        self.version = -1
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="vllm-rollout-client", daemon=True)
        self._thread.start()
        self._session = asyncio.run_coroutine_threadsafe(self._open(), self.loop).result()

    async def _open(self):
        import aiohttp  # a vLLM dependency
        return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                                     connector=aiohttp.TCPConnector(limit=0))

    def submit(self, jobs: list[RolloutJob]) -> list[Future]:
        return [asyncio.run_coroutine_threadsafe(self._group(j), self.loop) for j in jobs]

    async def _one(self, job: RolloutJob, c: int) -> tuple[list[int], list[float]]:
        body = {"model": self.model_name, "prompt": job.prompt_ids, "n": 1, "temperature": self.temperature,
                "top_p": 1.0, "max_tokens": job.max_tokens[c] if job.max_tokens else self.max_tokens,
                "logprobs": 0, "seed": job.seed + c, "return_token_ids": True, "skip_special_tokens": False,
                "ignore_eos": self.ignore_eos, "stop_token_ids": self.stop_token_ids}
        if self.priority and job.step is not None:
            body["priority"] = job.step
        async with self._session.post(f"{self.url}/v1/completions", json=body) as r:
            r.raise_for_status()
            choice = (await r.json())["choices"][0]
        return choice["token_ids"], [float(x) for x in choice["logprobs"]["token_logprobs"]]

    async def _group(self, job: RolloutJob) -> RolloutGroup:
        t0 = time.perf_counter()
        res = await asyncio.gather(*(self._one(job, c) for c in range(job.n)))
        return RolloutGroup(job.idx, job.prompt_ids, [r[0] for r in res], [r[1] for r in res], job.version,
                            self.version, {"gen_s": time.perf_counter() - t0})

    def _post(self, path: str, **kw) -> None:
        import requests
        requests.post(f"{self.url}{path}", timeout=600, **kw).raise_for_status()

    def sync_weights(self, model, version: int) -> None:
        # Pushed at step 0 too: the server may hold other weights than the stage's start (a run killed
        # before its first checkpoint pushed later ones; a server started from another checkpoint).
        # Every rank takes part in the (ZeRO-3) gathers of TRL's stream; one of them pauses the server.
        if self.is_main:
            self._post("/pause", params={"mode": "keep"})  # requests stay in the batch, frozen
        try:
            if self.backend == "nccl":
                # TRL streams every parameter (ZeRO-3: gathered one at a time) over its NCCL group.
                type(self.trl_generation).sync_weights(self.trl_generation)
            else:
                self._send_ipc(model)
        finally:
            if self.is_main:
                self._post("/resume")
        self.version = version

    def _send_ipc(self, model) -> None:
        IPCWeightTransferEngine = _ipc_engine()

        def params():
            for name, p in model.named_parameters():
                name = name.replace("_checkpoint_wrapped_module.", "").removeprefix("module.")
                ds = getattr(p, "ds_id", None) is not None
                if ds:  # ZeRO-3 partition: gather this one parameter
                    import deepspeed
                    with deepspeed.zero.GatheredParameters([p]):
                        yield name, p.data
                else:
                    yield name, p.data
        self._post("/start_weight_update", json={})
        IPCWeightTransferEngine.trainer_send_weights(params(), {"send_mode": "http", "url": self.url, "packed": True})
        self._post("/finish_weight_update", json={})

    def close(self) -> None:
        async def shut():
            await self._session.close()
        try:
            asyncio.run_coroutine_threadsafe(shut(), self.loop).result(timeout=10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)


def _ipc_engine():
    """vLLM's CUDA-IPC weight transfer, imported through posttrain's vLLM plugin, which covers the
    module's top-level `import ray` where ray is not installed (vllm_plugin.exec_without_ray)."""
    from posttrain.vllm_plugin import register
    register()
    from vllm.distributed.weight_transfer.ipc_engine import IPCWeightTransferEngine
    return IPCWeightTransferEngine
