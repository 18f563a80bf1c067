import json

import pytest

from benchmarks.chatlog import chat_tokens, load_chatlog, load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    try:
        return load_tokenizer()
    except Exception as e:  # the default model package is not installed here
        pytest.skip(f"default tokenizer unavailable: {e}")


SYSTEM = {"role": "system", "content": "You are a careful assistant. " * 8}
TURN1 = [SYSTEM, {"role": "user", "content": "Name three prime numbers, please."}]
TURN2 = [*TURN1, {"role": "assistant", "content": "2, 3 and 5."},
         {"role": "user", "content": "And three more?"}]


def test_tokens_round_trip_through_the_tokenizer(tokenizer):
    tokens = chat_tokens(tokenizer, TURN2)
    text = tokenizer.decode(tokens)
    for m in TURN2:
        assert m["content"] in text
    assert chat_tokens(tokenizer, TURN2) == tokens


def test_turns_share_their_leading_blocks(tokenizer, tmp_path):
    log = tmp_path / "chat.jsonl"
    other = [{"role": "system", "content": "Another prompt entirely. " * 8}, TURN1[1]]
    log.write_text("".join(json.dumps({"messages": m}) + "\n" for m in (TURN1, TURN2, other)))
    a, b, c = load_chatlog(log, tokenizer, block_tokens=8)
    assert len(a.block_ids) == len(chat_tokens(tokenizer, TURN1)) // 8
    assert b.block_ids[: len(a.block_ids)] == a.block_ids  # turn 2 extends turn 1
    assert len(b.block_ids) > len(a.block_ids)
    assert c.block_ids[0] != a.block_ids[0]
    assert [r.timestamp_ms for r in (a, b, c)] == [0, 1, 2]


def test_bad_lines_name_the_line(tokenizer, tmp_path):
    log = tmp_path / "bad.jsonl"
    log.write_text('{"messages": []}\n{"prompt": "x"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        load_chatlog(log, tokenizer, block_tokens=8)
