"""LLM-as-judge reward over any OpenAI-compatible `/v1/chat/completions` endpoint.

Standard library HTTP (urllib) so the reward works anywhere the trainer does. Requests run
on a thread pool (the judge server batches them), each with a timeout and retries with
backoff on connection errors, 429 and 5xx. Replies are cached by a hash of the request
(in memory, optionally appended to a JSONL file) because GRPO re-scores identical
completions often and judge calls are the slowest reward. Unparseable replies and failed
requests score `fail_score` (None by default: the policy should not be punished for the
judge's failure; open-instruct scores them 0) and are counted in `reward.metrics`.

Dolci's judged rows (labels `general-quality`, `general-quality_ref`) use open-instruct's
`LMJudgeVerifier` (open_instruct/judge_utils.py, ground_truth_utils.py): the template for the
label's judge type (`template: auto`, the default, picks it from the row's label), the prompt
as "role: content" lines, the completion's final answer (`_text.final_answer`), the row's
`ground_truth` as the reference, and the reply's JSON "SCORE" (1-10) / 10, after dropping any
`<think>` block of a reasoning judge. AI2's Olmo 3 runs judge with Qwen3-32B on vLLM.

>>> parse_score("The answer is correct. Score: 7")
0.7
>>> parse_score("no idea") is None
True
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reward import metrics
from reward._text import answer_text, column, completion_text, final_answer, raw_text

# open-instruct judge_utils.py templates ({input}: the prompt, {output}: the answer, {label}: the
# reference) and the scale of their SCORE.
_OI_TAIL = '\n\n[Your judgement]\nRespond in JSON format. {"REASONING": "[...]", "SCORE": "<your-score>"}'
_OI_NOTES = (
    "- Your evaluation should consider factors such as the helpfulness, relevance, accuracy, creativity, "
    "appropriate level of detail, and how well the response satisfies the user's explicit constraints or "
    "accurately follows their instructions.\n")
OPEN_INSTRUCT_TEMPLATES: dict[str, tuple[str, float]] = {
    "quality": ((
        "\n### Task Description\nPlease act as an impartial judge and evaluate the quality of the response "
        "provided by an\nAI assistant to the user query displayed below.\n\nNotes:\n" + _OI_NOTES +
        "- If there is a system prompt, ensure the AI answer prioritizes following it.\n"
        "- Begin your evaluation by providing a short explanation.\n"
        "- Be as objective as possible. After providing your short explanation, please output a score on a "
        "scale of 1 to 10.\n- Please adhere to the following format.\n\n[Conversation History]\n{input}\n\n"
        "[AI Answer]\n{output}" + _OI_TAIL), 10.0),
    "quality_ref": ((
        "\n### Task Description\nPlease act as an impartial judge and evaluate the quality of the answer "
        "provided by an\nAI assistant to the conversation history leading up to the answer displayed below.\n"
        "Judge whether the provided answer is good by comparing it to the reference answer.\n\nNotes:\n"
        "- Besides comparing to the reference answer, your evaluation should consider factors such as the "
        "helpfulness, relevance, accuracy, creativity, appropriate level of detail, and how well the response "
        "satisfies the user's explicit constraints or accurately follows their instructions.\n"
        "- Note that sometimes the reference answer is not the only answer. So any valid variation of the "
        "reference answer is also acceptable and can get a full score.\n"
        "- If there is a system prompt, ensure the AI answer prioritizes following it.\n"
        "- Begin your evaluation by providing a short explanation.\n"
        "- Be as objective as possible. After providing your short explanation, please output a score on a "
        "scale of 1 to 10.\n- Please adhere to the following format.\n\n[Conversation History]\n{input}\n\n"
        "[AI Answer]\n{output}\n\n[Reference Gold Answer]\n{label}" + _OI_TAIL), 10.0),
    "quality_rubric": ((
        "\n### Task Description\nPlease act as an impartial judge and evaluate the quality of the response "
        "provided by an\nAI assistant to the user query displayed below. You are shown the user query, "
        "assistant response, and an evaluation criteria.\n\nNotes:\n"
        "- Each response must be evaluated against these criteria independently.\n"
        "- An overall score of 1 requires meeting all criteria.\n"
        "- An overall score of 0 in any single category results in the output being classified as bad (0).\n"
        "- Begin your evaluation by providing a short explanation.\n"
        "- Be as objective as possible. After providing your explanation, please output the overall score of "
        "0 or 1.\n\n\n### Evaluation Criteria\nUse the following criteria to evaluate the response:\n{label}\n\n"
        "[Query]\n{input}\n\n[Response]\n{output}" + _OI_TAIL), 1.0),
}


def parse_json_score(text: Any, scale: float = 10.0) -> float | None:
    """open-instruct's `extract_json_score_with_fallback` (think block dropped first) -> [0, 1].

    >>> parse_json_score('<think>hm</think>```json\\n{"REASONING": "ok", "SCORE": "8"}\\n```')
    0.8
    >>> parse_json_score('{"REASONING": "bad "quotes"", "SCORE": 3}'), parse_json_score("no json") is None
    (0.3, True)
    """
    if not isinstance(text, str):
        return None
    text = re.sub(r"<think>\s*.*?\s*</think>\s*", "", text, flags=re.DOTALL)
    text = text.replace("<answer>", "").replace("</answer>", "").strip()
    text = text.removeprefix("```json").removeprefix("```").removesuffix("```").strip()
    try:
        data = json.loads(text.replace("\r\n", "\n").replace("\n", "\\n"))
        score = float(data.get("SCORE", 0.0)) if isinstance(data, dict) else None
    except (ValueError, TypeError):
        m = re.search(r'"SCORE"\s*:\s*"?([0-9]+(?:\.[0-9]+)?)"?', text)
        score = float(m.group(1)) if m else None
    if score is None:
        return None
    return min(max(score / scale, 0.0), 1.0)


def chat_lines(prompt: Any) -> str:
    """open-instruct's raw query: every prompt message as "role: content", one per line."""
    if isinstance(prompt, list):
        return "\n".join(f"{m.get('role')}: {m.get('content')}" for m in prompt if isinstance(m, dict))
    return completion_text(prompt) or ""

DEFAULT_RUBRIC = (
    "You are grading a response to a user's request. Judge helpfulness, correctness and "
    "clarity.{reference_hint}\n\n[Request]\n{prompt}\n\n[Response]\n{completion}\n\n"
    "Reply with a short justification, then a final line 'Score: N' where N is an integer "
    "from 0 (useless) to {max_score} (perfect)."
)

_KEYED = re.compile(r"(?:score|rating|grade)\**\s*(?:is|of)?\s*[:=]?\s*\**\s*(-?\d+(?:\.\d+)?)"
                    r"(?:\s*(?:/|out of)\s*(\d+(?:\.\d+)?))?", re.IGNORECASE)
_BARE = re.compile(r"\s*\**\s*(-?\d+(?:\.\d+)?)\s*(?:(?:/|out of)\s*(\d+(?:\.\d+)?))?\s*\**\.?\s*")


def parse_score(text: Any, max_score: float = 10) -> float | None:
    """Judge reply -> score in [0, 1], or None if no score can be read.

    Reads the last "Score: N" (also "Rating", "N/10", "N out of 10"), or a reply that is just
    a number. Any other number in free text is ignored: it is as likely a quoted value.
    Scores outside [0, max] are treated as unparseable rather than clipped.
    """
    if not isinstance(text, str):
        return None
    found = _KEYED.findall(text) or ([m.groups()] if (m := _BARE.fullmatch(text)) else [])
    if not found:
        return None
    value, denom = found[-1]
    top = float(denom) if denom else float(max_score)
    score = float(value)
    if top <= 0 or not 0 <= score <= top:
        return None
    return score / top


@dataclass
class JudgeConfig:
    base_url: str                    # e.g. "http://127.0.0.1:8000/v1"
    model: str
    rubric: str = DEFAULT_RUBRIC     # placeholders: {prompt} {completion} {reference} {reference_hint} {max_score}
    max_score: float = 10
    max_tokens: int = 256
    temperature: float = 0.0
    timeout_s: float = 60.0
    retries: int = 2
    backoff_s: float = 0.5
    workers: int = 4
    api_key: str | None = None
    cache_path: str | None = None
    fail_score: float | None = None
    extra_body: dict[str, Any] = field(default_factory=dict)  # e.g. {"logit_bias": {...}}
    template: str | None = "auto"
    """open-instruct judge type (quality | quality_ref | quality_rubric) for every row; "auto": the
    type named by the row's `general-<type>` label, `rubric` for rows without one; None: `rubric` always."""


class JudgeError(RuntimeError):
    pass


def render(rubric: str, prompt: str, completion: str, reference: str | None, max_score: float) -> str:
    """Fill the rubric with plain replacement: completions are full of `{}` that str.format would choke on."""
    hint = " A reference answer is given; the response should agree with it." if reference else ""
    ref = f"\n\n[Reference]\n{reference}" if reference else ""
    values = {"{prompt}": prompt + ref if "{reference}" not in rubric else prompt, "{completion}": completion,
              "{reference}": reference or "", "{reference_hint}": hint, "{max_score}": f"{max_score:g}"}
    return re.sub("|".join(map(re.escape, values)), lambda m: values[m.group(0)], rubric)


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, list):  # chat format: the last user turn is the request
        users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        return str(users[-1]) if users else ""
    return completion_text(prompt) or ""


class Judge:
    """A configured judge; call it like a reward function."""

    def __init__(self, config: JudgeConfig):
        self.config = config
        self.cache: dict[str, str] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="judge")
        if config.cache_path and Path(config.cache_path).exists():
            for line in Path(config.cache_path).read_text().splitlines():
                try:
                    row = json.loads(line)
                    self.cache[row["key"]] = row["text"]
                except (ValueError, KeyError):
                    metrics.incr("judge/bad_cache_line")

    def _body(self, content: str) -> dict[str, Any]:
        c = self.config
        return {"model": c.model, "messages": [{"role": "user", "content": content}],
                "max_tokens": c.max_tokens, "temperature": c.temperature, **c.extra_body}

    def _post(self, body: dict[str, Any]) -> str:
        c = self.config
        req = urllib.request.Request(c.base_url.rstrip("/") + "/chat/completions",
                                     data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {c.api_key}"} if c.api_key else {})})
        for attempt in range(c.retries + 1):
            try:
                with urllib.request.urlopen(req, timeout=c.timeout_s) as resp:
                    return json.loads(resp.read())["choices"][0]["message"]["content"] or ""
            except urllib.error.HTTPError as exc:
                if exc.code != 429 and exc.code < 500:
                    raise JudgeError(f"HTTP {exc.code}: {exc.read()[:200]!r}") from exc
                err: Exception = exc
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                err = exc
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                raise JudgeError(f"malformed reply: {exc}") from exc
            if attempt < c.retries:
                metrics.incr("judge/retry")
                time.sleep(c.backoff_s * 2 ** attempt)
        raise JudgeError(f"gave up after {c.retries + 1} attempts: {err}")

    def reply(self, content: str) -> str:
        """Judge's raw reply text for a rendered rubric (cached)."""
        body = self._body(content)
        key = hashlib.sha256(json.dumps([self.config.base_url, body], sort_keys=True).encode()).hexdigest()
        with self._lock:
            if key in self.cache:
                metrics.incr("judge/cache_hit")
                return self.cache[key]
        text = self._post(body)
        with self._lock:
            self.cache[key] = text
            if self.config.cache_path:
                with open(self.config.cache_path, "a") as f:
                    f.write(json.dumps({"key": key, "text": text}) + "\n")
        return text

    def judge_type(self, label: Any) -> str | None:
        t = self.config.template
        if t == "auto":
            t = label[len("general-"):] if isinstance(label, str) and label.lower().startswith("general-") else None
        if t is not None and t not in OPEN_INSTRUCT_TEMPLATES:
            raise ValueError(f"judge template {t!r}: known {', '.join(OPEN_INSTRUCT_TEMPLATES)}")
        return t

    def score(self, prompt: Any, completion: Any, reference: Any = None, label: Any = None) -> float | None:
        c = self.config
        kind = self.judge_type(label)
        text = raw_text(completion) if kind else answer_text(completion)
        if text is None:
            metrics.incr("judge/bad_completion")
            return 0.0
        if kind:
            template, scale = OPEN_INSTRUCT_TEMPLATES[kind]
            values = {"{input}": chat_lines(prompt), "{output}": final_answer(text),
                      "{label}": "" if reference is None else str(reference)}
            content = re.sub("|".join(map(re.escape, values)), lambda m: values[m.group(0)], template)
        else:
            content = render(c.rubric, _prompt_text(prompt), text, None if reference is None else str(reference),
                             c.max_score)
        try:
            reply = self.reply(content)
        except JudgeError:
            metrics.incr("judge/request_fail")
            return c.fail_score
        score = parse_json_score(reply, scale) if kind else parse_score(reply, c.max_score)
        if score is None:
            metrics.incr("judge/parse_fail")
            return c.fail_score
        return score

    def __call__(self, completions: list[Any], prompts: list[Any] | None = None,
                 reference: list[Any] | None = None, verifier: list[Any] | None = None,
                 **_: Any) -> list[float | None]:
        n = len(completions)
        cols = {"p": prompts, "r": reference, "v": verifier}
        return list(self._pool.map(self.score, column(cols, "p", n), completions, column(cols, "r", n),
                                   column(cols, "v", n)))

    def close(self) -> None:
        self._pool.shutdown(wait=False)


def probe(**config: Any) -> str:
    """One 1-token request to a judge config, no retries: its reply, or JudgeError saying why not.

    Lets a benchmark run refuse an unusable endpoint before any model loads, where the reward
    path would score every completion `fail_score` and carry on.
    """
    known = {k: v for k, v in config.items() if k in JudgeConfig.__dataclass_fields__}
    judge = Judge(JudgeConfig(**{**known, "retries": 0, "max_tokens": 1,
                                 "timeout_s": min(float(known.get("timeout_s", 30.0)), 30.0)}))
    try:
        return judge._post(judge._body("Reply with the word OK."))
    finally:
        judge.close()


_judges: dict[str, Judge] = {}
_judges_lock = threading.Lock()


def get_judge(**config: Any) -> Judge:
    """One Judge (pool + cache) per distinct config, shared across reward calls."""
    key = json.dumps(config, sort_keys=True, default=str)
    with _judges_lock:
        if key not in _judges:
            _judges[key] = Judge(JudgeConfig(**config))
        return _judges[key]


def judge_reward(completions: list[Any], prompts: list[Any] | None = None, reference: list[Any] | None = None,
                 ground_truth: list[Any] | None = None, verifier: list[Any] | None = None,
                 *, base_url: str, model: str, **config: Any) -> list[float | None]:
    """TRL reward: score each completion with the judge at `base_url` (see JudgeConfig for options).

    The reference is the `reference` column, else `ground_truth` (open-instruct's label).
    Config keys are separated from dataset columns by name: anything JudgeConfig knows is
    config, the rest (TRL's columns) is ignored.
    """
    known = {k: v for k, v in config.items() if k in JudgeConfig.__dataclass_fields__}
    n = len(completions)
    refs = [r if r is not None else g for r, g in zip(column({"r": reference}, "r", n),
                                                      column({"g": ground_truth}, "g", n))]
    return get_judge(base_url=base_url, model=model, **known)(completions, prompts, refs, verifier)
