"""Character-level metrics against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import sacrebleu

from yayi_cli.eval.metrics import corpus_bleu4, exact_match, rouge_l


def test_exact_match_ignores_surrounding_whitespace_only():
    assert exact_match(" 正面\n", "正面")
    assert not exact_match("正 面", "正面")


@pytest.mark.parametrize(
    "prediction, reference, expected",
    [
        ("今天天气很好", "今天天气很好", 1.0),
        ("今天天气好", "今天天气很好", 2 * (5 / 5) * (5 / 6) / (5 / 5 + 5 / 6)),  # LCS 今天天气好 = 5
        ("abcd", "acbd", 2 * 0.75 * 0.75 / 1.5),  # LCS abd (or acd) = 3 of 4 both ways
        ("the cat", "thecat", 1.0),  # spaces are not units
        ("xyz", "abc", 0.0),
        ("", "", 1.0),
        ("", "abc", 0.0),
    ],
)
def test_rouge_l_is_the_f1_of_the_longest_common_subsequence(prediction, reference, expected):
    assert rouge_l(prediction, reference) == pytest.approx(expected)


def test_bleu4_of_an_exact_copy_is_one():
    assert corpus_bleu4(["我爱北京天安门"], ["我爱北京天安门"]) == pytest.approx(1.0)


def test_bleu4_by_hand_with_brevity_penalty():
    # prediction "abcde" (5 chars) against "abcdef" (6): every n-gram of the prediction matches,
    # precisions 5/5, 4/4, 3/3, 2/2; brevity penalty exp(1 - 6/5).
    assert corpus_bleu4(["abcde"], ["abcdef"]) == pytest.approx(math.exp(1 - 6 / 5))


def test_bleu4_sums_counts_over_the_corpus_and_clips_repeats():
    # "aaaa" vs "aabb": 1-grams a,a,a,a clipped to 2 of 4; 2-grams aa x3 clipped to 1 of 3;
    # 3-grams aaa x2, none in reference -> 0 for this pair; the other pair is an exact copy "xyzwv".
    score = corpus_bleu4(["aaaa", "xyzwv"], ["aabb", "xyzwv"])
    p1, p2, p3, p4 = (2 + 5) / (4 + 5), (1 + 4) / (3 + 4), (0 + 3) / (2 + 3), (0 + 2) / (1 + 2)
    assert score == pytest.approx(math.exp((math.log(p1) + math.log(p2) + math.log(p3) + math.log(p4)) / 4))


def test_bleu4_is_zero_when_an_order_has_no_match():
    assert corpus_bleu4(["abc"], ["abd"]) == 0.0


CHINESE_PAIRS = [  # (prediction, reference): Chinese text and punctuation only, where characters are sacrebleu's tokens
    ("本市首批十座社区图书驿站启用。", "本市首批十座社区图书驿站今日启用，居民可免费借阅。"),
    ("今天天气很好，适合出门。", "今天天气很好，适合出门散步。"),
    ("该事件引发网友广泛讨论。", "该事件在网上引发了广泛讨论。"),
    ("情感倾向为正面。", "情感倾向：正面。"),
]


@pytest.mark.parametrize("pairs", [CHINESE_PAIRS, CHINESE_PAIRS[:2], CHINESE_PAIRS[1:]])
def test_bleu_equals_sacrebleu_with_its_chinese_tokenizer_on_chinese_text(pairs):
    predictions, references = [p for p, _ in pairs], [r for _, r in pairs]
    expected = sacrebleu.corpus_bleu(predictions, [references], tokenize="zh", smooth_method="none", force=True).score
    assert expected > 0  # the pairs share 4-grams, so the comparison is not 0 == 0
    assert corpus_bleu4(predictions, references) * 100 == pytest.approx(expected, abs=1e-9)
