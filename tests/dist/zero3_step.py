"""One optimizer step of the hybrid under DeepSpeed ZeRO-3 on N processes vs one process without it.

Launched by tests/test_zero3.py (CPU, gloo) and scripts/gpu_zero3.sh (GPUs, nccl):
    python -m torch.distributed.run --nproc_per_node 2 tests/dist/zero3_step.py OUT.json [--packed] [--fused]
Every rank trains on its half of one fixed batch; the loss is scaled so the ranks' averaged
gradient is the full batch's. Rank 0 gathers the ZeRO-3 shards and compares each parameter with
a plain single-process step on the full batch: it must have moved, and moved the same. SGD at
lr 1 makes the update the (clipped) gradient itself; Adam's first step, ~lr x sign(g), would
amplify rounding in tiny gradients.

The GDN forward reads `conv1d.weight` directly instead of calling the conv module, which is how
ZeRO-3 leaves parameters untrained when their module's hooks never fire. DeepSpeed 0.19 gathers
such a parameter on access (its ZeROOrderedDict fetches a partitioned parameter when read), and
this step shows the gradient reaches it. Marking the GDN blocks as ZeRO-3 leaf modules instead
(`deepspeed.utils.set_z3_leaf_modules`) broke the backward (a released 0-size parameter), so
posttrain does not do that.
"""

import json
import sys

import deepspeed
import torch
import torch.distributed as dist

from posttrain.data.packing import PackedCollator
from posttrain.model.tiny import build_tiny_model, build_tiny_tokenizer


def batches(world: int, packed: bool, vocab: int):
    g = torch.Generator().manual_seed(0)
    docs = [torch.randint(8, vocab, (n,), generator=g).tolist() for n in (37, 64, 21, 50, 33, 58, 45, 29)]
    per = len(docs) // world
    parts = [docs[r * per:(r + 1) * per] for r in range(world)]
    if packed:
        collate = PackedCollator(max_length=256, pad_token_id=0)
        return [collate([{"input_ids": d} for d in p]) for p in parts], sum(len(d) - 1 for d in docs)
    out = []
    for p in parts:
        n = max(map(len, p))
        ids = torch.zeros(len(p), n, dtype=torch.long)
        att = torch.zeros_like(ids)
        for i, d in enumerate(p):
            ids[i, :len(d)], att[i, :len(d)] = torch.tensor(d), 1
        out.append({"input_ids": ids, "attention_mask": att, "labels": ids.masked_fill(att == 0, -100)})
    return out, sum(len(d) - 1 for d in docs)


def token_loss_sum(model, b):
    keys = [k for k in ("input_ids", "attention_mask", "position_ids", "seq_idx", "cu_seq_lens_q", "cu_seq_lens_k",
                        "max_length_q", "max_length_k") if k in b]
    logits = model(**{k: b[k] for k in keys}, use_cache=False).logits.float()
    tgt = torch.full_like(b["labels"], -100)
    tgt[:, :-1] = b["labels"][:, 1:]
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), tgt.flatten(), ignore_index=-100, reduction="sum")


def main():
    out_path, packed, fused = sys.argv[1], "--packed" in sys.argv, "--fused" in sys.argv
    cuda = torch.cuda.is_available()
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    tok = build_tiny_tokenizer("olmo-think")
    model = build_tiny_model(tok, seed=0)
    if packed:
        from posttrain.model.packing import enable_exact_packing
        enable_exact_packing(model, allow_fallback=True)
    if fused:  # model.fused_layers: ZeRO-3 must still gather the swapped modules' weights
        from posttrain.model.fused import fuse_layers
        fuse_layers(model)
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    parts, n_tokens = batches(world, packed, len(tok))
    lr = 1.0  # SGD at lr 1: the update is the gradient, so the comparison is of gradients

    ref = None
    if rank == 0:  # single process, no DeepSpeed, the whole batch
        import copy
        m = copy.deepcopy(model).to(device)
        opt = torch.optim.SGD(m.parameters(), lr=lr)
        loss = sum(token_loss_sum(m, {k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()})
                   for b in parts) / n_tokens
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)  # the stages' max_grad_norm
        opt.step()
        ref = {n: p.detach().cpu() for n, p in m.named_parameters()}
        del m, opt

    opt = torch.optim.SGD(model.parameters(), lr=lr)
    cfg = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
           "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
           "bf16": {"enabled": False}, "zero_allow_untested_optimizer": True,
           "gradient_clipping": 1.0}  # clipped by the global norm over every rank's shards
    engine, opt, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=cfg)
    b = {k: v.to(device) if torch.is_tensor(v) else v for k, v in parts[rank].items()}
    loss = token_loss_sum(engine, b) / n_tokens * world  # DeepSpeed averages gradients over ranks
    engine.backward(loss)
    engine.step()

    report = {}
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None):
        if rank == 0:
            for n, p in engine.module.named_parameters():
                p = p.detach().cpu()
                report[n] = {"moved": (p - init[n]).abs().max().item(),
                             "err": (p - ref[n]).abs().max().item(),
                             "ref_moved": (ref[n] - init[n]).abs().max().item()}
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump({"world": world, "packed": packed, "fused": fused, "device": str(device), "params": report}, f, indent=1)
    dist.barrier()


if __name__ == "__main__":
    main()
