from datetime import timedelta

import pytest

from mailrouter.commands import parse_duration, read_agent_reply

ASSIGNABLE = frozenset({"agent2@example.test", "it-agents"})


def test_commands_on_top_are_read_and_removed_from_the_answer():
    reply = read_agent_reply("#priority high\n#tag printer\n\nHi Kari, try again now.\n", ASSIGNABLE)
    assert [str(c) for c in reply.commands] == ["#priority high", "#tag printer"]
    assert reply.answer == "Hi Kari, try again now." and not reply.errors


def test_commands_must_be_at_the_top():
    reply = read_agent_reply("Hi Kari,\n#close\nthanks", ASSIGNABLE)
    assert reply.commands == () and reply.answer == "Hi Kari,\n#close\nthanks"


def test_note_keeps_its_text_for_the_record():
    reply = read_agent_reply("#note\nCustomer is on the VIP list.\n", ASSIGNABLE)
    assert reply.is_note and reply.answer == "Customer is on the VIP list."


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("#frobnicate\nhi", "#frobnicate: unknown command"),
        ("#assign nobody@example.test", "'nobody@example.test' is neither an agent nor a group"),
        ("#assign", "whom?"),
        ("#priority asap", "priority must be one of low, normal, high, urgent"),
        ("#followup soon", "a duration like 30m"),
        ("#close now", "takes no argument"),
        ("#tag two words", "one tag"),
    ],
)
def test_bad_commands_are_reported(text, error):
    reply = read_agent_reply(text, ASSIGNABLE)
    assert any(error in e for e in reply.errors), reply.errors


def test_assign_accepts_agents_and_groups_case_insensitively():
    assert not read_agent_reply("#assign Agent2@Example.test\n#assign it-agents", ASSIGNABLE).errors


def test_durations():
    assert parse_duration("30m") == timedelta(minutes=30)
    assert parse_duration("4h") == timedelta(hours=4)
    assert parse_duration("2d") == timedelta(days=2)
    assert parse_duration("1w") == timedelta(weeks=1)
    assert parse_duration("2 days") is None
