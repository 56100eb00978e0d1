"""Language detection on short mails: Swedish, Norwegian and Danish told apart, Finnish and English."""

import email
import re
from email.policy import default

import pytest
from sqlmodel import Session, select

from mailrouter.language import LANGUAGES, MIN_LETTERS, SAMPLE_CHARS, detect_language
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


LETTER = re.compile(r"[^\W\d_]")
# Beyond the samples: every rule of lingua's that can decide for our languages.
EDGES = [
    "Hei, jeg heter Øystein og lurer på noe om ferien min i sommer, når kan jeg ta den ut? " * 3,
    "Hej! Jag undrar över lönen för december, den är för låg och jag förstår inte varför det blev så." * 2,
    "æøå ÆØÅ blåbærsyltetøy",
    "Äiti ja Öljy, ääliö",
    "Привет, как дела? Hei hei",
    "Γειά σου κόσμε, hello world",
    "Hei 中文 日本語 テスト ok",
    "xyzzy qwrtp bcdfg",
    "naïve café résumé",
    # From lingua's test data: each read otherwise without one of its rules (the letters that
    # tell, the trigrams-only length of 120 letters).
    "södcrstcn",
    "rudaøya",
    "øydest",
    "Det framgår videre av s. 474 i det faktiske utdraget som er en utskrift av en IRC-logg fra en "
    "samtale 14. oktober 1999 mellom Johansen og  the nomad  at Johansen har en ulovlig kopi av "
    "dataprogrammet Scenarist 2.0.",
    "Inst. för jordbrukets biosystem och teknologi, SLU, Alnarp och Länsstyrelsen i Västerbottens län.",
]


def test_every_text_gets_the_language_lingua_gives_it():
    """language.py is lingua's detector on lingua's models: the same answer, or none, for each."""
    from lingua import Language, LanguageDetectorBuilder

    ours = {
        Language.BOKMAL: "no",
        Language.NYNORSK: "no",
        Language.DANISH: "da",
        Language.ENGLISH: "en",
        Language.FINNISH: "fi",
        Language.SWEDISH: "sv",
    }
    lingua = LanguageDetectorBuilder.from_languages(*ours).with_preloaded_language_models().build()
    texts = [text for mails in (*SAMPLES.values(), *SHORT.values()) for text in mails] + EDGES
    for text in texts:
        answer = lingua.detect_language_of(text[:SAMPLE_CHARS])
        expected = (
            ours[answer]
            if answer is not None and len(LETTER.findall(text[:SAMPLE_CHARS])) >= MIN_LETTERS
            else "?"
        )
        assert detect_language(text, "?") == expected, text


@pytest.mark.parametrize("text", ["", "12345", "OK", "Re: [IT-1042]"])
def test_text_that_says_nothing_gets_the_mailboxs_language(text):
    assert detect_language(text, "no") == "no"


def test_a_text_of_more_letters_no_model_has_than_codes_for_them_gets_an_answer():
    """Such letters get a code each, above the models' alphabet; past the 118 codes there are
    (here 143 letters of Latin Extended Additional and -C), the later ones share the last."""
    strange = "".join(map(chr, [*range(0x1E00, 0x1F00), *range(0x2C60, 0x2C80)]))
    text = f"Hei, jeg får ikke logget inn på kontoen min. Kan dere hjelpe meg? {strange}"
    assert detect_language(text, "?") == "no"


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
