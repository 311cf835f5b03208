"""A killed RL stage resumes from its last complete checkpoint without replaying prompts."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from posttrain.pipeline import Pipeline
from posttrain.rundir import read_done
from posttrain.recipe import load_recipe

ROOT = Path(__file__).resolve().parent.parent
STEPS, PROMPTS = 6, 2

RECIPE = f"""
name: rl-resume
output_dir: OUT
chat_template: olmo-think
stages:
  rl:
    kind: grpo
    mix: {ROOT}/data_mixes/tiny/rl_prompts.yaml
    learning_rate: 1.0e-4
    max_steps: {STEPS}
    rollouts_per_prompt: 4
    prompts_per_step: {PROMPTS}
    micro_batch_size: 8
    max_prompt_length: 128
    max_completion_length: 12
    active_sampling: false     # exactly PROMPTS prompts a step, so queue positions are countable
    rewards: [{{name: math, weight: 1.0}}]
    engine: hf
    logging_steps: 1
    save_steps: 2
    eval: {{max_examples: 0}}
"""


def write_recipe(tmp_path, extra: str = "") -> Path:
    """The recipe above, its outputs under tmp_path/run; `extra` adds lines to the rl stage."""
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE.replace("OUT", str(tmp_path / "run")) + "".join(f"    {x}\n" for x in extra.splitlines()))
    return path


def kill_after_checkpoint(tmp_path, path, step: int = 4) -> dict:
    """Run the recipe in a child process, SIGKILL it once trainer checkpoint `step` is complete;
    returns that checkpoint's saved prompt queue."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    log = tmp_path / "first.log"
    with log.open("w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "posttrain", "run", str(path)], env=env, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
    work = tmp_path / "run" / ".work"
    deadline = time.time() + 300
    while not list(work.glob(f"rl-*/trainer/checkpoint-{step}/trainer_state.json")) and time.time() < deadline \
            and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    cks = list(work.glob(f"rl-*/trainer/checkpoint-{step}"))
    assert cks, f"no checkpoint before the kill:\n{log.read_text()[-3000:]}"
    return json.loads((cks[0] / "prompt_queue.json").read_text())


def test_killed_rl_stage_resumes_its_prompt_queue(tmp_path):
    path = write_recipe(tmp_path)
    saved = kill_after_checkpoint(tmp_path, path)
    assert saved["pos"] == 4 * PROMPTS  # what steps 1-4 drew
    assert read_done(tmp_path / "run" / "rl") is None

    pipe = Pipeline(load_recipe(str(path)))
    assert pipe.plan()[0].action == "resume"
    res = pipe.run()
    assert res[0].action == "resumed" and res[0].summary.steps == STEPS
    # Resumed at step 4 with the queue at 4 x PROMPTS: steps 5-6 drew the next prompts, none again.
    # A queue restarted from scratch would end at 2 x PROMPTS.
    done = read_done(tmp_path / "run" / "rl")
    assert done.summary.prompt_queue["pos"] == STEPS * PROMPTS, done


def test_a_checkpoint_killed_while_saving_is_not_resumed_from(tmp_path):
    from posttrain.stages.common import StageContext
    ctx = StageContext(recipe=None, name="rl", stage=None, work_dir=tmp_path, init_dir=None, chat_template="",
                       mix=None, eval_rows=[])
    assert ctx.resume_checkpoint() is None
    for step, complete in ((2, True), (4, True), (6, False)):
        ck = tmp_path / "trainer" / f"checkpoint-{step}"
        ck.mkdir(parents=True)
        (ck / "prompt_queue.json").write_text("{}")
        if complete:
            (ck / "trainer_state.json").write_text("{}")
    assert ctx.resume_checkpoint() == str(tmp_path / "trainer" / "checkpoint-4")
