"""The pass-through sampling fields reach the real in-process engine and change its output where
they should (the shipped tiny model has a character-level tokenizer: one character, one token)."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from typing import Any

import pytest

from models.train_tiny import chat_prompt, heldout_questions
from server.engine import InvalidSamplingParam, Sample, SampleEngine, SamplingParams
from server.engine.base import StructuredOutput

pytestmark = [pytest.mark.engine]

QUESTION = heldout_questions(1)[0]
GREEDY = SamplingParams(temperature=0.0, max_tokens=40)


async def one(engine: SampleEngine, params: SamplingParams, n: int = 1) -> list[Sample]:
    prompt = chat_prompt(QUESTION)
    samples = [s async for s in engine.sample(prompt, n, params, uuid.uuid4().hex)]
    return sorted(samples, key=lambda s: s.index)


def token_id(engine: SampleEngine, char: str) -> int:
    ids = engine.tokenize(char).token_ids
    assert len(ids) == 1, ids
    return ids[0]


async def test_logit_bias_forces_a_token(engine: SampleEngine) -> None:
    baseline = (await one(engine, GREEDY))[0].text
    forced = replace(GREEDY, logit_bias=((token_id(engine, "7"), 100.0),), max_tokens=12)
    text = (await one(engine, forced))[0].text
    assert text == "7" * 12, (baseline, text)
    assert baseline != text


async def test_min_tokens_lengthens_and_ignore_eos_runs_to_max(engine: SampleEngine) -> None:
    base = (await one(engine, GREEDY))[0]
    assert base.finish_reason == "stop" and base.completion_tokens < 35, base
    longer = (await one(engine, replace(GREEDY, min_tokens=base.completion_tokens + 3)))[0]
    assert longer.completion_tokens >= base.completion_tokens + 3
    full = (await one(engine, replace(GREEDY, ignore_eos=True)))[0]
    assert full.completion_tokens == GREEDY.max_tokens and full.finish_reason == "length"


async def test_stop_token_ids_stop_early(engine: SampleEngine) -> None:
    base = (await one(engine, GREEDY))[0]
    assert ";" in base.text, base.text
    cut = (await one(engine, replace(GREEDY, stop_token_ids=(token_id(engine, ";"),))))[0]
    assert cut.completion_tokens < base.completion_tokens
    assert base.text.startswith(cut.text.rstrip(";"))


async def test_penalties_and_filters_change_sampling(engine: SampleEngine) -> None:
    base = (await one(engine, GREEDY))[0].text
    # a repetition penalty this strong cannot leave the worked answer (it repeats digits) as is
    assert (await one(engine, replace(GREEDY, repetition_penalty=5.0)))[0].text != base
    # the same seeded samples, with and without a penalty on tokens already generated
    hot = SamplingParams(temperature=1.5, max_tokens=40, seed=3)
    hot_texts = [s.text for s in await one(engine, hot, n=8)]
    assert len(set(hot_texts)) > 1
    for penalised in (replace(hot, frequency_penalty=2.0), replace(hot, presence_penalty=2.0)):
        assert [s.text for s in await one(engine, penalised, n=8)] != hot_texts, penalised
    # top_k=1 and min_p=1 keep only the most likely token: sampling at T=1.5 becomes greedy
    assert {s.text for s in await one(engine, replace(hot, top_k=1), n=8)} == {base}
    assert {s.text for s in await one(engine, replace(hot, min_p=1.0), n=8)} == {base}


async def test_seed_is_reproducible_per_sample(engine: SampleEngine) -> None:
    hot = SamplingParams(temperature=1.5, max_tokens=40, seed=11)
    first = [s.text for s in await one(engine, hot, n=6)]
    again = [s.text for s in await one(engine, hot, n=6)]
    other = [s.text for s in await one(engine, replace(hot, seed=12), n=6)]
    assert first == again
    assert len(set(first)) > 1  # samples of one request differ from one another
    assert first != other


async def test_logprobs_of_each_token(engine: SampleEngine) -> None:
    [s] = await one(engine, replace(GREEDY, top_logprobs=3))
    assert s.logprobs is not None
    assert "".join(t.token for t in s.logprobs).startswith(s.text)
    for t in s.logprobs:
        assert len(t.top) == 3 and t.top[0][1] >= t.top[-1][1]
        assert t.logprob == pytest.approx(t.top[0][1])  # greedy: the chosen one is the top one
    assert sum(t.logprob for t in s.logprobs) == pytest.approx(s.cumulative_logprob, abs=1e-3)
    [plain] = await one(engine, GREEDY)
    assert plain.logprobs is None


async def test_structured_outputs_give_json(engine: SampleEngine) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "integer", "minimum": -99, "maximum": 99}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    spec = StructuredOutput(json_schema=json.dumps(schema))
    params = SamplingParams(temperature=1.0, max_tokens=60, seed=5, structured=spec)
    for s in await one(engine, params, n=3):
        assert s.finish_reason == "stop", repr(s.text)
        assert isinstance(json.loads(s.text)["answer"], int), s.text
    free = (await one(engine, GREEDY))[0].text
    with pytest.raises(json.JSONDecodeError):
        json.loads(free)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("top_k", -2),
        ("min_p", 1.5),
        ("repetition_penalty", 0.0),
        ("presence_penalty", 3.0),
        ("frequency_penalty", -2.5),
        ("min_tokens", 41),
        ("logit_bias", ((5, 101.0),)),
        ("stop_token_ids", (-1,)),
        ("top_logprobs", 21),
    ],
)
async def test_bad_values_name_their_field(engine: SampleEngine, field: str, value: Any) -> None:
    with pytest.raises(InvalidSamplingParam) as err:
        await one(engine, replace(GREEDY, **{field: value}))
    assert err.value.param == field
