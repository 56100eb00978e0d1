"""Retention: what is past its time goes, in bounded batches, once, and the reports' figures stay."""

from __future__ import annotations

import base64
import hashlib
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update
from sqlmodel import Session, select

from mailrouter import models, privacy
from mailrouter.cli import main
from mailrouter.config import load_config
from mailrouter.daemon import load
from mailrouter.db import open_database
from mailrouter.errors import ConfigError, DatabaseUnavailable, PrivacyError
from mailrouter.intake import Intake
from mailrouter.models import Case, Customer, Event, Message, OutboxMessage, RawMessage, utcnow
from mailrouter.plan import Origin
from mailrouter.vocabulary import CaseStatus, EventKind, OutboxState
from tests.database_scan import traces
from tests.messages import make_mail
from tests.postgres import temporary_database
from tests.unit import test_agent_flow as agent_flow
from tests.unit import test_kpi
from tests.unit.test_kpi import at, figures
from tests.unit.test_sla import with_sla

LATER = datetime(2029, 3, 1, tzinfo=UTC)  # past 24 months after the closing below
november = test_kpi.november  # six cases of November 2026, on the `desk` below


def test_months_before_keeps_the_day_or_takes_the_months_last():
    assert privacy.months_before(datetime(2026, 3, 31, 8, tzinfo=UTC), 1) == datetime(
        2026, 2, 28, 8, tzinfo=UTC
    )
    assert privacy.months_before(datetime(2026, 1, 15, tzinfo=UTC), 2) == datetime(2025, 11, 15, tzinfo=UTC)
    assert privacy.months_before(datetime(2026, 12, 3, tzinfo=UTC), 24) == datetime(2024, 12, 3, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, config_file):
    """The tests here run once on SQLite and once on PostgreSQL: the config names the database."""
    if request.param == "sqlite":
        yield config_file
        return
    with temporary_database() as url:
        text = config_file.read_text()
        config_file.write_text(re.sub(r"(?m)^database_url = .*$", f'database_url = "{url}"', text))
        yield config_file


def intake_of(config) -> Intake:
    loaded = load(config)
    engine = open_database(loaded.config)
    return Intake(loaded.config, loaded.rules, loaded.templates, engine, loaded.agents)


@pytest.fixture
def intake(database):
    intake = intake_of(load_config(database))
    yield intake
    intake.engine.dispose()


@pytest.fixture
def desk(database):
    """test_kpi's desk, with two years' retention for it-support's closed cases."""
    department = 'sla = "standard"\nbusiness_hours = "oslo"\nsatisfaction_survey = true\nretain_months = 24\n'
    desk = intake_of(with_sla(database, department=department))
    yield desk
    desk.engine.dispose()


def close_all(intake, when: datetime) -> None:
    """Back-dated: every case closed and untouched since `when`."""
    with Session(intake.engine) as session:
        session.connection().execute(update(models.CASE).values(status=CaseStatus.CLOSED, updated_at=when))
        session.commit()


def rows(intake, model):
    with Session(intake.engine) as session:
        return list(session.exec(select(model)).all())


PERSONAL = ("kari@kunde.example", "Kari Nordmann", "Try the other tray", "Third floor", "arrives at 00:30")


def test_a_case_closed_past_its_retention_loses_its_mail_and_personal_data_and_the_figures_stay(november):
    close_all(november, at(20, 12))
    before = figures(november, now=at(3, 12, month=12))
    assert traces(november.engine, *PERSONAL)  # there before

    counts = privacy.run(november.engine, privacy.policy(november.config, LATER), batch=4, now=LATER)

    assert counts.cases == 6 and counts.raw > 0 and counts.letters > 0
    assert traces(november.engine, *PERSONAL) == []
    assert (
        rows(november, RawMessage) == []
        and rows(november, Customer) == []
        and rows(november, OutboxMessage) == []
    )
    assert all(c.anonymised_at is not None and c.subject == "" for c in rows(november, Case))
    after = figures(november, now=at(3, 12, month=12))
    assert after.total == before.total and after.arrivals == before.arrivals
    [run] = [e for e in rows(november, Event) if e.kind == "retention-run"]
    assert run.data["counts"] == counts.as_data() and run.case_id is None
    assert privacy.run(november.engine, privacy.policy(november.config, LATER), batch=4, now=LATER).cases == 0


def test_a_case_closed_more_recently_or_in_a_department_without_retention_is_kept(november):
    close_all(november, at(20, 12))
    not_yet = privacy.policy(november.config, datetime(2028, 11, 19, tzinfo=UTC))
    assert privacy.run(november.engine, not_yet, batch=10).cases == 0
    with Session(november.engine) as session:
        session.connection().execute(update(models.CASE).values(department="hr"))
        session.commit()
    assert privacy.run(november.engine, privacy.policy(november.config, LATER), batch=10).cases == 0


def test_the_dry_run_counts_what_the_run_then_removes(november):
    close_all(november, at(20, 12))
    rules = privacy.policy(november.config, LATER)
    with november.engine.connect() as connection:
        expected = privacy.due(connection, rules)
    assert expected.cases == 6
    assert privacy.run(november.engine, rules, batch=4, now=LATER) == expected


def test_one_instance_a_day_runs_retention(november):
    close_all(november, at(20, 12))
    assert privacy.run_daily(november.engine, november.config, "a", LATER) is not None
    assert privacy.run_daily(november.engine, november.config, "b", LATER + timedelta(hours=5)) is None
    assert privacy.run_daily(november.engine, november.config, "b", LATER + timedelta(days=1)) is not None
    assert len([e for e in rows(november, Event) if e.kind == "retention-run"]) == 2


def test_a_days_run_that_fails_gives_its_slot_back_and_runs_at_the_next_round(november, monkeypatch):
    close_all(november, at(20, 12))
    real_run = privacy.run

    def database_away(*args, **kwargs):
        raise DatabaseUnavailable("database is locked")

    monkeypatch.setattr(privacy, "run", database_away)
    with pytest.raises(DatabaseUnavailable):
        privacy.run_daily(november.engine, november.config, "a", LATER)
    monkeypatch.setattr(privacy, "run", real_run)
    assert privacy.run_daily(november.engine, november.config, "a", LATER + timedelta(minutes=1)) is not None
    assert len([e for e in rows(november, Event) if e.kind == "retention-run"]) == 1


def test_screened_and_quarantined_mail_and_sent_bodies_have_shorter_lives(intake):
    now = utcnow()
    intake.process(
        make_mail(subject="Re: nothing", headers={"Auto-Submitted": "auto-replied"}), Origin("it", 7, 1)
    )
    intake.quarantine(
        make_mail(message_id="<q@kunde.example>", body="Kari's broken mail"),
        Origin("it", 7, 2),
        ValueError("boom"),
    )
    intake.process(make_mail(message_id="<live@kunde.example>"), Origin("it", 7, 3))
    with Session(intake.engine) as session:
        session.connection().execute(update(models.OUTBOX).values(state=OutboxState.SENT, sent_at=now))
        session.commit()
    soon = now + timedelta(days=8)  # past sent_body_days (7), before screened_days (30)
    counts = privacy.run(intake.engine, privacy.policy(intake.config, soon), batch=10, now=soon)
    assert (counts.sent_bodies, counts.screened, counts.set_aside) == (3, 0, 0)
    assert all(row.data == b"" and row.original_sha256 is None for row in rows(intake, OutboxMessage))
    later = now + timedelta(days=91)
    counts = privacy.run(intake.engine, privacy.policy(intake.config, later), batch=10, now=later)
    assert (counts.screened, counts.set_aside, counts.raw) == (1, 1, 2)
    [live] = rows(intake, RawMessage)  # the open case's mail stays
    assert [m.raw_sha256 for m in rows(intake, Message) if m.direction == "in"] == [live.sha256]
    assert traces(intake.engine, "Kari's broken mail", "Re: nothing", "boom") == []


def test_the_command_line_dry_run_counts_and_changes_nothing(november, config_file, capsys):
    close_all(november, at(20, 12))
    with Session(november.engine) as session:  # retention is measured from now: two years on
        session.connection().execute(update(models.CASE).values(updated_at=datetime(2024, 1, 1, tzinfo=UTC)))
        session.commit()
    assert main(["--config", str(config_file), "retention", "--dry-run"]) == 0
    assert "the next retention run would remove: cases 6, messages " in capsys.readouterr().out
    assert all(c.anonymised_at is None for c in rows(november, Case))
    assert main(["--config", str(config_file), "retention"]) == 0
    assert "retention: cases 6," in capsys.readouterr().out
    assert all(c.anonymised_at is not None for c in rows(november, Case))


# --- access and erasure ------------------------------------------------------------------------

INGRID = "ingrid.hansen@kunde.example"
HER_LINE = "Min PC starter ikke etter oppdateringen i går kveld"
HER_REPLY = "Jeg har samme problem med skriveren på kontoret"
SALT = "a-secret-salt-from-a-credential-file"


@pytest.fixture
def her_mail(intake):
    """Ingrid's own case (answered by an agent who quotes her), Kari's case with Ingrid in Cc and
    Ingrid's reply on it, an auto-reply of hers that opened nothing, and a mail of hers in quarantine."""
    mails = {
        "own": make_mail(
            sender=f"Ingrid Hansen <{INGRID}>", subject="PC-en min", body=HER_LINE, message_id="<i1@k>"
        ),
        "kari": make_mail(
            sender="Kari Nordmann <kari@kunde.example>",
            subject="Skriveren",
            body="Skriveren er ødelagt igjen, og jeg trenger den i dag",
            message_id="<k1@k>",
            headers={"Cc": INGRID},
        ),
    }
    intake.process(mails["own"], Origin("it", 7, 1))
    [notification, *_] = agent_flow.outbox(intake, "notification")
    agent_flow.agent_reply(intake, notification, f"Prøv å starte på nytt.\n\n> {HER_LINE}")
    intake.process(mails["kari"], Origin("it", 7, 2))
    mails["reply"] = make_mail(
        sender=f"Ingrid Hansen <{INGRID}>",
        subject="Re: [IT-1002] Skriveren",
        body=HER_REPLY,
        message_id="<i2@k>",
        headers={"In-Reply-To": "<k1@k>"},
    )
    intake.process(mails["reply"], Origin("it", 7, 3))
    mails["auto"] = make_mail(
        sender=INGRID,
        subject="Autosvar: ferie",
        body="Jeg er på ferie og leser ikke e-post før mandag",
        message_id="<i3@k>",
        headers={"Auto-Submitted": "auto-replied"},
    )
    intake.process(mails["auto"], Origin("it", 7, 4))
    mails["quarantined"] = make_mail(sender=INGRID, subject="Broken", message_id="<i4@k>")
    intake.quarantine(mails["quarantined"], Origin("it", 7, 5), ValueError("boom"))
    return mails


def cases_by_number(intake) -> dict[str, Case]:
    return {c.number: c for c in rows(intake, Case)}


def test_an_export_holds_every_case_message_and_event_about_the_address_and_its_mails_byte_for_byte(
    intake, her_mail
):
    with intake.engine.connect() as connection:
        document, files = privacy.export(connection, INGRID.upper())
    assert [(c["number"], c["role"]) for c in document["cases"]] == [
        ("IT-1001", "customer"),
        ("IT-1002", "participant"),
    ]
    assert all(c["events"] for c in document["cases"])
    assert document["customer"]["address"] == INGRID
    theirs = [m for m in document["messages"] if m["from_addr"] == INGRID]
    assert {m["message_id"] for m in theirs} == {"<i1@k>", "<i2@k>", "<i3@k>"}
    assert {m["message_id"] for m in document["messages"] if m["from_addr"] == "kari@kunde.example"} == {
        "<k1@k>"
    }
    for message in theirs:
        assert files[message["eml"]] in (her_mail["own"], her_mail["reply"], her_mail["auto"])
    assert her_mail["quarantined"] in files.values()
    assert len(document["set_aside"]) == 1


def test_erasure_refuses_while_the_person_has_an_open_case(intake, her_mail):
    with Session(intake.engine) as session, pytest.raises(PrivacyError, match=r"open cases \(IT-1001\)"):
        privacy.erase(session, INGRID, SALT)


def test_erasure_leaves_no_trace_of_the_address_or_its_text_and_the_cases_stay_counted(intake, her_mail):
    per = make_mail(sender="per@kunde.example", subject="Tastaturet", message_id="<p1@k>")
    intake.process(per, Origin("it", 7, 6))
    before = {number: c.status for number, c in cases_by_number(intake).items()}
    with Session(intake.engine) as session:
        counts = privacy.erase(session, INGRID, SALT, force=True)
        session.commit()
    assert counts.cases == 1 and counts.screened == 1 and counts.set_aside == 1
    assert traces(intake.engine, INGRID, "Ingrid Hansen", HER_LINE, HER_REPLY, "PC-en min") == []
    assert {number: c.status for number, c in cases_by_number(intake).items()} == before
    kari = cases_by_number(intake)["IT-1002"]
    with Session(intake.engine) as session:
        texts = [m.text for m in session.exec(select(Message).where(Message.case_id == kari.id))]
        raws = {r.sha256 for r in session.exec(select(RawMessage))}
    assert "Skriveren er ødelagt igjen, og jeg trenger den i dag" in texts  # Kari's own words stay
    assert all(INGRID.encode() not in raw.data.lower() for raw in rows(intake, RawMessage))
    assert raws == {hashlib.sha256(per).hexdigest()}  # others' mail not naming her is kept
    [event] = [e for e in rows(intake, Event) if e.kind == "erased"]
    assert event.data["subject"] == privacy.subject_hash(INGRID, SALT) and event.case_id is None
    assert event.data["counts"] == counts.as_data()


def test_erasure_finds_her_words_in_any_letter_case_and_inside_json_on_every_database(intake, her_mail):
    """SQLite writes JSON with Nordic letters escaped and lowercases only ASCII letters: her words
    are found there all the same, in the case she wrote them or in capitals."""
    shouted = HER_REPLY.upper()  # "… SKRIVEREN PÅ KONTORET"
    with Session(intake.engine) as session:
        kari = session.exec(select(Case).where(Case.number == "IT-1002")).one()
        session.add(
            Event(case_id=kari.id, kind=EventKind.THREADED, detail=shouted, data={"quoted": HER_REPLY})
        )
        session.add(Event(case_id=kari.id, kind=EventKind.THREADED, detail="-", data={"quoted": shouted}))
        session.commit()
    with Session(intake.engine) as session:
        privacy.erase(session, INGRID, SALT, force=True)
        session.commit()
    assert traces(intake.engine, HER_REPLY) == []


def test_two_instances_starting_the_days_run_together_run_it_once(november):
    close_all(november, at(20, 12))
    start = threading.Barrier(2)

    def instance(name: str) -> privacy.Counts | None:
        engine = open_database(november.config)  # each instance its own engine and connections
        try:
            start.wait()
            return privacy.run_daily(engine, november.config, name, LATER)
        finally:
            engine.dispose()

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(instance, ["a", "b"]))
    assert sorted(r is None for r in results) == [False, True]
    assert [r.cases for r in results if r is not None] == [6]
    assert len([e for e in rows(november, Event) if e.kind == "retention-run"]) == 1


def test_the_erasure_salt_is_a_secret_read_from_the_environment_or_a_file_and_checked(
    intake, config_file, monkeypatch, capsys
):
    config_file.write_text(config_file.read_text() + '\n[privacy]\nerasure_salt_env = "TEST_ERASURE_SALT"\n')
    with pytest.raises(ConfigError, match="privacy: environment variable TEST_ERASURE_SALT is not set"):
        load_config(config_file)
    assert main(["--config", str(config_file), "privacy", "erase", INGRID]) != 0
    assert "TEST_ERASURE_SALT is not set" in capsys.readouterr().err
    monkeypatch.setenv("TEST_ERASURE_SALT", SALT)
    salt = load_config(config_file).secret("privacy.erasure_salt")
    assert salt is not None and salt.get_secret_value() == SALT
    assert main(["--config", str(config_file), "privacy", "erase", INGRID]) == 0
    assert "erased: cases 0," in capsys.readouterr().out


def client_mail(
    body: bytes, *, sender: str, encoding: str, headers: dict[str, str], message_id: str
) -> bytes:
    """A mail as a client sends it: `body` already in the transfer `encoding`."""
    lines = [
        f"From: {sender}",
        "To: it-support@example.test",
        *(f"{name}: {value}" for name, value in headers.items()),
        f"Message-ID: {message_id}",
        "MIME-Version: 1.0",
        'Content-Type: text/plain; charset="utf-8"',
        f"Content-Transfer-Encoding: {encoding}",
    ]
    return "\r\n".join(lines).encode() + b"\r\n\r\n" + body


def encoded_word(text: str) -> str:
    return f"=?utf-8?b?{base64.b64encode(text.encode()).decode()}?="


PER_OWN = "Det samme skjer på min maskin, særlig når jeg låser skjermen"


def test_erasure_drops_a_colleagues_base64_mail_quoting_her_and_naming_her_in_an_encoded_header(
    intake, her_mail
):
    """Nothing of her is in the raw bytes as they stand: her address is in an RFC 2047 encoded
    word, her line in a base64 body. Export finds the mail, erasure drops it, his words stay."""
    text = f"Hei,\r\n\r\nIngrid skrev i går:\r\n> {HER_LINE}\r\n\r\n{PER_OWN}.\r\n"
    raw = client_mail(
        base64.encodebytes(text.encode()).replace(b"\n", b"\r\n"),
        sender="=?utf-8?q?Per_=C3=85s?= <per@kunde.example>",
        encoding="base64",
        headers={
            "Subject": encoded_word("Samme feil på PC-en"),
            "Cc": encoded_word(f"Ingrid Hansen <{INGRID}>"),
        },
        message_id="<p2@k>",
    )
    assert INGRID.encode() not in raw.lower() and b"starter ikke" not in raw
    intake.process(raw, Origin("it", 7, 6))
    sha = hashlib.sha256(raw).hexdigest()
    with intake.engine.connect() as connection:
        assert sha in privacy.holdings(connection, INGRID).raw
        _, files = privacy.export(connection, INGRID)
    assert raw in files.values()

    with Session(intake.engine) as session:
        privacy.erase(session, INGRID, SALT, force=True)
        session.commit()

    assert sha not in {r.sha256 for r in rows(intake, RawMessage)}
    assert traces(intake.engine, INGRID, HER_LINE) == []
    assert any(PER_OWN in m.text for m in rows(intake, Message))  # his own words stay


def test_erasure_finds_her_line_soft_wrapped_and_requoted_in_quoted_printable_mail(intake, her_mail):
    """Kari answers on her own case quoting Ingrid's reply there, as clients do it: re-wrapped,
    quoted once more, and cut by quoted-printable's soft line breaks. Kari's mail does not name
    Ingrid's address, but it quotes her words: its raw bytes go and the quote is erased
    wherever it was kept."""
    body = (
        b"Takk, n=C3=A5 virker den igjen.\r\n\r\n"
        b"> Ingrid skrev:\r\n"
        b"> > Jeg har samme problem med\r\n"
        b"> > skriveren p=C3=A5 kon=\r\ntoret\r\n"
    )
    raw = client_mail(
        body,
        sender="Kari Nordmann <kari@kunde.example>",
        encoding="quoted-printable",
        headers={"Subject": "Re: [IT-1002] Skriveren", "In-Reply-To": "<i2@k>"},
        message_id="<k2@k>",
    )
    assert HER_REPLY.lower().encode() not in raw.lower()
    intake.process(raw, Origin("it", 7, 6))
    [answer] = [m for m in rows(intake, Message) if m.message_id == "<k2@k>"]
    assert answer.case_id == cases_by_number(intake)["IT-1002"].id

    with Session(intake.engine) as session:
        privacy.erase(session, INGRID, SALT, force=True)
        session.commit()

    assert hashlib.sha256(raw).hexdigest() not in {r.sha256 for r in rows(intake, RawMessage)}
    assert traces(intake.engine, HER_REPLY) == []
    assert any("virker den igjen" in m.text for m in rows(intake, Message))  # Kari's words stay
