from mailrouter.agents import directory_from
from mailrouter.parse import parse
from mailrouter.thread import CaseRef, case_tag_pattern, strip_reply_prefixes, thread
from mailrouter.vocabulary import AuthorRole
from tests.messages import make_mail

CASE = CaseRef(7, "IT-1042", "it", "new", "kari@kunde.example")
TAGS = case_tag_pattern(["IT", "HR", "VM"])
AGENTS = directory_from(
    {"it-agents": ["agent1@example.test"]},
    b"test-secret",
    ["mx.example.test"],
    frozenset({"it-support@example.test"}),
)
SIGNED = AGENTS.signer.address("it-support@example.test", "IT-1042")


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
    assert "wrong MAC" in match.warnings[0]


def test_trusted_authentication_results_prove_an_agent():
    results = "mx.example.test; dkim=pass header.d=example.test header.s=sel; spf=fail smtp.mailfrom=x@y"
    inbound = parse(
        make_mail(
            sender="agent1@example.test",
            subject="Re: [IT-1042] x",
            headers={"Authentication-Results": results},
        )
    )
    match = thread(inbound, TAGS, Lookup(by_number={"IT-1042": CASE}), AGENTS)
    assert match.author_role == AuthorRole.AGENT and "DKIM pass for example.test" in match.reason


def test_untrusted_or_failing_authentication_results_prove_nothing():
    for results in (
        "evil.example; dkim=pass header.d=example.test",
        "mx.example.test; dkim=fail header.d=example.test",
        "mx.example.test; dkim=pass header.d=evil.example; spf=pass smtp.mailfrom=a@evil.example",
    ):
        inbound = parse(
            make_mail(
                sender="agent1@example.test",
                subject="Re: [IT-1042] x",
                headers={"Authentication-Results": results},
            )
        )
        assert (
            thread(inbound, TAGS, Lookup(by_number={"IT-1042": CASE}), AGENTS).author_role
            == AuthorRole.EXTERNAL
        )
