"""The fetch worker's decisions, without a server."""

from mailrouter.fetch import take_batch

MiB = 1024 * 1024


def test_a_batch_is_cut_by_bytes_and_holds_at_least_one_message():
    sizes = {1: 10 * MiB, 2: 10 * MiB, 3: 10 * MiB, 4: 1}
    assert take_batch([1, 2, 3, 4], sizes, 25 * MiB, 25 * MiB) == [1, 2]
    assert take_batch([3, 4], {3: 40 * MiB, 4: 1}, 32 * MiB, 64 * MiB) == [3]  # bigger than the budget: alone
    assert take_batch([1, 2], {1: 100, 2: 200}, 250, 25 * MiB) == [1]


def test_a_message_of_unknown_size_is_fetched_alone_and_not_taken_for_empty():
    sizes = {1: 100, 2: None, 3: 100}
    assert take_batch([1, 2, 3], sizes, 32 * MiB, 25 * MiB) == [1]
    assert take_batch([2, 3], sizes, 32 * MiB, 25 * MiB) == [2]


def test_a_message_the_server_did_not_describe_stays_in_the_batch_to_be_looked_up():
    assert take_batch([1, 2, 3], {1: 100, 3: 100}, 32 * MiB, 25 * MiB) == [1, 2, 3]


def test_an_oversized_message_costs_only_its_header():
    sizes = {1: 30 * MiB, 2: 20 * MiB}
    assert take_batch([1, 2], sizes, 21 * MiB, 25 * MiB) == [1, 2]
