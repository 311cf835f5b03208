"""The instruction ids open-instruct's IFEvalG adds to Google's IFEval (Dolci / IF-RLVR rows).

Ported from allenai/open-instruct open_instruct/IFEvalG/instructions.py (Apache-2.0, Google
Research + AI2): each checker is that class's `check_following`, with the kwargs its
`build_description` takes. No maintained pip package carries these ids (if-verifiable and
lm-eval ship Google's 25 and IFBench's test ids only), so they live here.

Where IFEvalG calls `nltk.word_tokenize` (punkt data, a download at run time) `word_tokens`
stands in: words, contractions split as Treebank does, each punctuation mark its own token,
which is what word_tokenize returns on ordinary prose. open-instruct draws random kwargs when
a row omits one; a row without its kwargs cannot be checked here and scores False
(counted as ifeval/bad_kwargs by the caller).

>>> CHECKS["punctuation:punctuation_dot"]("No dots here!"), CHECKS["first_word:first_word_answer"]("Yes it is", first_word="yes")
(True, True)
"""

from __future__ import annotations

import re
from typing import Callable

# Google IFEval's instructions_util.split_into_sentences (also IFEvalG's), verbatim in effect.
_ALPHABETS = "([A-Za-z])"
_PREFIXES = "(Mr|St|Mrs|Ms|Dr)[.]"
_SUFFIXES = "(Inc|Ltd|Jr|Sr|Co)"
_STARTERS = (r"(Mr|Mrs|Ms|Dr|Prof|Capt|Cpt|Lt|He\s|She\s|It\s|They\s|Their\s|Our\s|We\s|But\s|However\s|That\s"
             r"|This\s|Wherever)")
_ACRONYMS = "([A-Z][.][A-Z][.](?:[A-Z][.])?)"
_WEBSITES = "[.](com|net|org|io|gov|edu|me)"
_DIGITS = "([0-9])"


def split_into_sentences(text: str) -> list[str]:
    """IFEval's rule-based sentence splitter.

    >>> split_into_sentences("Dr. Who went home. He slept! Did he?")
    ['Dr. Who went home.', 'He slept!', 'Did he?']
    """
    text = (" " + text + "  ").replace("\n", " ")
    text = re.sub(_PREFIXES, "\\1<prd>", text)
    text = re.sub(_WEBSITES, "<prd>\\1", text)
    text = re.sub(_DIGITS + "[.]" + _DIGITS, "\\1<prd>\\2", text)
    text = re.sub(r"\.{2,}", lambda m: "<prd>" * len(m.group(0)) + "<stop>", text)
    text = text.replace("Ph.D.", "Ph<prd>D<prd>")
    text = re.sub(r"\s" + _ALPHABETS + "[.] ", " \\1<prd> ", text)
    text = re.sub(_ACRONYMS + " " + _STARTERS, "\\1<stop> \\2", text)
    text = re.sub(_ALPHABETS + "[.]" + _ALPHABETS + "[.]" + _ALPHABETS + "[.]", "\\1<prd>\\2<prd>\\3<prd>", text)
    text = re.sub(_ALPHABETS + "[.]" + _ALPHABETS + "[.]", "\\1<prd>\\2<prd>", text)
    text = re.sub(" " + _SUFFIXES + "[.] " + _STARTERS, " \\1<stop> \\2", text)
    text = re.sub(" " + _SUFFIXES + "[.]", " \\1<prd>", text)
    text = re.sub(" " + _ALPHABETS + "[.]", " \\1<prd>", text)
    text = text.replace(".\u201d", "\u201d.").replace('."', '".').replace('!"', '"!').replace('?"', '"?')
    text = text.replace(".", ".<stop>").replace("?", "?<stop>").replace("!", "!<stop>").replace("<prd>", ".")
    out = [s.strip() for s in text.split("<stop>")]
    return out[:-1] if out and not out[-1] else out


_TOKEN = re.compile(r"\w+(?=n't\b)|n't\b|'\w+|\w+|[^\w\s]")


def word_tokens(text: str) -> list[str]:
    """Stand-in for nltk.word_tokenize on prose.

    >>> word_tokens("I don't know, Bob.")
    ['I', 'do', "n't", 'know', ',', 'Bob', '.']
    """
    return _TOKEN.findall(text)


def _first(x):
    return x if isinstance(x, str) else x[0]


def _count(pattern: str, text: str) -> int:
    # IFEvalG passes the keyword to re.findall unescaped: a keyword is a regex there too.
    return len(re.findall(pattern, text, flags=re.IGNORECASE))


def _paragraph_count(parts: list[str]) -> int | None:
    n = len(parts)
    for i, p in enumerate(parts):
        if not p.strip():
            if i in (0, len(parts) - 1):
                n -= 1
            else:
                return None
    return n


def repeat_phrase(r, phrase, small_n, **_):
    phrase = phrase.strip()
    ref = phrase.split()
    found = re.findall(rf"{ref[0]} .*? {ref[-1]}", r)
    if len(found) != int(small_n):
        return False
    ok = 0
    for f in found:
        f = f.split()
        if len(f) != len(ref):
            return False
        diff = sum(a != b for a, b in zip(f, ref))
        if diff > 1:
            return False
        ok += diff == 1
    return ok == int(small_n)


def copy(r, prompt_to_repeat, **_):
    return r.strip().lower() == prompt_to_repeat.strip().lower()


def copy_span_idx(r, prompt_to_repeat, n_start, n_end, **_):
    return r.strip().lower() == prompt_to_repeat[int(n_start): int(n_end)].strip().lower()


def sentence_hyphens(r, **_):
    gold = split_into_sentences(re.sub("-", " ", r))
    return all(s.strip() == s and s == g for s, g in zip(r.split("-"), gold))


def no_adjacent_consecutive(r, **_):
    w = r.split()
    return all(ord(b[0].lower()) - ord(a[0].lower()) != 1 for a, b in zip(w, w[1:]))


def square_brackets(r, **_):
    return all(w.startswith("[") and w.endswith("]") for w in r.split())


def word_once(r, keyword, **_):
    return _count(keyword.strip(), r) == 1


def word_count_different_numbers(r, keyword, frequency, relation, **_):
    n = _count(keyword.strip(), r)
    if relation == "less than":
        return n < int(frequency)
    if relation == "at least":
        return n >= int(frequency)
    raise ValueError(f"unknown relation {relation!r}")


def exclude_word_harder(r, keyword, **_):
    return " " + keyword.strip() + " " not in r


def paragraphs(r, **_):
    return _paragraph_count(re.split(r"\s?\*\*\*\s?", r)) == 2


def paragraphs2(r, **_):
    return _paragraph_count(re.split(r"\n\n", r)) == 2


def first_word_sent(r, first_word, **_):
    want = _first(first_word).strip().lower()
    return all(s.strip() and s.split()[0].strip().lower() == want for s in split_into_sentences(r))


def first_word_answer(r, first_word, **_):
    return bool(r.split()) and r.split()[0].strip().lower() == first_word.strip().lower()


def _bare(word: str) -> str:
    return re.sub(r"[^\w\s]", "", word.strip()).lower()


def last_word_sent(r, last_word, **_):
    want = _first(last_word).strip().lower()
    return all(s.strip() and _bare(s.split()[-1]) == want for s in split_into_sentences(r))


def last_word_answer(r, last_word, **_):
    return bool(r.split()) and _bare(r.split()[-1]) == last_word.strip().lower()


def bigram_wrapping(r, **_):
    w = r.split()
    return all(w[i].startswith("<<") and w[i + 1].endswith(">>") for i in range(0, len(w) - 1, 2))


def copying_multiple(r, prompt_to_repeat, N, **_):
    parts = r.split("******")
    return len(parts) == int(N) and all(copy(p, prompt_to_repeat) for p in parts)


def punctuation_dot(r, **_):
    return "." not in r


def punctuation_exclamation(r, **_):
    return "!" not in r


def lowercase_counting(r, N, **_):
    return len(re.findall(r"\b[a-z]+\b", r)) <= int(N)


def letter_counting(r, N, relation, **_):
    n = len(re.findall(r"[a-zA-Z]", r))
    if relation == "at least":
        return n >= int(N)
    if relation == "less than":
        return n < int(N)
    raise ValueError(f"unknown relation {relation!r}")


def letter_counting2(r, letter, let_frequency, let_relation, **_):
    # IFEvalG's LetterFrequencyChecker, as Google's keywords:letter_frequency.
    n = r.lower().count(letter.lower())
    return n < int(let_frequency) if let_relation == "less than" else n >= int(let_frequency)


def counting_composition(r, n_sent, n_words, **_):
    parts = re.split(r"\s?\*\*\*\s?", r)
    n = len(parts)
    for i, p in enumerate(parts):
        if not p.strip():
            if i in (0, len(parts) - 1):
                n -= 1
            else:
                return False
        sents = split_into_sentences(p)
        if len(sents) != int(n_sent) or any(len(word_tokens(s)) != int(n_words) for s in sents):
            return False
    return n == 3


def count_unique(r, **_):
    w = word_tokens(r)
    return len(w) == len(set(w))


def count_increment_word(r, keyword1, keyword2, **_):
    return _count(keyword1.strip(), r) == 1 and _count(keyword2.strip(), r) == 2


def palindrome(r, **_):
    return any(w == w[::-1] for w in r.split())


def keyword_specific_position(r, keyword, n, m, **_):
    sents = split_into_sentences(r)
    if len(sents) < int(n):
        return False
    w = word_tokens(sents[int(n) - 1])
    return len(w) >= int(m) and w[int(m) - 1] == _first(keyword).strip()


def start_end(r, **_):
    w = word_tokens(r)
    return len(w) >= 2 and w[0].lower() == w[-1].lower()


CHECKS: dict[str, Callable[..., bool]] = {
    "copy:repeat_phrase": repeat_phrase,
    "copy:copy": copy,
    "new:copy_span_idx": copy_span_idx,
    "detectable_format:sentence_hyphens": sentence_hyphens,
    "keywords:no_adjacent_consecutive": no_adjacent_consecutive,
    "detectable_format:square_brackets": square_brackets,
    "keywords:word_once": word_once,
    "keywords:word_count_different_numbers": word_count_different_numbers,
    "keywords:exclude_word_harder": exclude_word_harder,
    "paragraphs:paragraphs": paragraphs,
    "paragraphs:paragraphs2": paragraphs2,
    "first_word:first_word_sent": first_word_sent,
    "first_word:first_word_answer": first_word_answer,
    "last_word:last_word_sent": last_word_sent,
    "last_word:last_word_answer": last_word_answer,
    "detectable_format:bigram_wrapping": bigram_wrapping,
    "copy:copying_simple": copy,
    "copy:copying_multiple": copying_multiple,
    "punctuation:punctuation_dot": punctuation_dot,
    "punctuation:punctuation_exclamation": punctuation_exclamation,
    "count:lowercase_counting": lowercase_counting,
    "letters:letter_counting": letter_counting,
    "letters:letter_counting2": letter_counting2,
    "count:counting_composition": counting_composition,
    "count:count_unique": count_unique,
    "count:count_increment_word": count_increment_word,
    "keywords:palindrome": palindrome,
    "keywords:keyword_specific_position": keyword_specific_position,
    "keywords:start_end": start_end,
}
