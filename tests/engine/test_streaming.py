from engine.server.streaming import TextDeltas


def test_deltas_concatenate_to_the_final_text():
    d = TextDeltas(())
    pieces = [d.delta("Hel", False), d.delta("Hello", False), d.delta("Hello, world", True)]
    assert pieces == ["Hel", "lo", ", world"]


def test_incomplete_character_is_held_back():
    d = TextDeltas(())
    assert d.delta("caf\ufffd", False) == "caf"
    assert d.delta("café", False) == "é"


def test_a_possible_stop_string_is_held_back_and_never_sent():
    d = TextDeltas(("END",))
    assert d.delta("answer E", False) == "answer "
    assert d.delta("answer EN", False) == ""
    # The engine finished at the stop string and cut the text before it.
    assert d.delta("answer ", True) == ""
    assert d.sent == "answer "


def test_held_text_that_is_not_a_stop_is_released():
    d = TextDeltas(("END",))
    assert d.delta("E", False) == ""
    assert d.delta("Eh", False) == "Eh"
