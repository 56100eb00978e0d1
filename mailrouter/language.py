"""language: which of our languages a customer wrote in, to answer in it.

lingua (lingua-language-detector: n-gram models up to five letters long, built for short text)
restricted to the languages we have templates for. It tells Swedish, Norwegian and Danish apart
on one- to three-line mails, where a word list cannot: those languages share most of their words.
bench/language.py measures it on tests/language_samples.py: py3langid, a tenth of the install
size, read the shortest Norwegian mails ("Spørsmål om lønn / Hei, hvor er lønnsslippen?") as
Danish; lingua's low-accuracy mode misread four of the thirty one-liners.
"""

from __future__ import annotations

import functools
import itertools
import re

from lingua import Language, LanguageDetector, LanguageDetectorBuilder

# The model's languages for ours: Nynorsk is told apart, and a customer writing it gets bokmål.
_OURS = {
    Language.ENGLISH: "en",
    Language.SWEDISH: "sv",
    Language.BOKMAL: "no",
    Language.NYNORSK: "no",
    Language.DANISH: "da",
    Language.FINNISH: "fi",
}
LANGUAGES = tuple(dict.fromkeys(_OURS.values()))
# The order prepare() loads the models in: the biggest first, while little else is loaded.
_LOAD_ORDER = (
    Language.FINNISH,
    Language.SWEDISH,
    Language.DANISH,
    Language.BOKMAL,
    Language.ENGLISH,
    Language.NYNORSK,
)
# Fewer letters than this say nothing about a language ("OK", "12345", a case tag).
MIN_LETTERS = 8
SAMPLE_CHARS = 500  # the first lines say it; the rest costs time, not accuracy
_LETTER = re.compile(r"[^\W\d_]")


@functools.cache
def _detector() -> LanguageDetector:
    """Built once per process, its models loaded up front (about 1.4 s and 100 MB): the first
    customer's mail should not wait for them."""
    return LanguageDetectorBuilder.from_languages(*_OURS).with_preloaded_language_models().build()


def prepare() -> None:
    """Load the models now (the daemon does at start), not in the first customer's registration.

    One language at a time: lingua keeps the models of every detector in one store, and a
    detector built for all of them loads them side by side, each load's scratch space (its
    decompressed JSON, growing tables) on top of the others'; that peak stays in the daemon's
    high-water mark (bench/RESULTS.md). Each pair's detector adds one language to the store."""
    for loaded, new in itertools.pairwise(_LOAD_ORDER):
        LanguageDetectorBuilder.from_languages(loaded, new).with_preloaded_language_models().build()
    _detector()


def detect_language(text: str, default: str) -> str:
    """The customer's language among LANGUAGES, or `default` when the text does not say."""
    sample = text[:SAMPLE_CHARS]
    if len(_LETTER.findall(sample)) < MIN_LETTERS:
        return default
    language = _detector().detect_language_of(sample)
    return _OURS[language] if language is not None else default
