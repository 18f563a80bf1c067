import pytest

from benchmarks.conversations import Turn, fit, main, turns
from benchmarks.synthetic import CHAT_END_BETA, CHAT_THINK_MEDIAN_S, CHAT_THINK_SIGMA, generate
from benchmarks.traces import DEFAULT_TRACE, Request, dump_jsonl, load_jsonl


def test_a_turn_continues_the_latest_request_it_extends_beyond_the_shared_first_block():
    # (0, 2) and (0, 9, 1) share only block 0: new conversations. A repeat (request 4) is
    # one more round trip of the same conversation.
    requests = [Request(0, (0, 1)), Request(1, (0, 2)), Request(5, (0, 1, 3)), Request(6, (0, 9, 1)),
                Request(7, (0, 1, 3)), Request(9, (0, 1, 3, 4))]
    assert turns(requests) == [Turn(None, 1), Turn(None, 1), Turn(0, 2), Turn(None, 1),
                               Turn(2, 3), Turn(4, 4)]


def test_the_fit_recovers_the_chat_generators_session_model():
    f = fit(generate("chat", seed=0, num_requests=40_000))
    (a, b), (a0, b0) = f.end_beta, CHAT_END_BETA
    assert abs(a - a0) / a0 < 0.1 and abs(b - b0) / b0 < 0.1
    assert f.think_median_s == pytest.approx(CHAT_THINK_MEDIAN_S, rel=0.05)
    assert f.think_sigma == pytest.approx(CHAT_THINK_SIGMA, rel=0.05)
    assert f.mean_turns == pytest.approx(1.5, abs=0.1)
    assert f.continue_by_turn[1] == pytest.approx(0.25, abs=0.02)
    assert f.continue_by_turn[3] > f.continue_by_turn[1] + 0.15  # the longer, the likelier to go on


def test_memoryless_sessions_go_on_with_the_same_chance_whatever_their_length():
    f = fit(generate("chat-memoryless", seed=0, num_requests=20_000))
    for k in (1, 2, 3):
        assert f.continue_by_turn[k] == pytest.approx(0.75, abs=0.03)


@pytest.mark.skipif(not DEFAULT_TRACE.exists(), reason=f"{DEFAULT_TRACE} is not here")
def test_the_chat_model_is_the_one_fitted_to_the_mooncake_trace():
    f = fit(load_jsonl(DEFAULT_TRACE))
    assert f.end_beta == CHAT_END_BETA
    assert round(f.think_median_s) == CHAT_THINK_MEDIAN_S and round(f.think_sigma, 2) == CHAT_THINK_SIGMA


def test_the_command_prints_the_fit_and_refuses_a_trace_with_nothing_to_fit(tmp_path, capsys):
    dump_jsonl(generate("chat", seed=1, num_requests=2000), tmp_path / "chat.jsonl", block_tokens=16)
    assert main([str(tmp_path / "chat.jsonl")]) == 0
    assert "Beta(" in capsys.readouterr().out
    single_turns = generate("system-prompts", seed=1, num_requests=50)
    dump_jsonl(single_turns, tmp_path / "single.jsonl", block_tokens=16)
    assert main([str(tmp_path / "single.jsonl")]) == 2
    assert "nothing to fit" in capsys.readouterr().err
