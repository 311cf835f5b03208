import subprocess
import sys
from pathlib import Path

import pytest

from reward import REWARDS, build_reward_fn

ROOT = Path(__file__).resolve().parents[2]


def test_registry_has_the_required_rewards():
    assert {"math", "ifeval", "code", "format_think", "format_instruct", "judge"} <= set(REWARDS)


def test_unknown_reward_names_it_and_the_known_ones():
    with pytest.raises(ValueError) as err:
        build_reward_fn([{"name": "maths", "weight": 1.0}])
    assert "'maths'" in str(err.value) and "ifeval" in str(err.value) and "format_think" in str(err.value)


def test_specs_become_trl_reward_funcs_and_weights():
    funcs, weights = build_reward_fn([
        {"name": "math", "weight": 2.0, "mode": "lenient"},
        {"name": "format_think", "weight": 0.5, "alias": "think_short", "max_chars": 40},
    ])
    assert [f.__name__ for f in funcs] == ["math", "think_short"] and weights == [2.0, 0.5]
    comps = ["<think>hm</think>it is 12", "<think>" + "x" * 50 + "</think>12"]
    # the call TRL makes: prompts, completions, completion_ids, every dataset column, trainer_state
    kwargs = dict(prompts=["q1", "q2"], completion_ids=[[1], [2]], ground_truth=["12", "13"], trainer_state=object())
    assert funcs[0](completions=comps, **kwargs) == [1.0, 0.0]   # lenient kwarg bound from the spec
    assert funcs[1](completions=comps, **kwargs) == [1.0, 0.0]   # max_chars bound from the spec


def test_rows_are_routed_by_verifier_column():
    funcs, _ = build_reward_fn([{"name": "math", "weight": 1}, {"name": "code", "weight": 1},
                                {"name": "ifeval", "weight": 1}, {"name": "format_instruct", "weight": 1}])
    math_fn, code_fn, ifeval_fn, fmt_fn = funcs
    comps = ["The answer is 3", "def f():\n    return 3", "no commas here"]
    cols = dict(verifier=["math", "code", "ifeval"], ground_truth=["3", None, None],
                tests=[None, ["assert f() == 3"], None],
                instruction_id_list=[None, None, ["punctuation:no_comma"]], kwargs=[None, None, [{}]])
    assert math_fn(comps, **cols) == [1.0, None, None]
    assert code_fn(comps, **cols) == [None, 1.0, None]
    assert ifeval_fn(comps, **cols) == [None, None, 1.0]
    assert fmt_fn(comps, **cols) == [1.0, 1.0, 1.0]  # format applies everywhere


def test_custom_routes_and_unrouted_rows():
    (fn,), _ = build_reward_fn([{"name": "math", "weight": 1, "verifier": ["gsm8k", "aime"]}])
    comps = ["The answer is 1"] * 3
    assert fn(comps, verifier=["gsm8k", "math", "aime"], ground_truth=["1"] * 3) == [1.0, None, 1.0]
    assert fn(comps, ground_truth=["1", "2", None]) == [1.0, 0.0, None]  # no verifier column: all rows


def test_weight_defaults_and_star_route():
    (fn,), weights = build_reward_fn([{"name": "format_instruct", "verifier": "*"}])
    assert weights == [1.0] and fn(["a"], verifier=["whatever"]) == [1.0]


def test_import_pulls_in_neither_trl_nor_the_trainer():
    code = ("import sys, reward, reward.math, reward.code, reward.judge, reward.ifeval, reward.format\n"
            "bad = [m for m in sys.modules if m == 'trl' or m.startswith(('trl.', 'posttrain.stages'))]\n"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_judge_spec_must_say_where_the_judge_is():
    with pytest.raises(ValueError, match="base_url, model"):
        build_reward_fn([{"name": "judge", "weight": 1.0}])
    (fn,), _ = build_reward_fn([{"name": "judge", "weight": 1.0, "base_url": "http://127.0.0.1:9/v1",
                                 "model": "m", "retries": 0, "timeout_s": 0.5}])
    assert fn(["a"], prompts=["q"], verifier=["math"]) == [None]  # routed away: no request at all
