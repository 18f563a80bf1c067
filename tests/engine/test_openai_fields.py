"""Every OpenAI request field is served, refused with a 400 naming it, or ignored on purpose,
as ``engine.server.fields.FIELDS`` says; through a real ``kvtier engine`` on a tiny chat
model and through a real ``kvtier router`` in front of it, with the official ``openai``
SDK. Served fields are checked against the engine run in-process on the same model
(same tokens, same logprobs)."""

from __future__ import annotations

import json
import typing
from dataclasses import replace
from pathlib import Path

import pytest

from engine.config import EngineConfig
from engine.runtime.llm_engine import LLMEngine
from engine.runtime.sampling_params import SamplingParams
from engine.server import fields
from engine.server.fields import CHAT, COMPLETIONS, FIELDS, Support
from engine.server.logprobs import LogprobShaper
from tests.engine.servers import kvtier_process
from tests.engine.tiny import TINY, write_chat_model

openai = pytest.importorskip("openai")
from openai.types import completion_create_params as completion_params  # noqa: E402
from openai.types.chat import completion_create_params as chat_params  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CHAT_MODEL = replace(TINY, vocab_size=258, hidden_size=64, intermediate_size=128, num_heads=4,
                     num_kv_heads=2, head_dim=16, max_position=512)
NAME = "tiny-chat"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say something."}]
OTHER_MESSAGES = [{"role": "user", "content": "Something else entirely."}]
BASE = {"model": NAME, "messages": MESSAGES, "max_tokens": 8, "temperature": 0}
ADD = "serve, refuse or ignore each in engine/server/fields.py"


def sdk_fields(params_module) -> set[str]:
    """The request fields the installed SDK names (streaming adds ``stream``)."""
    return (set(typing.get_type_hints(params_module.CompletionCreateParamsBase))
            | set(typing.get_type_hints(params_module.CompletionCreateParamsStreaming)))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return write_chat_model(tmp_path_factory.mktemp("tiny-chat") / "model", CHAT_MODEL)


@pytest.fixture(scope="module")
def urls(model_dir, tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    engine_args = ["--model", str(model_dir), "--served-model-name", NAME, "--device", "cpu",
                   "--dtype", "float32", "--kv-cache-gb", "0.02"]
    with (kvtier_process("engine", engine_args, logs / "engine.log") as engine,
          kvtier_process("router", ["--replica", engine], logs / "router.log") as router):
        yield {"engine": engine, "router": router}


@pytest.fixture(scope="module")
def reference(model_dir) -> LLMEngine:
    """The same model in-process: what the server's answers must equal."""
    return LLMEngine(EngineConfig(model=str(model_dir), dtype="float32", kv_cache_gb=0.02))


@pytest.fixture(scope="module", params=["engine", "router"])
def client(request, urls):
    return openai.OpenAI(base_url=urls[request.param] + "/v1", api_key="unused", max_retries=0, timeout=60)


def run_reference(reference: LLMEngine, messages=MESSAGES, **settings):
    ids = reference.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    return reference.generate([ids], SamplingParams(**({"temperature": 0, "max_tokens": 8} | settings)))[0]


# -- every SDK field ------------------------------------------------------------------------

REFUSED = {
    "audio": {"voice": "alloy", "format": "wav"},
    "function_call": {"name": "f"},
    "functions": [{"name": "f", "parameters": {"type": "object", "properties": {}}}],
    "modalities": ["text", "audio"],
    "moderation": {"model": "omni-moderation-latest"},
    "n": 2,
    "reasoning_effort": "high",
    "response_format": {"type": "json_object"},
    "store": True,
    "tool_choice": "required",
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    "verbosity": "low",
    "web_search_options": {},
}
IGNORED = {
    "metadata": {"k": "v"},
    "parallel_tool_calls": False,
    "prediction": {"type": "content", "content": "hello"},
    "prompt_cache_options": {"mode": "explicit"},
    "prompt_cache_retention": "24h",
    "safety_identifier": "someone",
    "service_tier": "flex",
    "user": "someone",
}


def same_text(settings: dict, **engine_settings):
    """A served field's check: the reply is the in-process engine's for those settings."""
    def check(client, reference):
        reply = client.chat.completions.create(**(BASE | settings))
        assert reply.choices[0].message.content == run_reference(reference, **engine_settings).text
    return check


def check_messages(client, reference):
    reply = client.chat.completions.create(**(BASE | {"messages": OTHER_MESSAGES}))
    assert reply.choices[0].message.content == run_reference(reference, OTHER_MESSAGES).text


def check_max_tokens(name):
    def check(client, reference):
        reply = client.chat.completions.create(**(BASE | {name: 3}))
        want = run_reference(reference, max_tokens=3)
        assert reply.choices[0].message.content == want.text
        assert reply.usage.completion_tokens == len(want.token_ids) <= 3
    return check


def check_stop(client, reference):
    text = run_reference(reference).text
    stop = text[2:4]
    reply = client.chat.completions.create(**(BASE | {"stop": stop}))
    assert reply.choices[0].message.content == text[: text.index(stop)]
    assert reply.choices[0].finish_reason == "stop"


def check_stream(client, reference):
    chunks = list(client.chat.completions.create(**(BASE | {"stream": True})))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == run_reference(reference).text


def check_stream_options(client, reference):
    chunks = list(client.chat.completions.create(**(BASE | {"stream": True,
                                                          "stream_options": {"include_usage": True}})))
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == len(run_reference(reference).token_ids)


def check_logprobs(top: int | None):
    def check(client, reference):
        settings = {"logprobs": True} | ({"top_logprobs": top} if top is not None else {})
        reply = client.chat.completions.create(**(BASE | settings))
        assert_logprobs_match(reply.choices[0].logprobs.content, run_reference(reference, logprobs=top or 0),
                              top or 0)
    return check


SERVED = {
    "model": same_text({"model": NAME}),
    "messages": check_messages,
    "max_tokens": check_max_tokens("max_tokens"),
    "max_completion_tokens": check_max_tokens("max_completion_tokens"),
    "temperature": same_text({"temperature": 1.3, "seed": 5}, temperature=1.3, seed=5),
    "top_p": same_text({"temperature": 1.0, "top_p": 0.3, "seed": 5}, temperature=1.0, top_p=0.3, seed=5),
    "seed": same_text({"temperature": 1.0, "seed": 11}, temperature=1.0, seed=11),
    "stop": check_stop,
    "stream": check_stream,
    "stream_options": check_stream_options,
    "logprobs": check_logprobs(None),
    "top_logprobs": check_logprobs(3),
    "presence_penalty": same_text({"presence_penalty": 2.0}, presence_penalty=2.0),
    "frequency_penalty": same_text({"frequency_penalty": 1.5}, frequency_penalty=1.5),
    "logit_bias": same_text({"logit_bias": {"65": 100}}, logit_bias={65: 100}),
    "prompt_cache_key": same_text({"prompt_cache_key": "conversation-1"}),
}
EXTRAS = {  # kvtier's and vLLM's own fields, sent as the SDK sends them: in extra_body
    "top_k": same_text({"temperature": 1.0, "seed": 3, "extra_body": {"top_k": 2}}, temperature=1.0, seed=3,
                       top_k=2),
    "repetition_penalty": same_text({"extra_body": {"repetition_penalty": 1.8}}, repetition_penalty=1.8),
    "min_tokens": same_text({"max_tokens": 6, "extra_body": {"min_tokens": 6}}, max_tokens=6, min_tokens=6),
    "cache_salt": same_text({"extra_body": {"cache_salt": "tenant-a"}}),
}


def assert_refused(call, field: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        call()
    assert err.value.status_code == 400
    assert err.value.body["param"] == field
    assert field in err.value.body["message"]
    assert err.value.body["type"] == "invalid_request_error"


def test_the_table_covers_every_chat_field_the_sdk_names():
    chat_table = {n for n, r in FIELDS.items() if CHAT in r.routes}
    unknown = sdk_fields(chat_params) - chat_table
    assert not unknown, f"the openai SDK sends {sorted(unknown)}: {ADD}"
    assert chat_table == set(SERVED) | set(REFUSED) | set(IGNORED) | set(EXTRAS)
    assert {n for n, r in FIELDS.items() if r.support is Support.REFUSED and CHAT in r.routes} == set(REFUSED)
    assert {n for n, r in FIELDS.items() if r.support is Support.IGNORED and CHAT in r.routes} == set(IGNORED)


def test_the_table_covers_every_completions_field_the_sdk_names():
    table = {n for n, r in FIELDS.items() if COMPLETIONS in r.routes}
    unknown = sdk_fields(completion_params) - table
    assert not unknown, f"the openai SDK sends {sorted(unknown)}: {ADD}"


def test_every_sdk_chat_field_is_honoured_refused_or_ignored(client, reference):
    baseline = run_reference(reference).text
    for field in sorted(sdk_fields(chat_params)):
        rule = FIELDS[field]
        if rule.support is Support.REFUSED:
            assert_refused(lambda f=field: client.chat.completions.create(**(BASE | {f: REFUSED[f]})), field)
            for neutral in rule.neutral:  # a value that asks for nothing is taken
                reply = client.chat.completions.create(**(BASE | {field: neutral}))
                assert reply.choices[0].message.content == baseline, (field, neutral)
        elif rule.support is Support.IGNORED:
            reply = client.chat.completions.create(**(BASE | {field: IGNORED[field]}))
            assert reply.choices[0].message.content == baseline, field
        else:
            SERVED[field](client, reference)


@pytest.mark.parametrize("field", sorted(EXTRAS))
def test_kvtier_and_vllm_fields_are_honoured(client, reference, field):
    EXTRAS[field](client, reference)


def test_unknown_and_inconsistent_fields_are_refused_by_name(client):
    assert_refused(lambda: client.chat.completions.create(**BASE, extra_body={"frobnicate": 1}), "frobnicate")
    assert_refused(lambda: client.chat.completions.create(**BASE, top_logprobs=2), "top_logprobs")
    assert_refused(lambda: client.chat.completions.create(**(BASE | {"top_logprobs": 21, "logprobs": True})),
                   "top_logprobs")
    assert_refused(lambda: client.chat.completions.create(**BASE, presence_penalty=3), "presence_penalty")
    assert_refused(lambda: client.chat.completions.create(**BASE, logit_bias={"x": 1}), "logit_bias")
    for field, value in {"echo": True, "suffix": "end", "best_of": 2}.items():
        assert_refused(lambda f=field, v=value: client.completions.create(
            model=NAME, prompt="Hi", max_tokens=2, **{f: v}), field)


# -- logprobs in OpenAI's shapes, against the engine's own ----------------------------------


def assert_logprobs_match(content, want, top: int) -> None:
    """``content``: chat ``logprobs.content``; ``want``: the engine's RequestOutput."""
    assert len(content) == len(want.token_ids)
    for item, token, entry in zip(content, want.token_ids, want.logprobs, strict=True):
        assert item.logprob == pytest.approx(entry[token], abs=1e-4)
        best = sorted(entry.values(), reverse=True)[:top]
        assert [t.logprob for t in item.top_logprobs] == pytest.approx(best, abs=1e-4)
        assert len(item.top_logprobs) == top
    raw = b"".join(bytes(item.bytes) for item in content)
    if want.finish_reason == "length":  # no end token: the bytes spell the text
        assert raw.decode("utf-8", errors="replace") == want.text


def test_streamed_chat_logprobs_concatenate_to_the_plain_ones(client, reference):
    settings = BASE | {"logprobs": True, "top_logprobs": 2}
    plain = client.chat.completions.create(**settings).choices[0].logprobs.content
    chunks = list(client.chat.completions.create(**settings, stream=True))
    streamed = [item for c in chunks if c.choices and c.choices[0].logprobs
                for item in c.choices[0].logprobs.content]
    assert [i.model_dump() for i in streamed] == [i.model_dump() for i in plain]
    assert_logprobs_match(streamed, run_reference(reference, logprobs=2), 2)


def test_completions_logprobs_in_the_legacy_shape_streamed_and_not(client, reference):
    want = reference.generate(["Once upon"], SamplingParams(temperature=0, max_tokens=6, logprobs=2))[0]
    plain = client.completions.create(model=NAME, prompt="Once upon", max_tokens=6, temperature=0, logprobs=2)
    lp = plain.choices[0].logprobs
    chosen = [e[t] for t, e in zip(want.token_ids, want.logprobs, strict=True)]
    assert lp.token_logprobs == pytest.approx(chosen, abs=1e-4)
    assert all(len(top) <= 2 for top in lp.top_logprobs)
    assert [max(top.values()) for top in lp.top_logprobs] == pytest.approx(
        [max(e.values()) for e in want.logprobs], abs=1e-4)
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    chunks = list(client.completions.create(model=NAME, prompt="Once upon", max_tokens=6, temperature=0,
                                            logprobs=2, stream=True))
    streamed = [c.choices[0].logprobs for c in chunks if c.choices and c.choices[0].logprobs]
    assert [t for s in streamed for t in s.tokens] == lp.tokens
    assert [x for s in streamed for x in s.token_logprobs] == lp.token_logprobs
    assert [x for s in streamed for x in s.text_offset] == lp.text_offset


def test_partial_characters_are_named_by_their_bytes(reference):
    shaper = LogprobShaper(reference.tokenizer, 0)
    e_acute = reference.tokenizer.encode("é")  # two byte tokens on this byte-level vocabulary
    assert [shaper.token(t) for t in e_acute] == [("bytes:\\xc3", b"\xc3"), ("bytes:\\xa9", b"\xa9")]
    assert shaper.token(reference.tokenizer.encode("a")[0]) == ("a", b"a")
    im_end = max(reference.tokenizer.eos_token_ids)
    assert shaper.token(im_end) == ("<|im_end|>", b"<|im_end|>")


# -- the docs are the table -----------------------------------------------------------------


def section(path: Path, marker: str) -> str:
    text = path.read_text()
    start, end = f"<!-- {marker}:start -->\n", f"<!-- {marker}:end -->"
    assert start in text and end in text, f"{path.name} lacks the {marker} markers"
    return text[text.index(start) + len(start) : text.index(end)]


def test_readme_and_engine_doc_list_the_fields_as_the_table_does():
    hint = "regenerate it with .venv/bin/python -m engine.server.fields"
    assert section(REPO / "README.md", "api-fields") == fields.summary_markdown(), hint
    assert section(REPO / "docs" / "engine.md", "api-fields") == fields.full_markdown(), hint


def test_error_shape_is_openais(urls):
    import httpx

    for url in urls.values():
        r = httpx.post(url + "/v1/chat/completions", json=BASE | {"tools": REFUSED["tools"]})
        assert r.status_code == 400
        error = {"message": r.json()["error"]["message"], "type": "invalid_request_error", "param": "tools",
                 "code": None}
        assert json.loads(r.text) == {"error": error}
