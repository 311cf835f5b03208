"""Export a finished stage as a self-contained Hugging Face checkpoint that vLLM and stock
transformers can serve: `posttrain export RUN --stage S --as instruct|think [--out DIR] [--force]`.

Why a separate step: a stage's `model/` is what the trainer needs (its template carries
`{% generation %}` masks, its generation defaults are greedy-eval ones); a release needs the
template a server can render, both end tokens, sampling defaults and a model card. An export
is only reported once it is verified: reloaded from disk with `AutoModelForCausalLM` /
`AutoTokenizer`, its fp32 logits equal the stage model's on fixed prompts, its chat template
renders conversations exactly as the trainer's did, and its generation config stops on both
`<|im_end|>` and `<|endoftext|>`. It is written to a temporary directory beside DIR and
renamed into place, so a crash never leaves a half export where a server would find it.

    posttrain export checkpoints/tiny --stage dpo --as think              # -> RUN/exports/think
    python -m posttrain.export checkpoints/tiny --stage sft --as instruct --out /tmp/x --force
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from posttrain.data.templates import EOS, FAMILIES, IM_END, TEMPLATES, generation_prefix
from posttrain.rundir import RunDir, StageDone, read_json, replace_dir, saved_template, write_json

log = logging.getLogger("posttrain")

KINDS = ("instruct", "think")
# Sampling defaults shipped in generation_config.json. Think: the values AI2 (and Qwen3 /
# DeepSeek-R1) ship for reasoning models; greedy decoding makes long chains of thought loop.
# Instruct: a little cooler and still nucleus-sampled, the usual chat default; both are only
# defaults, a client's request overrides them.
SAMPLING = {"think": {"temperature": 0.6, "top_p": 0.95}, "instruct": {"temperature": 0.7, "top_p": 0.95}}
# Fixed verification prompts: chat markup, a digit-heavy problem and plain text, so the check
# exercises special tokens, the conv/GDN state over some length, and attention.
CHECK_CONVERSATIONS = [
    [{"role": "user", "content": "Ana has 12 apples and buys 30 more. How many apples does she have?"}],
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "Say hi."},
     {"role": "assistant", "content": "<think>short</think>Hi!"},
     {"role": "user", "content": "Count: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20"}],
]
LOGIT_TOL = 1e-5


class ExportError(RuntimeError):
    """An export that cannot be made or failed verification; one line."""


def training_template(stage_model: Path, kind: str) -> str:
    """The template the trainer renders `kind` conversations with. Built-in Olmo templates come
    in both kinds; a recipe's own Jinja template ships as trained, and only if it opens the
    assistant turn the way `kind` says."""
    saved = saved_template(stage_model)
    if not saved:
        return TEMPLATES[f"olmo-{kind}"]
    builtin = next((n for n, t in TEMPLATES.items() if t == saved), None)
    if builtin is not None:  # the same family's other kind (olmo3-think trained -> olmo3-instruct shipped)
        return TEMPLATES[f"{FAMILIES[builtin]}-{kind}"]
    if (generation_prefix(saved) == "<think>") != (kind == "think"):
        raise ExportError(f"{stage_model}: the stage trained with a custom chat template that "
                          f"{'opens' if generation_prefix(saved) else 'does not open'} the assistant turn with <think>; "
                          f"export it --as {'think' if generation_prefix(saved) else 'instruct'}")
    return saved


def shipped_template(template: str) -> str:
    """The training template without `{% generation %}` markers: they only build loss masks,
    and servers with a plain Jinja engine (not transformers') reject the unknown tag. The
    verification step proves the stripped template renders the same text."""
    return template.replace("{% generation %}", "").replace("{% endgeneration %}", "")


# ---- the export ---------------------------------------------------------------------------------
def export_stage(run_dir: str | Path, stage: str, kind: str, out: str | Path | None = None,
                 force: bool = False) -> Path:
    """Export RUN/STAGE/model as `kind` into `out` (default RUN/exports/KIND); returns `out`."""
    run_dir = Path(run_dir)
    if kind not in KINDS:
        raise ExportError(f"--as {kind}: must be one of {', '.join(KINDS)}")
    rd = RunDir(run_dir)
    src = rd.stage(stage)
    done = rd.done(stage)
    if done is None or not (src / "model").is_dir():
        have = sorted(rd.finished())
        hint = f" (finished stages: {', '.join(have)})" if have else ""
        raise ExportError(f"stage {stage} of {run_dir} has no finished output (no DONE){hint}")
    out = Path(out) if out is not None else rd.export(kind)
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(f"{out} is not empty; pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{time.time_ns()}"
    tmp.mkdir()
    try:
        info = _write_export(src, done, kind, tmp)
        from posttrain.model.load import usual_file_modes
        usual_file_modes(tmp)
        info.update(_verify(src / "model", tmp, kind, shown=out))
        write_json(tmp / "export.json", info)
        _fill_card_verification(tmp / "README.md", info)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported %s/%s as %s -> %s (max |logit diff| %.2e)", run_dir.name, stage, kind, out,
             info["verification"]["max_abs_logit_diff"])
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_leftovers(out: Path) -> list[Path]:
    """Remove what a killed export to `out` left beside it: `.NAME.tmp-PID-*` dirs whose process
    is gone (a whole model each; a live one is another export still writing) and `.NAME.old-*`
    dirs of an interrupted swap. Returns what was removed."""
    gone = []
    for p in out.parent.glob(f".{out.name}.tmp-*"):
        pid = p.name[len(f".{out.name}.tmp-"):].split("-", 1)[0]
        if not (pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid))):
            gone.append(p)
    gone += list(out.parent.glob(f".{out.name}.old-*"))
    for p in gone:
        log.info("removing %s, left by an interrupted export", p)
        shutil.rmtree(p, ignore_errors=True)
    return gone


def _write_export(src: Path, done: StageDone, kind: str, dst: Path) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    tok = AutoTokenizer.from_pretrained(src / "model")
    tok.chat_template = shipped_template(training_template(src / "model", kind))
    ends = [tok.convert_tokens_to_ids(t) for t in (IM_END, EOS)]
    missing = [t for t, i in zip((IM_END, EOS), ends) if i is None or i == tok.unk_token_id]
    if missing:
        raise ExportError(f"{src / 'model'}: tokenizer has no {' / '.join(missing)} token; cannot ship end tokens")
    # Keep the stored dtype (a bf16 7B stays 15 GB); upcasting and back would be lossless anyway.
    model = AutoModelForCausalLM.from_pretrained(src / "model", dtype="auto")
    model.config.eos_token_id = ends
    gen = GenerationConfig(eos_token_id=ends, pad_token_id=tok.pad_token_id,
                           bos_token_id=model.config.bos_token_id, do_sample=True, **SAMPLING[kind])
    model.generation_config = gen
    model.save_pretrained(dst, save_original_format=False)  # vLLM's tensor names
    tok.save_pretrained(dst)
    trained_kind = "think" if generation_prefix(saved_template(src / "model")) else "instruct"
    n_params = sum(p.numel() for p in model.parameters())
    dtype = str(model.dtype).replace("torch.", "")
    del model
    info = {"run": str(src.parent.resolve()), "stage": src.name, "stage_key": done.key, "kind": kind,
            "trained_kind": trained_kind, "params": n_params, "dtype": dtype, "exported": time.time(),
            "generation": {"eos_token_id": ends, **SAMPLING[kind]}}
    (dst / "README.md").write_text(model_card(src.parent, src.name, kind, dst, info))
    return info


# ---- model card ---------------------------------------------------------------------------------
def model_card(run_dir: Path, stage: str, kind: str, dst: Path, info: dict) -> str:
    """README.md: where the weights came from (base, recipe, stages, data with hashes, settings),
    how well they do (the eval table), and how to run them."""
    from posttrain.report import eval_rows, format_table
    rd = RunDir(run_dir)
    recipe = rd.recipe()
    base = (recipe.get("model") or {}).get("name", "?")
    chain = rd.chain(stage)
    name = f"{recipe.get('name', run_dir.name)}-{stage}-{kind}"
    L = ["---", "library_name: transformers", "pipeline_tag: text-generation", "tags: [olmo_hybrid, posttrain, "
         f"{kind}]", "---", f"# {name}", "",
         f"`OlmoHybridForCausalLM` ({info['params']:,} parameters, {info['dtype']}) post-trained from "
         f"`{base}` by posttrain: {' -> '.join(chain)}; exported from stage `{stage}` of run "
         f"`{run_dir.name}` as **{kind}** (chat template {'opening the assistant turn with `<think>`' if kind == 'think' else 'without a thinking block'}).", ""]
    if info.get("trained_kind") != kind:
        L += [f"> Note: the stages trained with the {info.get('trained_kind')} template; this export ships the {kind} one.", ""]
    L += ["{{VERIFICATION}}", "", "## Recipe", "",
          f"- recipe: `{rd.source() or '?'}` (resolved copy: `recipe.yaml` in the run directory)",
          f"- base model: `{base}`; chat template: `{recipe.get('chat_template', '?')}`; seed {recipe.get('seed', 0)}",
          f"- stage key of the exported stage: `{info.get('stage_key')}`", "", "## Stages and data", ""]
    L += ["| stage | kind | starts from | train mix | rows | mix sha256 | eval mix | eval sha256 |",
          "|---|---|---|---|---|---|---|---|"]
    hp = []
    for n in chain:
        s = rd.record(n)
        m = s.manifest or {}
        tr, ev = m.get("train") or {}, m.get("eval") or {}
        L.append(f"| {n} | {s.kind} | {s.stage.get('init_from') or base} | {tr.get('name', '?')} "
                 f"(`{tr.get('mix', '')}`) | {tr.get('rows', sum(x.get('taken', 0) for x in tr.get('sources', [])) or '?')} "
                 f"| `{tr.get('sha256', '?')}` | {ev.get('name', '')} | {('`' + ev['sha256'] + '`') if ev.get('sha256') else ''} |")
        for src in tr.get("sources", []):
            hp.append(f"  - {n} source `{src.get('path')}` ({src.get('split', '')}): {src.get('taken', '?')} rows, "
                      f"sha256 `{str(src.get('sha256', '?'))}`")
    if hp:
        L += ["", "Sources:", ""] + hp
    L += ["", "## Hyperparameters", ""]
    from posttrain.stages.registry import COMMON_CARD_FIELDS, STAGES
    for n in chain:
        rec = rd.record(n)
        st = rec.stage
        keep = COMMON_CARD_FIELDS + (STAGES[rec.kind].card_fields if rec.kind in STAGES else ())
        items = ", ".join(f"{k}={st[k]}" for k in keep if k in st)
        L.append(f"- **{n}**: {items or '(config.yaml missing)'}")
    rows = [r for r in eval_rows(run_dir) if r["stage"] in ("base", *chain)]
    L += ["", "## Evaluation (held-out, greedy)", ""]
    if rows:
        L += ["```", format_table(rows), "```", "",
              "accuracy: math verifier on the stage's held-out eval mix; format: the format reward; "
              "mean length in tokens. These are the run's own quick evals, not benchmark scores."]
    else:
        L.append("No evals were run (`posttrain eval RUN`).")
    g = info["generation"]
    L += ["", "## Use", "", "vLLM (0.26 needs posttrain's plugin for the GDN conv weights: `pip install posttrain` "
          "registers it; later vLLM releases may not need it):", "", "```bash",
          f"vllm serve <this directory> --served-model-name {name}", "```", "",
          "```python", "from vllm import LLM, SamplingParams", "llm = LLM(model=\"<this directory>\")",
          f"params = SamplingParams(temperature={g['temperature']}, top_p={g['top_p']}, max_tokens=1024)",
          "print(llm.chat([{\"role\": \"user\", \"content\": \"What is 17 + 25?\"}], params)[0].outputs[0].text)",
          "```", "", "transformers:", "", "```python",
          "from transformers import AutoModelForCausalLM, AutoTokenizer",
          "tok = AutoTokenizer.from_pretrained(\"<this directory>\")",
          "model = AutoModelForCausalLM.from_pretrained(\"<this directory>\", dtype=\"auto\")",
          "ids = tok.apply_chat_template([{\"role\": \"user\", \"content\": \"What is 17 + 25?\"}],",
          "                              add_generation_prompt=True, return_tensors=\"pt\", return_dict=True)",
          "out = model.generate(**ids, max_new_tokens=256)  # sampling defaults from generation_config.json",
          "print(tok.decode(out[0, ids['input_ids'].shape[1]:]))", "```", "",
          f"Generation defaults: temperature {g['temperature']}, top_p {g['top_p']}; stops on `{IM_END}` and `{EOS}` "
          f"(ids {g['eos_token_id']}). Left padding for batched generation (the GDN layers need it)."]
    return "\n".join(L) + "\n"


# ---- verification -------------------------------------------------------------------------------
def _logits(model_dir: Path, ids: list[list[int]], **load_kw) -> tuple[list, dict]:
    import torch
    from transformers import AutoModelForCausalLM
    model, info = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, output_loading_info=True,
                                                       **load_kw)
    # Where fla is installed, transformers routes the GDN kernels to fla (Triton, CUDA only) even
    # for CPU tensors: run where the kernels can. Both copies run on the same device and kernels.
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(dev).eval()
    with torch.no_grad():  # one row each: no padding effects
        out = [model(torch.tensor([x], device=dev)).logits[0].float().cpu() for x in ids]
    big = sum(p.numel() for p in model.parameters()) > 1e8
    del model
    if big:  # free a 7B before loading the next copy; a full collection costs seconds on small runs too
        gc.collect()
    return out, info


def _verify(stage_model: Path, export_dir: Path, kind: str, shown: Path | None = None) -> dict:
    """Fails with ExportError unless the exported dir reloads into the same model and template.
    `shown` is the final directory, named in errors instead of the temporary one."""
    shown = shown or export_dir
    from transformers import AutoTokenizer, GenerationConfig
    from posttrain.model.load import end_token_ids
    train_tok = AutoTokenizer.from_pretrained(stage_model)
    train_tok.chat_template = training_template(stage_model, kind)  # what the trainer renders with
    tok = AutoTokenizer.from_pretrained(export_dir)
    rendered = 0
    for conv in CHECK_CONVERSATIONS:
        for gen_prompt in (True, False):
            if gen_prompt and conv[-1]["role"] == "assistant":
                continue
            a = train_tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen_prompt)
            b = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen_prompt)
            if a != b:
                raise ExportError(f"{shown}: exported chat template renders differently from the trainer's "
                                  f"({a[-40:]!r} vs {b[-40:]!r})")
            if train_tok(a, add_special_tokens=False)["input_ids"] != tok(b, add_special_tokens=False)["input_ids"]:
                raise ExportError(f"{shown}: exported tokenizer encodes the chat differently from the trainer's")
            rendered += 1
    ids = [tok(tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True),
               add_special_tokens=False)["input_ids"] for c in CHECK_CONVERSATIONS]
    ref, _ = _logits(stage_model, ids)
    got, info = _logits(export_dir, ids)
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if bad:
        raise ExportError(f"{shown}: stock AutoModelForCausalLM load reports {bad}")
    diff = max(float((r - g).abs().max()) for r, g in zip(ref, got))
    if not diff <= LOGIT_TOL:  # also catches NaN
        raise ExportError(f"{shown}: reloaded logits differ from the stage model's by {diff:.3g} (> {LOGIT_TOL})")
    gen = GenerationConfig.from_pretrained(export_dir)
    eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
    want = end_token_ids(tok)
    if len(want) < 2 or not set(want) <= set(eos):
        raise ExportError(f"{shown}: generation_config.json eos_token_id {eos} lacks one of {IM_END}/{EOS} {want}")
    if generation_prefix(tok.chat_template or "") != ("<think>" if kind == "think" else ""):
        raise ExportError(f"{shown}: chat template does not match --as {kind}")
    return {"verification": {"max_abs_logit_diff": diff, "tolerance": LOGIT_TOL, "prompts": len(ids),
                             "prompt_tokens": [len(x) for x in ids], "templates_rendered": rendered,
                             "eos_token_id": eos}}


def _fill_card_verification(card: Path, info: dict) -> None:
    v = info["verification"]
    card.write_text(card.read_text().replace(
        "{{VERIFICATION}}",
        f"Verified at export: reloaded with stock `AutoModelForCausalLM`/`AutoTokenizer`, fp32 logits on "
        f"{v['prompts']} fixed chat prompts ({', '.join(map(str, v['prompt_tokens']))} tokens) match the trained "
        f"model within {v['max_abs_logit_diff']:.1e} (tolerance {v['tolerance']:.0e}); the chat template renders "
        f"{v['templates_rendered']} conversations identically to the training template."))


# ---- recipe exports (pipeline hook) -------------------------------------------------------------
def run_exports(run_dir: str | Path, exports) -> list[Path]:
    """The recipe's `exports:` after a run. An export whose recorded stage key matches the stage's
    current DONE key is up to date and skipped; otherwise it is (re)made, replacing the old one."""
    rd, made = RunDir(run_dir), []
    for ex in exports:
        out = Path(ex.out) if ex.out else rd.export(ex.kind)
        done = rd.done(ex.stage)
        old = read_json(out / "export.json") or {}
        if done and old.get("stage_key") == done.key and old.get("kind") == ex.kind:
            log.info("export %s (%s of %s): up to date", out, ex.kind, ex.stage)
        else:
            export_stage(run_dir, ex.stage, ex.kind, out, force=True)
        made.append(out)
    return made


# ---- CLI ----------------------------------------------------------------------------------------
def build_parser(ap: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    ap = ap or argparse.ArgumentParser(prog="posttrain export", description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="run directory (checkpoints/NAME)")
    ap.add_argument("--stage", required=True, help="finished stage to export")
    ap.add_argument("--as", dest="kind", choices=KINDS, required=True, help="chat template and generation defaults")
    ap.add_argument("--out", help="output directory (default RUN/exports/KIND)")
    ap.add_argument("--force", action="store_true", help="replace a non-empty output directory")
    return ap


def cmd_export(args) -> int:
    try:
        out = export_stage(args.run, args.stage, args.kind, args.out, args.force)
    except ExportError as e:
        print(f"posttrain: error: {e}", file=sys.stderr)
        return 2
    v = json.loads((out / "export.json").read_text())["verification"]
    print(f"exported {args.run}/{args.stage} as {args.kind} -> {out}\n"
          f"verified: max |logit diff| {v['max_abs_logit_diff']:.1e}, template identical, ends {v['eos_token_id']}\n"
          f"serve:    vllm serve {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname).1s %(message)s", datefmt="%H:%M:%S")
    return cmd_export(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
