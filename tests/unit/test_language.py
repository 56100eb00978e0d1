"""Language detection on short mails: Swedish, Norwegian and Danish told apart, Finnish and English."""

import email
from email.policy import default

import pytest
from sqlmodel import Session, select

from mailrouter.language import LANGUAGES, detect_language
from mailrouter.models import Case, OutboxMessage
from mailrouter.plan import Origin
from mailrouter.vocabulary import OutboxKind
from tests.language_samples import SAMPLES, SHORT
from tests.messages import make_mail, plain_text


@pytest.mark.parametrize("language", LANGUAGES)
def test_short_mails_are_recognised_in_each_language(language):
    right = sum(detect_language(mail, "?") == language for mail in SAMPLES[language])
    # bench/language.py prints the mistakes; one Danish line is also perfect Norwegian.
    assert right >= len(SAMPLES[language]) - 1


@pytest.mark.parametrize("language", LANGUAGES)
def test_one_line_mails_are_recognised_in_each_language(language):
    assert [detect_language(mail, "?") for mail in SHORT[language]] == [language] * len(SHORT[language])


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("Hej, jeg kan ikke logge ind. Kan I hjælpe mig? Venlig hilsen", "da"),
        ("Hei, jeg kommer ikke inn. Kan dere hjelpe meg? Vennlig hilsen", "no"),
        ("Hej, jag kommer inte in. Kan ni hjälpa mig? Vänliga hälsningar", "sv"),
        ("Hei, en pääse kirjautumaan sisään. Voitteko auttaa?", "fi"),
    ],
)
def test_the_scandinavian_languages_are_told_apart(text, language):
    assert detect_language(text, "en") == language


@pytest.mark.parametrize("text", ["", "12345", "OK", "Re: [IT-1042]"])
def test_text_that_says_nothing_gets_the_mailboxs_language(text):
    assert detect_language(text, "no") == "no"


def test_a_danish_customer_is_acknowledged_in_danish(intake):
    mail = make_mail(
        subject="Printeren virker ikke", body="Hej, printeren sidder fast igen. Kan nogen hjælpe?"
    )
    intake.process(mail, Origin("it", 1, 1))
    with Session(intake.engine) as session:
        assert session.exec(select(Case)).one().language == "da"
        row = session.exec(
            select(OutboxMessage).where(OutboxMessage.kind == OutboxKind.ACKNOWLEDGEMENT)
        ).one()
    body = plain_text(email.message_from_bytes(row.data, policy=default))
    assert body.replace("\r\n", "\n").startswith("Hej Kari Nordmann!\n\nTak fordi du kontaktede IT Support.")
