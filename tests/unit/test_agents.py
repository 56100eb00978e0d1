"""agents: what proves an author. Authentication-Results only as RFC 8601 section 5 allows, and
signed reply addresses bound to a case and an agent, with rotatable keys."""

from datetime import date

import pytest

from mailrouter.agents import (
    AuthStatus,
    ReplyKey,
    ReplySigner,
    Signature,
    aligned,
    authenticate,
    received_by,
)
from mailrouter.parse import parse
from tests.messages import make_mail

TRUSTED = frozenset({"mx.example.test"})
BORDER = "Received: from mail.sender.example (mail.sender.example [192.0.2.7]) by mx.example.test (Postfix) with ESMTPS id 4Xy; Mon, 1 Dec 2026 10:00:00 +0000"  # noqa: E501
STORE = "Received: from mx.example.test by imap.example.test (Dovecot) with LMTP id abc; Mon, 1 Dec 2026 10:00:01 +0000"  # noqa: E501
OUTSIDE = "Received: from [10.0.0.5] by mail.sender.example (Postfix) with ESMTPSA id 9; Mon, 1 Dec 2026 09:59:59 +0000"  # noqa: E501


def arrived(*top: str, sender: str = "agent1@example.test", below: tuple[str, ...] = ()) -> bytes:
    """A message as it lies in the mailbox: `top` headers (added by our systems, topmost first),
    then whatever the sender's side wrote (`below`), then the message itself."""
    lines = [*top, *below]
    return "".join(f"{line}\r\n" for line in lines).encode() + make_mail(sender=sender, subject="x")


def ar(results: str, authserv_id: str = "mx.example.test") -> str:
    return f"Authentication-Results: {authserv_id}; {results}"


DKIM_PASS = ar("dkim=pass (2048-bit key; unprotected) header.d=example.test header.s=s1 header.b=abc")
DMARC_PASS = ar("dmarc=pass (p=reject dis=none) header.from=example.test")


def status(raw: bytes) -> AuthStatus:
    return authenticate(parse(raw), TRUSTED).status


def test_genuine_dkim_pass_above_the_borders_received_authenticates():
    result = authenticate(parse(arrived(STORE, DKIM_PASS, BORDER)), TRUSTED)
    assert result.status == AuthStatus.AUTHENTICATED and result.dkim_aligned and not result.dmarc_pass
    assert result.reason == "aligned DKIM pass for example.test according to mx.example.test"


def test_dmarc_pass_for_the_from_domain_authenticates():
    result = authenticate(parse(arrived(DMARC_PASS, BORDER)), TRUSTED)
    assert result.status == AuthStatus.AUTHENTICATED and result.dmarc_pass


@pytest.mark.parametrize(
    "placement",
    [
        # below the border's Received: it came with the message
        (BORDER, DKIM_PASS),
        (STORE, BORDER, DMARC_PASS, OUTSIDE),
        # below a Received of the sender's own server, under the border's
        (BORDER, OUTSIDE, DKIM_PASS),
        # the forger also wrote a Received claiming our border, but below the real one
        (BORDER, DKIM_PASS, "Received: from x by mx.example.test; Mon, 1 Dec 2026 09:00:00 +0000"),
    ],
)
def test_forged_results_below_the_borders_received_prove_nothing(placement):
    top = placement[: placement.index(BORDER) + 1]
    below = placement[len(top) :]
    assert status(arrived(*top, below=below)) == AuthStatus.UNKNOWN


def test_a_forged_pass_below_a_genuine_fail_does_not_count():
    genuine = ar("dkim=fail header.d=example.test; dmarc=fail header.from=example.test")
    result = authenticate(parse(arrived(STORE, genuine, BORDER, below=(DKIM_PASS, DMARC_PASS))), TRUSTED)
    assert result.status == AuthStatus.NOT_AUTHENTICATED and result.trusted
    assert "no DMARC or aligned DKIM pass" in result.reason


def test_without_the_borders_received_nothing_is_trusted():
    """Results with no Received of the border below them could have been written anywhere."""
    assert status(arrived(DKIM_PASS)) == AuthStatus.UNKNOWN
    assert status(arrived(DKIM_PASS, OUTSIDE)) == AuthStatus.UNKNOWN


def test_results_of_an_untrusted_server_above_the_border_count_for_nothing():
    assert (
        status(arrived(ar("dkim=pass header.d=example.test", "evil.example"), BORDER)) == AuthStatus.UNKNOWN
    )


@pytest.mark.parametrize(
    "results",
    [
        "spf=pass smtp.mailfrom=agent1@example.test",  # SPF vouches for the envelope only
        "dkim=pass header.d=evil.example; spf=pass smtp.mailfrom=example.test",
        "dkim=pass header.d=notexample.test",  # a suffix is not a subdomain
        "dkim=pass header.d=test",  # a top-level domain never aligns
        "dmarc=pass header.from=evil.example",
        "dkim=fail header.d=example.test",
        "dkim=neutral header.d=example.test",
    ],
)
def test_spf_alone_other_domains_and_failures_do_not_authenticate(results):
    assert status(arrived(ar(results), BORDER)) == AuthStatus.NOT_AUTHENTICATED


def test_dkim_of_a_parent_or_sub_domain_is_aligned():
    assert status(arrived(ar("dkim=pass header.d=example.test"), BORDER, sender="a@it.example.test")) == (
        AuthStatus.AUTHENTICATED
    )
    assert status(arrived(ar("dkim=pass header.d=mail.example.test"), BORDER)) == AuthStatus.AUTHENTICATED
    assert status(arrived(ar("dkim=pass header.i=@example.test"), BORDER)) == AuthStatus.AUTHENTICATED
    assert aligned("example.test", "EXAMPLE.test.") and not aligned("xample.test", "example.test")


def test_two_from_headers_are_never_authenticated():
    raw = arrived(DMARC_PASS, BORDER, "From: someone@evil.example")
    assert status(raw) == AuthStatus.NOT_AUTHENTICATED


def test_received_by_ignores_comments():
    assert received_by("from a (helo by evil.example) by MX.example.test. (Postfix)") == "mx.example.test"
    assert received_by("from a (b [1.2.3.4])") == ""


KEY = ReplyKey("k2", b"k" * 32)
OLD = ReplyKey("k1", b"o" * 32, until=date(2027, 1, 1))
SIGNER = ReplySigner([KEY, OLD])
DEPARTMENTS = frozenset({"it-support@example.test"})
TODAY = date(2026, 12, 1)


def read(address: str, sender: str = "agent1@example.test", today: date = TODAY):
    return SIGNER.read(address, DEPARTMENTS, sender, today)


def test_signed_address_names_case_agent_and_key_and_fits_a_local_part():
    address = SIGNER.address("it-support@example.test", "IT-1042", "Agent1@example.test")
    local = address.partition("@")[0]
    assert address == address.lower() and local.startswith("it-support+it-1042.") and len(local) <= 64
    signed = read(address.upper())
    assert (signed.case_number, signed.key_id, signed.signature) == ("IT-1042", "k2", Signature.VALID)
    assert signed.issued_to_sender


def test_an_address_issued_to_one_agent_proves_nothing_for_another():
    address = SIGNER.address("it-support@example.test", "IT-1042", "agent1@example.test")
    signed = read(address, sender="agent2@example.test")
    assert signed.valid and not signed.issued_to_sender


@pytest.mark.parametrize(
    "change",
    [
        lambda a: a.replace("it-1042", "it-1043"),  # another case
        lambda a: a.replace(".k2", ".k9"),  # a key we never had
        lambda a: a[: a.index("@") - 1] + ("a" if a[a.index("@") - 1] != "a" else "b") + a[a.index("@") :],
    ],
)
def test_a_changed_case_key_or_mac_is_forged(change):
    address = SIGNER.address("it-support@example.test", "IT-1042", "agent1@example.test")
    signed = read(change(address))
    assert signed.signature == Signature.FORGED and not signed.issued_to_sender


def test_another_agents_tag_with_the_old_mac_is_forged():
    mine = SIGNER.address("it-support@example.test", "IT-1042", "agent1@example.test")
    theirs = SIGNER.address("it-support@example.test", "IT-1042", "agent2@example.test")
    swapped = mine.replace(mine.split(".")[1], theirs.split(".")[1])
    assert read(swapped, sender="agent2@example.test").signature == Signature.FORGED


def test_a_retired_key_is_accepted_until_its_day_and_refused_from_it():
    old = ReplySigner([OLD]).address("it-support@example.test", "IT-1042", "agent1@example.test")
    assert read(old, today=date(2026, 12, 31)).issued_to_sender
    refused = read(old, today=date(2027, 1, 1))
    assert refused.signature == Signature.EXPIRED and not refused.issued_to_sender
    assert SIGNER.address("it-support@example.test", "IT-1", "a@x.test").split(".")[2].startswith("k2")


def test_only_our_department_addresses_are_read():
    address = SIGNER.address("it-support@example.test", "IT-1042", "agent1@example.test")
    assert read(address.replace("it-support", "hr")) is None
