import pytest

from mailrouter.agents import AuthStatus, ReplyKey, directory_from
from mailrouter.parse import parse
from mailrouter.thread import CaseRef, case_tags, strip_reply_prefixes, thread
from mailrouter.vocabulary import AuthorRole
from tests.messages import make_mail

CASE = CaseRef(7, "IT-1042", "it", "new", "kari@kunde.example")
DEPARTMENTS = frozenset({"it-support@example.test", "hr@example.test"})
TAGS = case_tags(["IT", "HR", "VM"], DEPARTMENTS)
AGENTS = directory_from(
    {"it-agents": ["agent1@example.test", "agent2@example.test"]},
    [ReplyKey("k1", b"test-secret-of-thirty-two-bytes!")],
    ["mx.example.test"],
    DEPARTMENTS,
)
assert AGENTS.signer is not None  # it has a reply key
SIGNED = AGENTS.signer.address("it-support@example.test", "IT-1042", "agent1@example.test")
BORDER = "Received: from sender.example by mx.example.test (Postfix) with ESMTPS id 1; Mon, 1 Dec 2026 10:00:00 +0000"  # noqa: E501


class Lookup:
    def __init__(self, by_number=None, by_ids=None):
        self.by_number = by_number or {}
        self.by_ids = by_ids or {}

    def case_by_number(self, number):
        return self.by_number.get(number)

    def case_by_message_ids(self, ids):
        return next((self.by_ids[i] for i in ids if i in self.by_ids), None)


def test_reply_joins_by_in_reply_to_even_without_tag():
    inbound = parse(make_mail(subject="Re: printer", headers={"In-Reply-To": "<ack@example.test>"}))
    match = thread(inbound, TAGS, Lookup(by_ids={"<ack@example.test>": CASE}), AGENTS)
    assert match.case == CASE and match.author_role == AuthorRole.CUSTOMER
    assert "In-Reply-To" in match.reason


def test_tag_joins_under_nordic_and_german_prefixes():
    for prefix in ("SV:", "VS:", "AW:", "Antw:", "Fwd:", "VB:", "Re: SV:"):
        inbound = parse(make_mail(subject=f"{prefix} [IT-1042] printer"))
        assert thread(inbound, TAGS, Lookup(by_number={"IT-1042": CASE}), AGENTS).case == CASE, prefix


def test_unknown_tag_and_unknown_ids_make_a_new_conversation():
    inbound = parse(make_mail(subject="SV: [IT-9999] x", headers={"In-Reply-To": "<nope@x>"}))
    assert thread(inbound, TAGS, Lookup(), AGENTS).case is None


def test_tag_with_unknown_prefix_is_ignored():
    inbound = parse(make_mail(subject="[JIRA-1042] x"))
    assert thread(inbound, TAGS, Lookup(by_number={"JIRA-1042": CASE}), AGENTS).case is None


def test_someone_else_on_the_case_is_a_participant():
    inbound = parse(make_mail(sender="colleague@kunde.example", subject="Re: [IT-1042] x"))
    assert (
        thread(inbound, TAGS, Lookup(by_number={"IT-1042": CASE}), AGENTS).author_role
        == AuthorRole.PARTICIPANT
    )


def test_strip_reply_prefixes():
    assert strip_reply_prefixes("SV: VS: Re[2]: AW: Hei") == "Hei"
    assert strip_reply_prefixes("Resultat") == "Resultat"


def test_agent_with_the_signed_reply_address_is_an_agent():
    assert SIGNED.startswith("it-support+it-1042.") and SIGNED.endswith("@example.test")
    inbound = parse(make_mail(sender="Agent One <agent1@example.test>", to=SIGNED, subject="Re: x"))
    match = thread(inbound, TAGS, Lookup(by_number={"IT-1042": CASE}), AGENTS)
    assert match.case == CASE and match.author_role == AuthorRole.AGENT
    assert "signed reply address" in match.reason and not match.warnings


def test_signed_address_in_upper_case_still_verifies():
    inbound = parse(make_mail(sender="agent1@example.test", to=SIGNED.upper(), subject="x"))
    assert thread(inbound, TAGS, Lookup(by_number={"IT-1042": CASE}), AGENTS).author_role == AuthorRole.AGENT


def test_forged_agent_from_without_proof_is_external_and_flagged():
    inbound = parse(make_mail(sender="agent1@example.test", subject="Re: [IT-1042] x"))
    match = thread(inbound, TAGS, Lookup(by_number={"IT-1042": CASE}), AGENTS)
    assert match.case == CASE and match.author_role == AuthorRole.EXTERNAL
    assert "claims agent agent1@example.test" in match.warnings[0]


def test_tampered_signed_address_is_rejected():
    tampered = SIGNED.replace("it-1042", "it-1043")
    inbound = parse(make_mail(sender="agent1@example.test", to=tampered, subject="x"))
    other = CaseRef(8, "IT-1043", "it", "new", "someone@else.example")
    match = thread(inbound, TAGS, Lookup(by_number={"IT-1043": other}), AGENTS)
    assert match.case is None
    assert "wrong MAC" in match.warnings[0] and match.tampered


def with_headers(raw: bytes, *lines: str) -> bytes:
    """`lines` on top of the message, as our own servers would add them."""
    return "".join(f"{line}\r\n" for line in lines).encode() + raw


def agent_mail(**kwargs) -> bytes:
    return make_mail(sender="agent1@example.test", subject="Re: [IT-1042] x", **kwargs)


def role(raw: bytes) -> AuthorRole:
    return thread(parse(raw), TAGS, Lookup(by_number={"IT-1042": CASE}), AGENTS).author_role


def test_trusted_aligned_dkim_above_the_border_proves_an_agent():
    results = "Authentication-Results: mx.example.test; dkim=pass header.d=example.test header.s=sel"
    match = thread(
        parse(with_headers(agent_mail(), results, BORDER)), TAGS, Lookup(by_number={"IT-1042": CASE}), AGENTS
    )
    assert match.author_role == AuthorRole.AGENT and "aligned DKIM pass for example.test" in match.reason
    assert match.authentication is not None and match.authentication.status == AuthStatus.AUTHENTICATED


@pytest.mark.parametrize(
    "raw",
    [
        # what an outsider adds to their own message: no border Received above it (old code: agent)
        agent_mail(headers={"Authentication-Results": "mx.example.test; dkim=pass header.d=example.test"}),
        # below the border's Received, whatever the authserv-id
        with_headers(
            agent_mail(),
            BORDER,
            "Authentication-Results: mx.example.test; dkim=pass header.d=example.test",
        ),
        # SPF for the envelope sender is no proof of From (old code: agent)
        with_headers(
            agent_mail(),
            "Authentication-Results: mx.example.test; spf=pass smtp.mailfrom=agent1@example.test",
            BORDER,
        ),
        with_headers(
            agent_mail(), "Authentication-Results: evil.example; dkim=pass header.d=example.test", BORDER
        ),
        with_headers(
            agent_mail(), "Authentication-Results: mx.example.test; dkim=fail header.d=example.test", BORDER
        ),
        with_headers(
            agent_mail(), "Authentication-Results: mx.example.test; dkim=pass header.d=evil.example", BORDER
        ),
    ],
)
def test_untrusted_misplaced_spf_only_or_failing_results_prove_nothing(raw):
    assert role(raw) == AuthorRole.EXTERNAL


def test_an_agent_replying_to_their_own_cases_acknowledgement_is_its_customer():
    own = CaseRef(9, "IT-1050", "it", "new", "agent1@example.test")
    inbound = parse(make_mail(sender="agent1@example.test", subject="Re: [IT-1050] my laptop"))
    match = thread(inbound, TAGS, Lookup(by_number={"IT-1050": own}), AGENTS)
    assert match.author_role == AuthorRole.CUSTOMER and not match.warnings and not match.unproven_agent_answer


def test_an_agent_writing_about_their_own_problem_opens_a_case_as_customer():
    match = thread(
        parse(make_mail(sender="agent1@example.test", subject="My laptop")), TAGS, Lookup(), AGENTS
    )
    assert match.case is None and match.author_role == AuthorRole.CUSTOMER and not match.warnings


def test_an_agent_answering_the_plain_department_address_is_an_unproven_answer():
    inbound = parse(make_mail(sender="agent1@example.test", subject="Re: [IT-1042] x", body="Try again"))
    match = thread(inbound, TAGS, Lookup(by_number={"IT-1042": CASE}), AGENTS)
    assert match.author_role == AuthorRole.EXTERNAL and match.unproven_agent_answer
    assert match.authentication is not None and match.authentication.status == AuthStatus.UNKNOWN


def test_a_signed_address_issued_to_another_agent_is_not_proof():
    inbound = parse(make_mail(sender="agent2@example.test", to=SIGNED, subject="Re: x"))
    match = thread(inbound, TAGS, Lookup(by_number={"IT-1042": CASE}), AGENTS)
    assert match.case == CASE and match.author_role == AuthorRole.EXTERNAL and not match.tampered
    assert "issued to another agent" in match.warnings[0]


def test_a_customer_writing_to_the_signed_address_stays_the_customer():
    inbound = parse(make_mail(sender="kari@kunde.example", to=SIGNED, subject="Re: x"))
    assert (
        thread(inbound, TAGS, Lookup(by_number={"IT-1042": CASE}), AGENTS).author_role == AuthorRole.CUSTOMER
    )


def test_the_customers_authentication_is_reported_too():
    results = "Authentication-Results: mx.example.test; dmarc=fail header.from=kunde.example"
    inbound = parse(with_headers(make_mail(subject="Hjelp"), results, BORDER))
    match = thread(inbound, TAGS, Lookup(), AGENTS)
    assert match.authentication is not None
    assert match.authentication.status == AuthStatus.NOT_AUTHENTICATED and match.authentication.trusted


def thread_subject(subject: str, lookup=None, **kwargs):
    inbound = parse(make_mail(subject=subject, **kwargs))
    return thread(inbound, TAGS, lookup or Lookup(by_number={"IT-1042": CASE}), AGENTS)


@pytest.mark.parametrize(
    "subject",
    [
        "[it-1042] printer",
        "[ IT-1042 ] printer",
        "Re: IT-1042 printer",
        "IT-1042",
        "Printer still broken, see it-1042.",
        "Printer (IT-1042) still broken",
        "Ticket #IT-1042: printer",
        "Re: a very long subject about the printer on floor three that is still broken, case IT-1042, "
        "please help",
        "SV: Ref:IT-1042",
    ],
)
def test_tags_as_people_type_them_thread(subject):
    match = thread_subject(subject)
    assert match.case == CASE and "IT-1042" in match.reason, subject


@pytest.mark.parametrize(
    "subject",
    [
        "WIFI-1042 outage",
        "IT-10423 is a different number",
        "IT-1042-b",
        "see https://wiki.example/IT-1042 page",
        "file IT-1042.pdf attached",
        "mail to it-1042@example.test",
        "ACIT-1042",
    ],
)
def test_tag_lookalikes_do_not_thread(subject):
    lookup = Lookup(by_number={"IT-1042": CASE})
    assert thread_subject(subject, lookup).case is None, subject


def test_a_bare_tag_of_a_case_we_do_not_have_threads_nothing():
    assert thread_subject("IT-9999 printer").case is None


def test_a_tag_in_answer_to_another_installations_mail_is_not_ours():
    """Another desk with the IT prefix acknowledged its own IT-1042; the customer's reply to it,
    copied to us, must not join our IT-1042."""
    theirs = "<1764583200.123.456.IT-1042@helpdesk.other.example>"
    match = thread_subject("Re: [IT-1042] their case", headers={"In-Reply-To": theirs})
    assert match.case is None and "another installation" in match.reason and theirs in match.reason


def test_a_tag_in_answer_to_our_own_forgotten_mail_still_threads():
    ours = "<1764583200.123.456.IT-1042@example.test>"  # no longer stored (retention), still ours
    assert thread_subject("Re: [IT-1042] x", headers={"In-Reply-To": ours}).case == CASE


def test_the_instance_tag_tells_installations_on_one_domain_apart():
    tags = case_tags(["IT"], DEPARTMENTS, "prod")
    lookup = Lookup(by_number={"IT-1042": CASE})
    for message_id, ours in (
        ("<1.2.3.IT-1042.prod@example.test>", True),
        ("<1.2.3.IT-1042.test@example.test>", False),
        ("<1.2.3.IT-1042@example.test>", False),
    ):
        inbound = parse(make_mail(subject="Re: [IT-1042] x", headers={"References": message_id}))
        assert (thread(inbound, tags, lookup, AGENTS).case == CASE) is ours, message_id
