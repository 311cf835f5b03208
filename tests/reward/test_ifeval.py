import json

import pytest

from reward import metrics
from reward._ifeval_checks import CHECKS, sentences
from reward.ifeval import ifeval_reward

EN = "The quick brown fox jumps over the lazy dog. It was a sunny day and everyone was happy."
FR = "Le renard brun rapide saute par-dessus le chien paresseux. Il faisait beau et tout le monde était content."

# (instruction id, kwargs, passing response, failing response)
CASES = [
    ("keywords:existence", {"keywords": ["fox", "dog"]}, EN, "Only a fox here."),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "at least"}, "cat cat", "one cat"),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "less than"}, "one cat", "cat cat"),
    ("keywords:forbidden_words", {"forbidden_words": ["bad", "evil"]}, "a good badge", "a bad day"),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 3, "let_relation": "at least"}, "zzz buzz", "zebra"),
    ("language:response_language", {"language": "fr"}, FR, EN),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"}, "One. Two.", "One. Two. Three!"),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "first part\n***\nsecond part", "only one"),
    ("length_constraints:number_words", {"num_words": 5, "relation": "at least"}, "one two three four five", "one two"),
    ("length_constraints:nth_paragraph_first_word",
     {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"}, "Start here.\n\nThen, finish.", "Start here.\n\nNow finish."),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name], at [address]", "Dear [name]"),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hello.\nP.S. bye", "Hello. bye"),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Hi\nP.P.S see you", "Hi\nP.S. see you"),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n* two", "* one\n* two\n- three"),
    ("detectable_format:constrained_response", {}, "My answer is yes.", "Yes, definitely."),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*one* and **two**", "*one* only"),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "Section 1\nintro\nSection 2\nbody", "Section 1\nall in one"),
    ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```', "{'a': 1}"),
    ("detectable_format:title", {}, "<<My Title>>\ntext", "My Title\ntext"),
    ("combination:two_responses", {}, "Answer A\n******\nAnswer B", "Answer A\n******\nAnswer A"),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Write a poem."}, "Write a poem. Roses are red.", "Roses are red."),
    ("startend:end_checker", {"end_phrase": "Is there anything else?"}, "Done. Is there anything else?", "Is there anything else? Done."),
    ("startend:quotation", {}, '"wrapped in quotes"', 'not "wrapped"'),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"}, "VERY LOUD words", "only ONE"),
    ("change_case:english_capital", {}, "THIS IS ALL IN CAPITAL LETTERS AND IN ENGLISH.", "This is not all caps."),
    ("change_case:english_lowercase", {}, "this is all lowercase english text about dogs.", "This Has Capitals."),
    ("punctuation:no_comma", {}, "no commas at all", "yes, a comma"),
]


def test_every_instruction_type_has_cases():
    assert {c[0] for c in CASES} == set(CHECKS)


@pytest.mark.parametrize("iid,kw,good,bad", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_instruction_pass_and_fail(iid, kw, good, bad):
    assert ifeval_reward([good, bad], instruction_id_list=[[iid]] * 2, kwargs=[[kw]] * 2) == [1.0, 0.0]


def test_all_vs_partial_and_constraints_column():
    cons = {"instruction_id_list": ["punctuation:no_comma", "detectable_format:title", "keywords:existence"],
            "kwargs": [{}, {}, {"keywords": ["dog"]}]}
    text = ["<<T>> a dog, here"]
    assert ifeval_reward(text, constraints=[cons], mode="all") == [0.0]
    # open-instruct's default: the fraction of instructions held
    assert ifeval_reward(text, constraints=[json.dumps(cons)]) == pytest.approx([2 / 3])


def test_hf_union_schema_nones_are_dropped():
    kw = {"num_words": 2, "relation": "at least", "keywords": None, "language": None}
    assert ifeval_reward(["two words"], instruction_id_list=[["length_constraints:number_words"]], kwargs=[[kw]]) == [1.0]


def test_think_block_is_stripped_first():
    ids = [["punctuation:no_comma"]]
    assert ifeval_reward(["<think>a, b, c</think>no commas"], instruction_id_list=ids, kwargs=[[{}]]) == [1.0]


def test_loose_mode_drops_preamble_line():
    comp = ["Sure, here it is:\nMy answer is yes."]
    ids, kw = [["punctuation:no_comma"]], [[{}]]
    assert ifeval_reward(comp, instruction_id_list=ids, kwargs=kw) == [0.0]
    assert ifeval_reward(comp, instruction_id_list=ids, kwargs=kw, loose=True) == [1.0]


def test_unknown_and_bad_kwargs_are_counted():
    out = ifeval_reward(["x", "x", "x"], instruction_id_list=[["nope:nope"], ["length_constraints:number_words"], None],
                        kwargs=[[{}], [{"relation": "at least"}], None])
    assert out == [None, 0.0, None]
    snap = metrics.snapshot()
    assert snap["ifeval/unknown_instruction"] == 1 and snap["ifeval/bad_kwargs"] == 1


def test_sentence_split_keeps_abbreviations():
    assert len(sentences("Dr. Smith arrived. He sat down! Did he? Yes.")) == 4


# IFEvalG's ids (open_instruct/IFEvalG/instructions.py), pass and fail each, kwargs as its build_description takes them
P = "Write a haiku about the sea."
G_CASES = [
    ("copy:repeat_phrase", {"phrase": "the sun is bright", "small_n": 2},
     "the moon is bright and the sky is bright", "the sun is bright and the sun is bright"),
    ("copy:copy", {"prompt_to_repeat": P}, "write a haiku about the sea.", P + " Waves."),
    ("new:copy_span_idx", {"prompt_to_repeat": P, "n_start": 0, "n_end": 7}, "Write a", "Write"),
    ("detectable_format:sentence_hyphens", {}, "I ran.-You sat.", "I ran. - You sat."),
    ("keywords:no_adjacent_consecutive", {}, "apple cat egg", "apple banana"),
    ("detectable_format:square_brackets", {}, "[hello] [world]", "[hello] world"),
    ("keywords:word_once", {"keyword": "sea"}, "the sea is blue", "sea and sea"),
    ("keywords:word_count_different_numbers", {"keyword": "sea", "frequency": 2, "relation": "at least"},
     "sea sea", "one sea"),
    ("keywords:exclude_word_harder", {"keyword": "blue"}, "the sea is green", "the sea is blue today"),
    ("paragraphs:paragraphs", {}, "one\n***\ntwo", "one\n***\ntwo\n***\nthree"),
    ("paragraphs:paragraphs2", {}, "one\n\ntwo", "one\n\ntwo\n\nthree"),
    ("first_word:first_word_sent", {"first_word": "so"}, "So I ran. So did you.", "So I ran. Then you did."),
    ("first_word:first_word_answer", {"first_word": "yes"}, "Yes indeed", "Indeed yes"),
    ("last_word:last_word_sent", {"last_word": "now"}, "Go now. Stop now!", "Go now. Stop it."),
    ("last_word:last_word_answer", {"last_word": "end"}, "This is the end.", "The end is here"),
    ("detectable_format:bigram_wrapping", {}, "<<the sea>> <<is blue>>", "<<the sea>> is blue"),
    ("copy:copying_simple", {"prompt_to_repeat": P}, P, "A haiku."),
    ("copy:copying_multiple", {"prompt_to_repeat": P, "N": 2}, f"{P}\n******\n{P}", P),
    ("punctuation:punctuation_dot", {}, "No dots here!", "A dot."),
    ("punctuation:punctuation_exclamation", {}, "Calm.", "Loud!"),
    ("count:lowercase_counting", {"N": 2}, "ONE two THREE", "one two three"),
    ("letters:letter_counting", {"N": 5, "relation": "less than"}, "abcd", "abcdef"),
    ("letters:letter_counting2", {"letter": "e", "let_frequency": 2, "let_relation": "at least"}, "bee", "bat"),
    ("count:counting_composition", {"n_sent": 1, "n_words": 2},
     "I ran\n***\nYou sat\n***\nWe won", "I ran\n***\nYou sat"),
    ("count:count_unique", {}, "every word differs", "the word the"),
    ("count:count_increment_word", {"keyword1": "sea", "keyword2": "sky"}, "sea sky sky", "sea sky"),
    ("keywords:palindrome", {}, "a racecar went by", "no such thing here"),
    ("keywords:keyword_specific_position", {"keyword": "sea", "n": 2, "m": 3},
     "Hello there. I love sea air.", "Hello there. The sea is nice."),
    ("keywords:start_end", {}, "Sea and sky and sea", "Sea and sky"),
]


def test_every_ifevalg_id_has_cases():
    from reward._ifevalg_checks import CHECKS as G
    from reward.ifeval import CHECKS as ALL
    assert {c[0] for c in G_CASES} == set(G) and len(ALL) == 54  # IFEvalG's registry size


@pytest.mark.parametrize("iid,kw,good,bad", G_CASES, ids=[c[0] for c in G_CASES])
def test_ifevalg_pass_and_fail(iid, kw, good, bad):
    gt = str([{"instruction_id": [iid], "kwargs": [kw]}])
    assert ifeval_reward([f"<think>plan it, really.</think>{good}", bad], ground_truth=[gt, gt]) == [1.0, 0.0]
