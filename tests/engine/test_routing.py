from engine.router.routing import PROMPT_PREFIX_CHARS, routing_key

SYSTEM = {"role": "system", "content": "You are terse."}


def chat(*turns, **extra):
    return {"messages": [SYSTEM, *turns], **extra}


def test_every_turn_of_a_conversation_has_the_first_turns_key():
    turn1 = chat({"role": "user", "content": "hi"})
    turn2 = chat({"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                 {"role": "user", "content": "how are you?"})
    assert routing_key(turn1) == routing_key(turn2)


def test_other_conversations_and_tenants_get_other_keys():
    a = chat({"role": "user", "content": "hi"})
    b = chat({"role": "user", "content": "bye"})
    assert routing_key(a) != routing_key(b)
    assert routing_key(a) != routing_key({**a, "cache_salt": "tenant-b"})


def test_prompt_cache_key_wins():
    a = chat({"role": "user", "content": "one"}, prompt_cache_key="user-42")
    b = chat({"role": "user", "content": "two"}, prompt_cache_key="user-42")
    assert routing_key(a) == routing_key(b) == "key::user-42"


def test_completions_use_the_prompt_head():
    head = "x" * PROMPT_PREFIX_CHARS
    assert routing_key({"prompt": head + "a"}) == routing_key({"prompt": head + "b"})
    assert routing_key({"prompt": "a" + head}) != routing_key({"prompt": "b" + head})
    assert routing_key({"prompt": [1, 2, 3]}) == routing_key({"prompt": [1, 2, 3]})


def test_odd_bodies_still_get_a_key():
    assert routing_key({}) == "prompt::"
    assert routing_key({"messages": ["not a dict"]}).startswith("chat::")
