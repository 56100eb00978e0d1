"""language: which of our languages a customer wrote in, to answer in it.

lingua's detector (lingua-language-detector 2.1, high-accuracy mode: n-grams up to five letters
long, built for short text) on lingua's models for the languages we have templates for. It tells
Swedish, Norwegian and Danish apart on one- to three-line mails, where a word list cannot: those
languages share most of their words. bench/language.py measures it on tests/language_samples.py:
py3langid read the shortest Norwegian mails ("Spørsmål om lønn / Hei, hvor er lønnsslippen?") as
Danish; lingua's low-accuracy mode misread four of the thirty one-liners.

The models are lingua's own (scripts/language-models writes language-models.xz from them), in
one sorted array of 64-bit integers, each an n-gram and where its log-probability is: lingua's
hash maps of the same 2.4 million n-grams kept 130-190 MB resident in the daemon, this 26 MB. An
n-gram's entries for the six languages lie side by side, so that one search finds every n-gram
of a text in all of them: a search per model and length was most of a mail's ~0.7 ms in numpy's
cost per call (bench/RESULTS.md). What lingua decides for our six languages is done here step by
step (its detector.rs at v1.7.2), and answers as it does (tests/unit/test_language.py).
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
from itertools import islice
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
# (its CHARS_TO_LANGUAGES_MAPPING, the entries naming ours; the words are lower-cased).
_TELLING_LETTERS = {
    "ø": ("nb", "da", "nn"),
    "æ": ("nb", "da", "nn"),
    "å": ("nb", "da", "nn", "sv"),
    "ä": ("fi", "sv"),
    "ö": ("fi", "sv"),
}
# From a telling letter to the end of its word (words are joined by NUL): a match a word.
_TELLING_WORD = {letter: re.compile(f"{letter}[^\0]*") for letter in _TELLING_LETTERS}
# Scripts that make a token of every character, and those whose runs are one token; any other
# run of letters is one token too (lingua's TOKENS_WITHOUT_WHITESPACE).
_SINGLE = ("Han", "Hiragana", "Katakana")
_RUNS = ("Bengali", "Devanagari", "Gujarati", "Gurmukhi", "Hangul", "Tamil", "Telugu", "Thai")
_EPSILON = sys.float_info.epsilon
# Text of these characters only (Latin up to Extended-B, punctuation, symbols, emoji) is cut into
# words by a regular expression, the rest letter by letter.
_PLAIN = ((0, 0x24F), (0x2000, 0x2BFF), (0xFE00, 0xFE0F), (0x1F000, 0x1FAFF))

# An entry of the array, from the top: the n-gram's length less one (3 bits), its letters (40
# bits, a byte each, the first the lowest: the prefix of k letters is the n-gram masked to k
# bytes), and the place of its log-probability in all models' tables, laid out by length, then
# language (20 bits): an n-gram's entries follow each other in lingua's order of languages. A
# letter's byte is its place in the models' alphabet (137 letters), 0 between words; the bytes
# above the alphabet stand for letters no model has. A text's n-grams are coded so, place 0.
_LENGTH = np.uint64(60)
_LETTERS_AT = 20
_PLACE = np.uint64((1 << _LETTERS_AT) - 1)
_PREFIX = np.array([((1 << (8 * length)) - 1) << _LETTERS_AT for length in range(1, 6)], np.uint64)
_LENGTH_FIRST = np.arange(6, dtype=np.uint64) << _LENGTH  # the least code of each length
_SPANS = np.arange(5)[:, None]  # lengths less one
# By length less one, a code's prefix one letter shorter (a unigram's is the unigram).
_SHORTER = _PREFIX[[0, 0, 1, 2, 3]]
_SHORTER_LENGTH = _LENGTH_FIRST[[0, 0, 1, 2, 3]]
# An n-gram's entries, one a language at most, from where the search ends: a row of eight, so
# that a row's first place is a place with its low three bits cleared.
_ROW = 8
_COLUMN = {language: place for place, language in enumerate(_OURS)}
_UNKNOWN = 255
_ONES, _HIGHS = np.uint64(0x0101010101010101), np.uint64(0x8080808080808080)


class _Detector:
    def __init__(self, path: Path) -> None:
        with lzma.open(path) as stream:
            head = json.loads(stream.read(int.from_bytes(stream.read(4), "little")))
            self.scripts: dict[str, tuple[list[int], list[int]]] = {
                name: ([first for first, _ in spans], [last for _, last in spans])
                for name, spans in head["scripts"].items()
            }
            self._script_of: dict[str, str | None] = {}
            sizes = {(language, length, kind): count for language, length, kind, _, count in head["arrays"]}
            models = [(language, length) for length in range(1, 6) for language in _OURS]
            firsts = np.cumsum([0] + [sizes[(*model, "keys")] for model in models])
            places = np.cumsum([0] + [sizes[(*model, "logp")] for model in models])
            assert places[-1] < 1 << _LETTERS_AT
            # A row of entries past the last n-gram's, above any n-gram's; a log-probability more,
            # 0.0, for an n-gram no model has; and each log-probability's language.
            self.table = np.empty(firsts[-1] + _ROW, np.uint64)
            self.table[firsts[-1] :] = np.iinfo(np.uint64).max
            self.logp = np.zeros(places[-1] + 1)
            self.column = np.repeat(np.arange(len(models), dtype=np.uint8) % len(_OURS), np.diff(places))
            # The keys and indexes through one buffer (the most keys, at 8 bytes at most), the
            # log-probabilities into place.
            scratch = np.empty(8 * np.diff(firsts).max(), np.uint8)
            for language, length, kind, dtype, count in head["arrays"]:
                model = models.index((language, length))
                part = self.table[firsts[model] : firsts[model + 1]]
                if kind == "logp":
                    _read_into(stream, self.logp[places[model] : places[model + 1]].view(np.uint8))
                    continue
                array = scratch[: np.dtype(dtype).itemsize * count]
                _read_into(stream, array)
                if kind == "keys":
                    np.cumsum(array.view(dtype), dtype=np.uint64, out=part)
                    part <<= np.uint64(_LETTERS_AT)
                    part |= np.uint64(length - 1) << _LENGTH
                else:
                    part |= array.view(dtype)
                    part += np.uint64(places[model])
        self.table[: firsts[-1]].sort(kind="stable")  # timsort: merges the models' sorted runs
        self.rows = np.lib.stride_tricks.sliding_window_view(self.table, _ROW)  # a view
        alphabet = head["alphabet"]
        self.code = np.full(1 << 16, _UNKNOWN, np.uint8)
        self.code[0] = 0
        self.code[[ord(letter) for letter in alphabet]] = np.arange(1, len(alphabet) + 1)
        self.free = len(alphabet) + 1
        # Text where lingua's tokens are runs of Latin letters: of Latin letters, and of what is
        # no letter and of no script (not µ, a letter of none; not 🈀, Hiragana).
        points = np.concatenate([np.arange(first, last + 1) for first, last in _PLAIN])
        script = np.full(len(points), -1)
        for place, (starts, ends) in reversed(list(enumerate(self.scripts.values()))):  # as script()
            at = np.searchsorted(starts, points, side="right") - 1
            script[(at >= 0) & (points <= np.array(ends)[at])] = place
        letter = np.array([unicodedata.category(chr(point))[0] == "L" for point in points.tolist()])
        latin = letter & (script == list(self.scripts).index("Latin"))
        self._latin_word = re.compile(f"[{_ranges(points[latin])}]+")
        self._not_plain = re.compile(f"[^{_ranges(points[latin | (~letter & (script < 0))])}]")

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

    def words(self, text: str) -> tuple[list[str], bool]:
        """The text lower-cased and cut into tokens as lingua cuts it, and whether they are all
        of Latin letters (most mail: a regular expression cuts it)."""
        text = text.strip().lower()
        if not self._not_plain.search(text):
            return self._latin_word.findall(text), True
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
        return words, False

    def candidates(self, words: list[str], joined: str, latin: bool) -> tuple[str, ...]:
        """lingua's filter_languages_by_rules: the languages of the text's main alphabet (all
        ours are written in Latin letters), narrowed by telling letters in half the words."""
        ours = tuple(_OURS)
        if not latin:
            alphabets: dict[str, int] = {}
            for word in words:
                scripts = {self.script(letter) for letter in word}
                if len(scripts) == 1 and (script := scripts.pop()) is not None:
                    alphabets[script] = alphabets.get(script, 0) + len(word)
            if not alphabets or (len(alphabets) > 1 and len(set(alphabets.values())) == 1):
                return ours
            order = list(self.scripts)
            main = min(alphabets, key=lambda script: (-alphabets[script], order.index(script)))
            if main != "Latin":
                return ()
        counts = dict.fromkeys(ours, 0)
        for letter, languages in _TELLING_LETTERS.items():
            hits = len(_TELLING_WORD[letter].findall(joined))
            for language in languages:
                counts[language] += hits
        told = tuple(language for language in ours if counts[language] and counts[language] >= len(words) / 2)
        return told or ours

    def ngrams(self, joined: str, longest: int) -> npt.NDArray[np.uint64]:
        """The distinct n-grams of one to `longest` letters in the words (joined by NUL), coded,
        sorted."""
        points = np.frombuffer((joined + "\0" * 8).encode("utf-32-le"), np.uint32)  # the last read past
        codes = self.code[np.minimum(points, 0xFFFF)]
        if codes.max() == _UNKNOWN:
            # A code each, as lingua's set of n-gram strings tells them apart; in a text of more
            # than 118 such letters the later ones share the last code.
            unknown = codes == _UNKNOWN
            rank = np.unique(points[unknown], return_inverse=True)[1]
            codes[unknown] = np.minimum(rank + self.free, _UNKNOWN)
        # The eight letters from each place on, as one integer (the first the lowest byte), and
        # how many of them are letters before the first 0: the longest n-gram that starts there.
        window = np.ndarray((len(joined),), "<u8", codes, 0, (1,))
        ends = (window - _ONES) & ~window & _HIGHS
        room = np.bitwise_count((ends - np.uint64(1)) & ~ends) >> 3
        grams = ((window << np.uint64(_LETTERS_AT)) & _PREFIX[:longest, None]) | _LENGTH_FIRST[:longest, None]
        return _distinct(grams[room > _SPANS[:longest]])

    def sums(
        self, joined: str, lengths: tuple[int, ...], languages: tuple[str, ...]
    ) -> tuple[list[list[float]], list[int]]:
        """Per n-gram length, per language: the log-probabilities of the words' n-grams added up,
        each n-gram as its longest prefix the model has; and per language its unigrams found."""
        grams = self.ngrams(joined, lengths[-1])  # with every prefix of each n-gram
        length = grams >> _LENGTH  # less one
        parent = np.searchsorted(grams, (grams & _SHORTER[length]) | _SHORTER_LENGTH[length])
        # Per n-gram, a row of its languages' log-probabilities' places (none: the last, 0.0).
        window = self.rows[np.searchsorted(self.table, grams)]
        same = window - grams[:, None] <= _PLACE
        place = window[same] & _PLACE
        places = np.full(window.shape, len(self.logp) - 1)
        places.ravel()[(np.flatnonzero(same) & -_ROW) | self.column[place]] = place
        logp = self.logp[places]
        miss = places == len(self.logp) - 1
        # What a model lacks, its longest prefix it has stands for: one letter shorter a round.
        for _ in range(lengths[-1] - 1):
            np.copyto(logp, logp[parent], where=miss)
        columns = [_COLUMN[language] for language in languages]
        bounds = np.searchsorted(grams, _LENGTH_FIRST[: lengths[-1] + 1]).tolist()
        # Only the longest lengths can have no n-grams (no word that long): they add up to 0.
        starts = [bounds[size - 1] for size in lengths if bounds[size - 1] < bounds[size]]
        totals = np.add.reduceat(logp, starts)[:, columns].tolist() if starts else []
        totals += [[0.0] * len(languages)] * (len(lengths) - len(starts))
        unigrams = (bounds[1] - miss[: bounds[1], columns].sum(axis=0)).tolist() if lengths[0] == 1 else []
        return totals, unigrams

    def detect(self, text: str) -> str | None:
        """lingua's detect_language_of for our languages; None where it gives none."""
        words, latin = self.words(text)
        if not words:
            return None
        # (lingua's rule-based detection decides nothing for ours: none has an alphabet or a
        # letter of its own.)
        joined = "\0".join(words)
        languages = self.candidates(words, joined, latin)
        if len(languages) <= 1:
            return languages[0] if languages else None
        letters = len(joined) - len(words) + 1
        lengths = (3,) if letters >= _LONG_TEXT else tuple(range(1, min(letters, 5) + 1))
        totals, unigrams = self.sums(joined, lengths, languages)
        summed: dict[str, float] = {}
        for at, (language, count) in enumerate(zip(languages, unigrams or [0] * len(languages), strict=True)):
            total = sum(column[at] for column in totals if column[at] < 0.0)
            if count:
                total /= count
            if total != 0.0:
                summed[language] = math.exp(total)
        if not summed:
            return None
        denominator = sum(summed.values())
        if denominator == 0.0:  # too long to exponentiate: the most probable by its trigrams
            trigrams = {
                language: total for language, total in zip(languages, totals[0], strict=True) if total < 0.0
            }
            return max(trigrams, key=trigrams.__getitem__)
        confidence = dict.fromkeys(_OURS, 0.0) | {language: p / denominator for language, p in summed.items()}
        first, second = sorted(confidence.items(), key=lambda item: -item[1])[:2]
        return None if first[1] - second[1] < _EPSILON else first[0]


def _read_into(stream: lzma.LZMAFile, buffer: npt.NDArray[np.uint8]) -> None:
    """Fill the buffer from the stream 64 KiB at a time: reading megabytes at once leaves as many
    freed behind, resident, in the heap."""
    view = buffer.data
    for at in range(0, len(view), 1 << 16):
        stream.readinto(view[at : at + (1 << 16)])


def _distinct(values: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """np.unique without its overhead, which was more than the sorting."""
    values = np.sort(values)
    first = np.empty(len(values), bool)
    first[:1] = True
    np.not_equal(values[1:], values[:-1], out=first[1:])
    return values[first]


def _ranges(points: npt.NDArray[np.int_]) -> str:
    """A regular expression's character class of these (sorted) code points, as ranges."""
    breaks = np.flatnonzero(np.diff(points) != 1) + 1
    firsts, lasts = points[np.concatenate(([0], breaks))], points[np.concatenate((breaks - 1, [-1]))]
    spans = zip(firsts.tolist(), lasts.tolist(), strict=True)
    return "".join(f"\\U{first:08x}-\\U{last:08x}" for first, last in spans)


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
    if len(list(islice(_LETTER.finditer(sample), MIN_LETTERS))) < MIN_LETTERS:
        return default
    language = _detector().detect(sample)
    return _OURS[language] if language is not None else default
