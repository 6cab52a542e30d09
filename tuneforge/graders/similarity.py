"""text_similarity metrics, pure Python and without downloads: fuzzy_match, bleu, gleu, meteor, rouge_1..5, rouge_l.

Each is `fn(input, reference) -> float in [0, 1]`.
- fuzzy_match: rapidfuzz's `fuzz.ratio` / 100, i.e. 2 * LCS(characters) / (len(a) + len(b)) (the Indel
  similarity), with the LCS found by Hyyrö's bit-parallel algorithm so long answers stay cheap.
- bleu: sentence BLEU-4 as nltk's `sentence_bleu` with its defaults (uniform weights, no smoothing: no
  matching 4-gram gives 0), over word and punctuation tokens.
- gleu: Google-BLEU as nltk's `sentence_gleu`: n-gram (1..4) matches / max(input n-grams, reference n-grams).
- meteor: METEOR's formula (alpha 0.9, beta 3, gamma 0.5) over exact lower-cased word matches only; nltk
  also matches stems and WordNet synonyms, which need a corpus download, so scores can be lower than nltk's.
- rouge_N / rouge_l: the F-measure of `rouge_score` (lower-cased alphanumeric tokens, no stemming).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from itertools import pairwise

WORD = re.compile(r"\w+|[^\w\s]")
ROUGE_TOKEN = re.compile(r"[a-z0-9]+")


def lcs_length(a, b) -> int:
    """Length of the longest common subsequence of two sequences (Hyyrö 2004, one big integer per step)."""
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return 0
    masks: dict = {}
    for position, symbol in enumerate(b):
        masks[symbol] = masks.get(symbol, 0) | (1 << position)
    full = (1 << len(b)) - 1
    row = full
    for symbol in a:
        matches = row & masks.get(symbol, 0)
        row = ((row + matches) | (row - matches)) & full
    return len(b) - bin(row).count("1")


def fuzzy_match(text: str, reference: str) -> float:
    if not text and not reference:
        return 1.0
    return 2 * lcs_length(text, reference) / (len(text) + len(reference))


def words(text: str) -> list[str]:
    return WORD.findall(text)


def ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def bleu(text: str, reference: str, max_n: int = 4) -> float:
    hypothesis, truth = words(text), words(reference)
    if not hypothesis:
        return 0.0
    log_precision = 0.0
    for n in range(1, max_n + 1):
        counts = ngrams(hypothesis, n)
        clipped = sum((counts & ngrams(truth, n)).values())
        if clipped == 0:
            return 0.0
        log_precision += math.log(clipped / sum(counts.values())) / max_n
    brevity = 1.0 if len(hypothesis) > len(truth) else math.exp(1 - len(truth) / len(hypothesis))
    return brevity * math.exp(log_precision)


def gleu(text: str, reference: str, max_n: int = 4) -> float:
    hypothesis, truth = words(text), words(reference)
    matches = produced = expected = 0
    for n in range(1, max_n + 1):
        counts, truth_counts = ngrams(hypothesis, n), ngrams(truth, n)
        matches += sum((counts & truth_counts).values())
        produced += sum(counts.values())
        expected += sum(truth_counts.values())
    total = max(produced, expected)
    return matches / total if total else 0.0


def meteor(text: str, reference: str, alpha: float = 0.9, beta: float = 3.0, gamma: float = 0.5) -> float:
    hypothesis, truth = words(text.lower()), words(reference.lower())
    unused: dict[str, list[int]] = {}
    for position, word in enumerate(truth):
        unused.setdefault(word, []).append(position)
    alignment = []  # (hypothesis position, reference position), in hypothesis order
    for position, word in enumerate(hypothesis):
        if unused.get(word):
            alignment.append((position, unused[word].pop(0)))
    matches = len(alignment)
    if matches == 0:
        return 0.0
    precision, recall = matches / len(hypothesis), matches / len(truth)
    f_mean = precision * recall / (alpha * precision + (1 - alpha) * recall)
    # A chunk is a run of matches adjacent in both texts; fewer, longer chunks mean better word order.
    chunks = 1 + sum(1 for (h0, r0), (h1, r1) in pairwise(alignment) if h1 != h0 + 1 or r1 != r0 + 1)
    return f_mean * (1 - gamma * (chunks / matches) ** beta)


def rouge_tokens(text: str) -> list[str]:
    return ROUGE_TOKEN.findall(text.lower())


def f_measure(matches: int, produced: int, expected: int) -> float:
    if matches == 0:
        return 0.0
    precision, recall = matches / produced, matches / expected
    return 2 * precision * recall / (precision + recall)


def rouge_n(text: str, reference: str, n: int) -> float:
    counts, truth_counts = ngrams(rouge_tokens(text), n), ngrams(rouge_tokens(reference), n)
    return f_measure(sum((counts & truth_counts).values()), sum(counts.values()), sum(truth_counts.values()))


def rouge_l(text: str, reference: str) -> float:
    hypothesis, truth = rouge_tokens(text), rouge_tokens(reference)
    return f_measure(lcs_length(hypothesis, truth), len(hypothesis), len(truth))


METRICS = {
    "fuzzy_match": fuzzy_match,
    "bleu": bleu,
    "gleu": gleu,
    "meteor": meteor,
    **{f"rouge_{n}": (lambda text, reference, n=n: rouge_n(text, reference, n)) for n in range(1, 6)},
    "rouge_l": rouge_l,
}
