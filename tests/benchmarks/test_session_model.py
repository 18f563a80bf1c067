from benchmarks.belady import belady_hit_rate
from benchmarks.conversations import fit
from benchmarks.session_model import lru_hit_rate, main, session_model_hit_rate, still_going
from benchmarks.synthetic import generate
from benchmarks.traces import distinct_blocks


def test_a_conversation_is_likelier_to_go_on_the_more_turns_it_had_and_the_less_it_idled():
    model = fit(generate("chat", num_requests=2000))
    assert still_going(model, 1, 0) < still_going(model, 3, 0) < still_going(model, 6, 0) < 1
    assert still_going(model, 3, 60) > still_going(model, 3, 600) > still_going(model, 3, 6000) > 0


def test_the_session_model_reference_sits_between_lru_and_belady_on_chat():
    requests = generate("chat", num_requests=1500)
    capacity = distinct_blocks(requests) // 20
    lru, model_rate = lru_hit_rate(requests, capacity), session_model_hit_rate(requests, capacity)
    assert lru < model_rate <= belady_hit_rate(requests, capacity)


def test_cli_prints_the_three_side_by_side(capsys):
    assert main(["synthetic:chat", "--capacity", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "session-model" in out and "points" in out
    assert main(["no-such-trace.jsonl"]) == 2
    assert "error" in capsys.readouterr().err
