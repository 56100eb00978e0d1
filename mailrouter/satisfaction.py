"""satisfaction: is a customer's mail an answer to the survey, and which score does it give?

Only a reply to the survey mail itself (its Message-ID in In-Reply-To or References) may be an
answer, so "2 printers are broken" on a resolved case is never read as a score. Even then the
reply must begin with the score, 1 to 5, alone or with a label ("Betyg: 4", "Arvosana 5"), a
scale ("4/5", "4 av 5", "4 out of 5"), stars ("5 stjerner") or punctuation before a comment
("4 - thanks"); a digit followed by other words ("2 printers …") is not a score, and the mail
then takes its ordinary course (it reopens the case). Pure: text in, answer out.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from mailrouter.quoting import strip_quoted_history

# "Score:", "Betyg", "Karakter", "Vurdering", "Bedømmelse", "Arvosana", "Svar" …, in our languages.
_LABELS = (
    "score|rating|grade|answer|my answer|"  # en
    "betyg|svar|mitt svar|omdöme|"  # sv
    "karakter|vurdering|mitt svar|"  # no
    "bedømmelse|karakter|vurdering|mit svar|"  # da
    "arvosana|arvio|vastaus|vastaukseni"  # fi
)
_SCALE = r"(?:\s*(?:/|av|af|of|out\s+of|ud\s+af)\s*5(?!\d))"
_STARS = r"(?:\s*(?:stars?|stjärn(?:or|a)|stjern(?:er|e)|tähteä|tähti))"
_SCORE = re.compile(
    rf"^(?:(?:{_LABELS})\s*[:=]?\s*)?(?P<score>[1-5])(?![\d.,]\d)(?!\d)(?P<unit>{_SCALE}?{_STARS}?)",
    re.IGNORECASE,
)
# What may follow a bare score: nothing, a new line, or punctuation before a comment; after a
# scale or stars, a space will do ("4/5 bra jobbat").
_AFTER_SCORE = re.compile(r"\s*(?:$|\n|[-–—:;,.!)*/])")
_AFTER_UNIT = re.compile(r"(?:$|\s|[-–—:;,.!)*/])")
_LEADING = re.compile(r"^[-–—:;,.!)*/\s]+")


@dataclass(frozen=True)
class Answer:
    score: int
    comment: str  # what else the customer wrote, quotes cut; "" for none


def answers_survey(survey_message_id: str, in_reply_to: str, references: Sequence[str]) -> bool:
    """The mail replies to the survey itself."""
    return bool(survey_message_id) and survey_message_id in (in_reply_to, *references)


def read_answer(text: str) -> Answer | None:
    """The score a reply to the survey gives and its comment, or None for a reply that does not
    begin with one (it is an ordinary message, then)."""
    own = strip_quoted_history(text).strip()
    match = _SCORE.match(own)
    if match is None:
        return None
    rest = own[match.end() :]
    if not (_AFTER_UNIT if match["unit"] else _AFTER_SCORE).match(rest):
        return None
    return Answer(int(match["score"]), _LEADING.sub("", rest).strip())
