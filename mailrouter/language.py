"""language: which of our languages a customer wrote in, to answer in it.

lingua's detector (lingua-language-detector 2.1, high-accuracy mode: n-grams up to five letters
long, built for short text) on lingua's models for the languages we have templates for. It tells
Swedish, Norwegian and Danish apart on one- to three-line mails, where a word list cannot: those
languages share most of their words. bench/language.py measures it on tests/language_samples.py:
py3langid read the shortest Norwegian mails ("Spørsmål om lønn / Hei, hvor er lønnsslippen?") as
Danish; lingua's low-accuracy mode misread four of the thirty one-liners.

The models are lingua's own (scripts/language-models writes language-models.xz from them), in
sorted numpy arrays: lingua's hash maps of the same 2.4 million n-grams kept 130-190 MB resident
in the daemon, these 30 MB (bench/RESULTS.md). What lingua decides for our six languages is done
here step by step (its detector.rs at v1.7.2), and answers as it does (tests/unit/test_language.py).
"""

from __future__ import annotations

import bisect
import functools
import json
import lzma
import math
import re
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

# lingua's languages in its order (alphabetical: ties go to the first), and ours for them:
# Nynorsk is told apart, and a customer writing it gets bokmål.
_OURS = {"nb": "no", "da": "da", "en": "en", "fi": "fi", "nn": "no", "sv": "sv"}
LANGUAGES = ("en", "sv", "no", "da", "fi")
# Fewer letters than this say nothing about a language ("OK", "12345", a case tag).
MIN_LETTERS = 8
SAMPLE_CHARS = 500  # the first lines say it; the rest costs time, not accuracy
_LETTER = re.compile(r"[^\W\d_]")
MODELS = Path(__file__).with_name("language-models.xz")

# From this many letters on lingua looks at trigrams only (and at every length below it).
_LONG_TEXT = 120
# Letters that lingua takes as a sign of some of our languages when half the words have one
# (its CHARS_TO_LANGUAGES_MAPPING, the entries naming ours).
_TELLING_LETTERS = {
    "Øø": ("nb", "da", "nn"),
    "Ææ": ("nb", "da", "nn"),
    "Åå": ("nb", "da", "nn", "sv"),
    "Ää": ("fi", "sv"),
    "Öö": ("fi", "sv"),
}
# Scripts that make a token of every character, and those whose runs are one token; any other
# run of letters is one token too (lingua's TOKENS_WITHOUT_WHITESPACE).
_SINGLE = ("Han", "Hiragana", "Katakana")
_RUNS = ("Bengali", "Devanagari", "Gujarati", "Gurmukhi", "Hangul", "Tamil", "Telugu", "Thai")
_EPSILON = sys.float_info.epsilon


@dataclass(frozen=True)
class _Model:
    """One language's n-grams of one length: sorted keys, and each one's log-probability."""

    keys: npt.NDArray[np.unsignedinteger]
    index: npt.NDArray[np.unsignedinteger]
    logp: npt.NDArray[np.float64]

    def look_up(self, keys: npt.NDArray[np.uint64]) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
        """Which of `keys` the model has, and their log-probabilities."""
        keys = keys.astype(self.keys.dtype, copy=False)  # no copy of the model to compare them
        at = np.searchsorted(self.keys, keys)
        at[at == len(self.keys)] = 0
        found = self.keys[at] == keys
        return found, self.logp[self.index[at[found]]]


class _Detector:
    def __init__(self, path: Path) -> None:
        with lzma.open(path) as stream:
            head = json.loads(stream.read(int.from_bytes(stream.read(4), "little")))
            self.code = {letter: place + 1 for place, letter in enumerate(head["alphabet"])}
            self.scripts: dict[str, tuple[list[int], list[int]]] = {
                name: ([first for first, _ in spans], [last for _, last in spans])
                for name, spans in head["scripts"].items()
            }
            self._script_of: dict[str, str | None] = {}
            parts: dict[tuple[str, int], dict[str, np.ndarray]] = {}
            for language, length, kind, dtype, count in head["arrays"]:
                array = np.frombuffer(stream.read(np.dtype(dtype).itemsize * count), dtype=dtype)
                parts.setdefault((language, length), {})[kind] = (
                    np.cumsum(array, dtype=array.dtype) if kind == "keys" else array
                )
        self.models = {key: _Model(part["keys"], part["index"], part["logp"]) for key, part in parts.items()}

    def script(self, letter: str) -> str | None:
        """The letter's script among lingua's (its alphabets and the scripts it cuts by)."""
        if letter not in self._script_of:
            point = ord(letter)
            self._script_of[letter] = next(
                (
                    name
                    for name, (firsts, lasts) in self.scripts.items()
                    if (at := bisect.bisect_right(firsts, point) - 1) >= 0 and point <= lasts[at]
                ),
                None,
            )
        return self._script_of[letter]

    def words(self, text: str) -> list[str]:
        """The text lower-cased and cut into tokens as lingua cuts it."""
        text = text.strip().lower()
        words, at = [], 0
        while at < len(text):
            script = self.script(text[at])
            if script in _SINGLE:
                words.append(text[at])
                at += 1
                continue
            end = at
            if script in _RUNS:
                while end < len(text) and self.script(text[end]) == script:
                    end += 1
            else:
                while end < len(text) and unicodedata.category(text[end])[0] == "L":
                    end += 1
            if end == at:
                at += 1
            else:
                words.append(text[at:end])
                at = end
        return words

    def candidates(self, words: list[str]) -> tuple[str, ...]:
        """lingua's filter_languages_by_rules: the languages of the text's main alphabet (all
        ours are written in Latin letters), narrowed by telling letters in half the words."""
        alphabets: dict[str, int] = {}
        for word in words:
            scripts = {self.script(letter) for letter in word}
            if len(scripts) == 1 and (script := scripts.pop()) is not None:
                alphabets[script] = alphabets.get(script, 0) + len(word)
        ours = tuple(_OURS)
        if not alphabets or (len(alphabets) > 1 and len(set(alphabets.values())) == 1):
            return ours
        order = list(self.scripts)
        main = min(alphabets, key=lambda script: (-alphabets[script], order.index(script)))
        if main != "Latin":
            return ()
        counts = dict.fromkeys(ours, 0)
        for letters, languages in _TELLING_LETTERS.items():
            for word in words:
                hits = sum(letter in word for letter in letters)
                for language in languages:
                    counts[language] += hits
        told = tuple(language for language in ours if counts[language] and counts[language] >= len(words) / 2)
        return told or ours

    def keys(self, ngrams: list[str]) -> npt.NDArray[np.uint64]:
        """Each n-gram's letters as bytes, the first the lowest: a prefix of k letters is the key
        masked to k bytes. A letter no model has is 0, which no model's key holds."""
        code = self.code
        return np.array(
            [
                sum(code.get(letter, 0) << (8 * place) for place, letter in enumerate(ngram))
                for ngram in ngrams
            ],
            dtype=np.uint64,
        )

    def sums(
        self, ngrams: list[str], length: int, languages: tuple[str, ...]
    ) -> dict[str, tuple[float, int]]:
        """Per language: the log-probabilities of the n-grams added up, each n-gram as its
        longest prefix the model has, and how many n-grams it has at all."""
        keys = self.keys(ngrams)
        found: dict[str, tuple[float, int]] = {}
        for language in languages:
            total, count, left = 0.0, 0, keys
            for prefix in range(length, 0, -1):
                if not len(left):
                    break
                masked = left if prefix == length else left & np.uint64((1 << (8 * prefix)) - 1)
                hit, logp = self.models[language, prefix].look_up(masked)
                total += float(logp.sum())
                count += int(hit.sum())
                left = left[~hit]
            found[language] = (total, count)
        return found

    def detect(self, text: str) -> str | None:
        """lingua's detect_language_of for our languages; None where it gives none."""
        words = self.words(text)
        if not words:
            return None
        # (lingua's rule-based detection decides nothing for ours: none has an alphabet or a
        # letter of its own.)
        languages = self.candidates(words)
        if len(languages) == 1:
            return languages[0]
        letters = sum(len(word) for word in words)
        lengths = (3,) if letters >= _LONG_TEXT else (1, 2, 3, 4, 5)
        maps: list[dict[str, float]] = []
        unigrams: dict[str, int] = {}
        for length in lengths:
            if letters < length:
                continue
            ngrams = list({word[i : i + length] for word in words for i in range(len(word) - length + 1)})
            sums = self.sums(ngrams, length, languages)
            maps.append({language: total for language, (total, _) in sums.items() if total < 0.0})
            if length == 1:
                unigrams = {language: count for language, (_, count) in sums.items() if count}
        summed: dict[str, float] = {}
        for language in languages:
            total = sum(probabilities.get(language, 0.0) for probabilities in maps)
            if language in unigrams:
                total /= unigrams[language]
            if total != 0.0:
                summed[language] = math.exp(total)
        if not summed:
            return None
        denominator = sum(summed.values())
        if denominator == 0.0:  # too long to exponentiate: the most probable by its trigrams
            return max(maps[0], key=maps[0].__getitem__)
        confidence = dict.fromkeys(_OURS, 0.0) | {language: p / denominator for language, p in summed.items()}
        first, second = sorted(confidence.items(), key=lambda item: -item[1])[:2]
        return None if first[1] - second[1] < _EPSILON else first[0]


@functools.cache
def _detector() -> _Detector:
    """Built once per process (about 0.5 s): the first customer's mail should not wait for it."""
    return _Detector(MODELS)


def prepare() -> None:
    """Load the models now (the daemon does at start), not in the first customer's registration."""
    _detector()


def detect_language(text: str, default: str) -> str:
    """The customer's language among LANGUAGES, or `default` when the text does not say."""
    sample = text[:SAMPLE_CHARS]
    if len(_LETTER.findall(sample)) < MIN_LETTERS:
        return default
    language = _detector().detect(sample)
    return _OURS[language] if language is not None else default
