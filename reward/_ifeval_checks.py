"""One checker per IFEval instruction id, following google-research/instruction_following_eval.

Each checker is `check(response, **instruction_kwargs) -> bool`. They ignore unknown kwargs
because IFEval's `kwargs` rows carry every key of the union schema, mostly set to None.

>>> CHECKS["punctuation:no_comma"]("no commas here")
True
>>> CHECKS["length_constraints:number_words"]("one two three", num_words=3, relation="at least")
True
"""

from __future__ import annotations

import json
import re
from typing import Callable

_ABBREV = re.compile(r"\b(Mr|Mrs|Ms|Dr|Prof|Sr|Jr|St|vs|etc|e\.g|i\.e|Inc|Ltd|Co)\.", re.IGNORECASE)
_SENT_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")


def _compare(count: int, target: int, relation: str) -> bool:
    if relation == "less than":
        return count < int(target)
    if relation == "at least":
        return count >= int(target)
    raise ValueError(f"unknown relation {relation!r}")


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text)


def sentences(text: str) -> list[str]:
    """Rough sentence split; abbreviations like "Dr." do not end a sentence."""
    protected = _ABBREV.sub(lambda m: m.group(0).replace(".", "<DOT>"), text.strip())
    parts = [p.strip() for p in _SENT_END.split(protected)]
    return [p for p in parts if words(p)]


def _split_paragraphs(parts: list[str]) -> list[str] | None:
    """Drop empty leading/trailing parts; an empty part in the middle is malformed (None)."""
    kept = []
    for i, p in enumerate(parts):
        if not p.strip():
            if 0 < i < len(parts) - 1:
                return None
            continue
        kept.append(p)
    return kept


def _language(text: str) -> str | None:
    import langdetect  # lazy: its profiles take ~0.5 s to load

    langdetect.DetectorFactory.seed = 0  # langdetect is random unless seeded
    try:
        return langdetect.detect(text)
    except langdetect.LangDetectException:
        return None


def _pattern(word: str) -> str:
    # IFEval passes keywords to `re` unescaped (a keyword is a pattern there); one that does not
    # compile would crash it, here it is matched literally.
    try:
        re.compile(word)
        return word
    except re.error:
        return re.escape(word)


def keyword_existence(r, keywords, **_):
    return all(re.search(_pattern(k.strip()), r, re.IGNORECASE) for k in keywords)


def keyword_frequency(r, keyword, frequency, relation, **_):
    return _compare(len(re.findall(_pattern(keyword.strip()), r, re.IGNORECASE)), frequency, relation)


def forbidden_words(r, forbidden_words, **_):
    return not any(re.search(r"\b" + _pattern(w) + r"\b", r, re.IGNORECASE) for w in forbidden_words)


def letter_frequency(r, letter, let_frequency, let_relation, **_):
    return _compare(r.lower().count(letter.lower()), let_frequency, let_relation)


def response_language(r, language, **_):
    return _language(r) in (language, None)  # IFEval: undetectable text passes


def number_sentences(r, num_sentences, relation, **_):
    return _compare(len(sentences(r)), num_sentences, relation)


def number_paragraphs(r, num_paragraphs, **_):
    paras = _split_paragraphs(re.split(r"\s?\*\*\*\s?", r))
    return paras is not None and len(paras) == int(num_paragraphs)


def number_words(r, num_words, relation, **_):
    return _compare(len(words(r)), num_words, relation)


def nth_paragraph_first_word(r, num_paragraphs, nth_paragraph, first_word, **_):
    # IFEval counts non-empty paragraphs but indexes the raw split (an empty one in the middle shifts it).
    paras = re.split(r"\n\n", r)
    count = sum(1 for p in paras if p.strip())
    nth = int(nth_paragraph)
    if nth > count or not paras[nth - 1].strip():
        return False
    head = paras[nth - 1].strip().split()[0].lstrip("'").lstrip('"')
    head = re.split(r"[.,?!'\"]", head)[0].lower()
    return count == int(num_paragraphs) and head == first_word.lower()


def number_placeholders(r, num_placeholders, **_):
    return len(re.findall(r"\[.*?\]", r)) >= int(num_placeholders)


def postscript(r, postscript_marker, **_):
    marker = postscript_marker.strip().lower()
    if marker == "p.p.s":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif marker == "p.s.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + re.escape(marker) + r".*$"
    return bool(re.findall(pattern, r.lower(), flags=re.MULTILINE))


def number_bullet_lists(r, num_bullets, **_):
    stars = re.findall(r"^\s*\*[^\*].*$", r, flags=re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", r, flags=re.MULTILINE)
    return len(stars) + len(dashes) == int(num_bullets)


def constrained_response(r, **_):
    options = ("My answer is yes.", "My answer is no.", "My answer is maybe.")
    return any(o in r.strip() for o in options)


def number_highlighted_sections(r, num_highlights, **_):
    found = re.findall(r"\*[^\n\*]*\*", r) + re.findall(r"\*\*[^\n\*]*\*\*", r)
    return sum(1 for h in found if h.strip("*").strip()) >= int(num_highlights)


def multiple_sections(r, section_spliter, num_sections, **_):
    parts = re.split(r"\s?" + re.escape(section_spliter) + r"\s?\d+\s?", r)
    return len(parts) - 1 >= int(num_sections)


def json_format(r, **_):
    body = r.strip()
    for fence in ("```json", "```Json", "```JSON", "```"):
        body = body.removeprefix(fence)
    body = body.removesuffix("```").strip()
    try:
        json.loads(body)
    except ValueError:
        return False
    return True


def title(r, **_):
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", r))


def two_responses(r, **_):
    parts = _split_paragraphs(r.split("******"))
    return parts is not None and len(parts) == 2 and parts[0].strip() != parts[1].strip()


def repeat_prompt(r, prompt_to_repeat, **_):
    return r.strip().lower().startswith(prompt_to_repeat.strip().lower())


def end_checker(r, end_phrase, **_):
    return r.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def quotation(r, **_):
    r = r.strip()
    return len(r) > 1 and r[0] == '"' and r[-1] == '"'


def capital_word_frequency(r, capital_frequency, capital_relation, **_):
    return _compare(sum(w.isupper() for w in words(r)), capital_frequency, capital_relation)


def english_capital(r, **_):
    return r.isupper() and _language(r) in ("en", None)  # IFEval: undetectable text passes


def english_lowercase(r, **_):
    return r.islower() and _language(r) in ("en", None)


def no_comma(r, **_):
    return "," not in r


CHECKS: dict[str, Callable[..., bool]] = {
    "keywords:existence": keyword_existence,
    "keywords:frequency": keyword_frequency,
    "keywords:forbidden_words": forbidden_words,
    "keywords:letter_frequency": letter_frequency,
    "language:response_language": response_language,
    "length_constraints:number_sentences": number_sentences,
    "length_constraints:number_paragraphs": number_paragraphs,
    "length_constraints:number_words": number_words,
    "length_constraints:nth_paragraph_first_word": nth_paragraph_first_word,
    "detectable_content:number_placeholders": number_placeholders,
    "detectable_content:postscript": postscript,
    "detectable_format:number_bullet_lists": number_bullet_lists,
    "detectable_format:constrained_response": constrained_response,
    "detectable_format:number_highlighted_sections": number_highlighted_sections,
    "detectable_format:multiple_sections": multiple_sections,
    "detectable_format:json_format": json_format,
    "detectable_format:title": title,
    "combination:two_responses": two_responses,
    "combination:repeat_prompt": repeat_prompt,
    "startend:end_checker": end_checker,
    "startend:quotation": quotation,
    "change_case:capital_word_frequency": capital_word_frequency,
    "change_case:english_capital": english_capital,
    "change_case:english_lowercase": english_lowercase,
    "punctuation:no_comma": no_comma,
}
