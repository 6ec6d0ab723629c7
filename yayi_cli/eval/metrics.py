"""Text-overlap metrics at the character level, which suits Chinese (no word segmentation needed).

Whitespace is ignored: the units are the non-space characters of each text.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence


def characters(text: str) -> list[str]:
    return [char for char in text if not char.isspace()]


def exact_match(prediction: str, reference: str) -> bool:
    """Equal once surrounding whitespace is removed."""
    return prediction.strip() == reference.strip()


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    previous = [0] * (len(b) + 1)
    for item in a:
        current = [0]
        for j, other in enumerate(b):
            current.append(previous[j] + 1 if item == other else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1: harmonic mean of the longest common subsequence's precision and recall."""
    predicted, expected = characters(prediction), characters(reference)
    if not predicted or not expected:
        return float(predicted == expected)
    common = _lcs_length(predicted, expected)
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def _ngrams(units: list[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(units[i : i + n]) for i in range(len(units) - n + 1))


def corpus_bleu4(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU-4 (uniform weights, brevity penalty, no smoothing) over characters.

    Clipped n-gram matches and totals are summed over the corpus before the precisions are
    taken, as in the original definition; 0.0 when some order has no match at all.
    """
    matches, totals = [0] * 4, [0] * 4
    predicted_length = reference_length = 0
    for prediction, reference in zip(predictions, references):
        predicted, expected = characters(prediction), characters(reference)
        predicted_length += len(predicted)
        reference_length += len(expected)
        for n in range(1, 5):
            candidate, allowed = _ngrams(predicted, n), _ngrams(expected, n)
            matches[n - 1] += sum(min(count, allowed[gram]) for gram, count in candidate.items())
            totals[n - 1] += max(len(predicted) - n + 1, 0)
    if min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals)) / 4
    brevity = 1.0 if predicted_length > reference_length else math.exp(1 - reference_length / max(predicted_length, 1))
    return brevity * math.exp(log_precision)
