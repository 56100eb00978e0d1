"""Language detection on short service-desk mails: accuracy per language and time per mail.

    .venv/bin/python bench/language.py

The test set is tests/language_samples.py: 25 two- or three-line mails per language, and six
one-liners each. py3langid is measured beside ours (lingua) when it is installed; it is not a
dependency.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mailrouter.language import LANGUAGES, detect_language
from tests.language_samples import SAMPLES, SHORT


def _py3langid() -> Callable[[str], str] | None:
    try:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier
    except ImportError:
        return None
    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    identifier.set_languages(["en", "sv", "no", "nn", "da", "fi"])
    return lambda text: {"nn": "no"}.get(label := identifier.classify(text)[0], label)


def measure(name: str, detect: Callable[[str], str], samples: Mapping[str, tuple[str, ...]]) -> None:
    detect("warm up: load the models")
    right: Counter[str] = Counter()
    mistakes: list[str] = []
    start = time.perf_counter()
    for language, mails in samples.items():
        for mail in mails:
            guess = detect(mail)
            right[language] += guess == language
            if guess != language:
                mistakes.append(f"    {language} read as {guess}: {mail!r}")
    elapsed = time.perf_counter() - start
    total = sum(len(m) for m in samples.values())
    per_language = "  ".join(f"{lang} {right[lang]}/{len(samples[lang])}" for lang in LANGUAGES)
    print(f"  {name:10} {sum(right.values())}/{total} = {sum(right.values()) / total:.1%}   {per_language}")
    print(f"  {'':10} {elapsed / total * 1000:.3f} ms per mail")
    for mistake in mistakes:
        print(mistake)


def main() -> None:
    other = _py3langid()
    for title, samples in (("two- or three-line mails", SAMPLES), ("one-liners", SHORT)):
        print(title)
        measure("lingua", lambda text: detect_language(text, "?"), samples)
        if other is not None:
            measure("py3langid", other, samples)


if __name__ == "__main__":
    main()
