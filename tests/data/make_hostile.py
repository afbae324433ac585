"""Writes hostile_requests.jsonl: the fuzz corpus of test_hostile_corpus.py.

Each line is one request a hostile or careless client might send: {"name", "method", "path",
"headers", "body"} with the body as raw text (so invalid JSON, NaN and deep nesting can be
expressed). Every one must get a 4xx in OpenAI's error shape with no traceback text. Rerun
with `python tests/data/make_hostile.py` after adding cases; the file is committed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

KEY = "test-demo-key"  # tests/fixtures/server.py DEMO_KEY
CHAT = "/v1/chat/completions"
TEXT = "/v1/completions"
MODEL = "tiny-arith"
AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Q: 1+1=?"}], **fields}


def cases() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(name: str, body: Any, path: str = CHAT, method: str = "POST", **headers: str) -> None:
        raw = body if isinstance(body, str) else json.dumps(body)
        out.append(
            {
                "name": name,
                "method": method,
                "path": path,
                "headers": {**AUTH, **headers},
                "body": raw,
            }
        )

    # loose types: OpenAI's types, no coercion
    for field, value in [
        ("max_tokens", "10"),
        ("max_tokens", 10.5),
        ("max_tokens", True),
        ("max_tokens", -1),
        ("max_tokens", 0),
        ("max_tokens", [1]),
        ("stream", "yes"),
        ("stream", 1),
        ("temperature", "hot"),
        ("temperature", -0.1),
        ("temperature", 2.5),
        ("top_p", 0),
        ("top_p", 1.5),
        ("n", 0),
        ("n", 99),
        ("n", "2"),
        ("seed", -(2**63) - 1),  # vLLM's range is a torch long's
        ("seed", 2**63),
        ("seed", "7"),
        ("stop", 5),
        ("stop", [""]),
        ("stop", ["a"] * 20),
        ("user", 5),
        ("user", "u" * 5000),
        ("stream_options", "yes"),
        ("max_completion_tokens", "3"),
        ("messages", []),
        ("messages", "hi"),
        ("messages", [{"role": "king", "content": "x"}]),
        ("messages", [{"role": "user", "content": 5}]),
        ("messages", [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]),
        ("model", ""),
        ("model", 5),
        ("model", None),
    ]:
        add(f"type:{field}={json.dumps(value)[:20]}", chat(**{field: value}))
    # huge numbers
    for field in ("max_tokens", "n", "seed", "temperature", "top_p"):
        add(f"huge:{field}", json.dumps(chat()).replace('"model"', f'"{field}": 1e400, "model"'))
        add(
            f"bigint:{field}",
            json.dumps(chat()).replace('"model"', f'"{field}": {10**40}, "model"'),
        )
    add("huge:max_tokens_int", chat(max_tokens=10**12))
    # NaN and Infinity (Python's json reads them; they are not JSON)
    for literal in ("NaN", "Infinity", "-Infinity"):
        for field in ("temperature", "top_p", "max_tokens"):
            add(
                f"nonfinite:{field}={literal}",
                json.dumps(chat()).replace('"model"', f'"{field}": {literal}, "model"'),
            )
        add(
            f"nonfinite:t2.max_cost={literal}",
            json.dumps(chat()).replace('"model"', f'"t2": {{"max_cost": {literal}}}, "model"'),
        )
    # invalid Unicode (lone surrogates) in every text field
    for where, body in [
        ("content", chat(messages=[{"role": "user", "content": "Q: \ud800=?"}])),
        (
            "content_part",
            chat(messages=[{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}]),
        ),
        ("name", chat(messages=[{"role": "user", "content": "x", "name": "\ud83d"}])),
        ("stop", chat(stop="\ud800")),
        ("stop_list", chat(stop=["ok", "\udc00"])),
        ("user", chat(user="\ud800")),
        ("model", chat(model="tiny\ud800")),
        ("t2.policy", chat(t2={"policy": "t2\ud800"})),
    ]:
        add(f"surrogate:{where}", json.dumps(body))  # json.dumps writes \\ud800 escapes
    add("surrogate:prompt", json.dumps({"model": MODEL, "prompt": "Q: \ud800=?"}), TEXT)
    add("surrogate:prompt_list", json.dumps({"model": MODEL, "prompt": ["ok", "\ud800"]}), TEXT)
    # t2 options
    for name, t2 in [
        ("lam_inf", {"policy": "t2:lam=inf"}),
        ("lam_nan", {"policy": "t2:lam=nan"}),
        ("lam_neg", {"policy": "t2:lam=-1"}),
        ("fixed_huge", {"policy": "fixed:1000000"}),
        ("fixed_zero", {"policy": "fixed:0"}),
        ("fixed_text", {"policy": "fixed:abc"}),
        ("unknown_policy", {"policy": "oracle"}),
        ("unknown_option", {"policy": "t2:colour=red"}),
        ("wave_zero", {"policy": "t2:wave=0"}),
        ("esc_zero", {"policy": "esc:0"}),
        ("ac_one", {"policy": "adaptive_consistency:1.5"}),
        ("aggregator", {"aggregator": "coin"}),
        ("extractor", {"extractor": "tarot"}),
        ("unknown_field", {"budget": 5}),
        ("max_samples_huge", {"max_samples": 5000}),
        ("max_samples_zero", {"max_samples": 0}),
        ("max_cost_neg", {"max_cost": -1}),
        ("deadline_zero", {"deadline_ms": 0}),
        ("t2_string", "fast"),
        ("t2_list", ["t2"]),
        ("policy_long", {"policy": "t2" * 100}),
    ]:
        add(f"t2:{name}", chat(t2=t2))
    # deep nesting and odd JSON
    for depth in (100, 1000, 20_000):
        nested = json.dumps(chat()).replace('"messages": ', '"messages": ' + "[" * depth, 1)
        add(f"nesting:list{depth}", nested.replace("}]}", "}]" + "]" * depth + "}", 1))
        add(f"nesting:object{depth}", '{"a":' * depth + "1" + "}" * depth)
    for name, raw in [
        ("empty", ""),
        ("null", "null"),
        ("list", "[]"),
        ("string", '"hello"'),
        ("number", "5"),
        ("truncated", '{"model": "tiny-arith", "messages": ['),
        ("garbage", "{{{{"),
        ("trailing", json.dumps(chat()) + " xyz"),
        ("bom_inside", '{"model": "tiny-arith", "messages": \ufeff[]}'),
        ("single_quotes", "{'model': 'tiny-arith'}"),
        ("duplicate_keys_bad", '{"model": 5, "model": 6}'),
    ]:
        add(f"json:{name}", raw)
    add("json:missing_messages", {"model": MODEL})
    add("json:missing_prompt", {"model": MODEL}, TEXT)
    add("json:prompt_empty_list", {"model": MODEL, "prompt": []}, TEXT)
    add("json:prompt_too_many", {"model": MODEL, "prompt": ["a"] * 50}, TEXT)
    add("json:prompt_number", {"model": MODEL, "prompt": 5}, TEXT)
    add("json:prompt_empty", {"model": MODEL, "prompt": ""}, TEXT)
    add("json:prompt_list_of_lists", {"model": MODEL, "prompt": [["a"]]}, TEXT)
    # paths and model names
    for model in (
        "../../etc/passwd",
        "tiny-arith/../tiny-arith",
        "%2e%2e%2f",
        "tiny-arith\u0000",
        "TINY-ARITH",
        " tiny-arith",
        "tiny-arith ",
        "*",
        "a" * 300,
        "🦄",
        "$(id)",
        "<script>",
        "tiny-arith;drop",
    ):
        add(f"model:{model[:20]!r}", chat(model=model))
    for path in (
        "/v1/models/..%2F..%2Fetc",
        "/v1/models/%00",
        "/v1/models/../admin/tenants",
        "/v1/models/a%2Fb",
        "/v1//chat/completions",
        "/v1/chat/completions/x",
        "/v1/CHAT/completions",
        "/v2/chat/completions",
        "/admin/%2e%2e/v1/models",
        "/v1/models/" + "x" * 2000,
    ):
        add(f"path:{path[:30]}", "", path=path, method="GET")
    add("method:get_chat", "", CHAT, "GET")
    add("method:put_chat", chat(), CHAT, "PUT")
    add("method:delete_models", "", "/v1/models", "DELETE")
    # headers
    for name, value in [
        ("missing", None),
        ("empty", ""),
        ("scheme_only", "Bearer"),
        ("scheme_equals", "Bearer ="),
        ("basic", "Basic dXNlcjpwYXNz"),
        ("lowercase_wrong_key", "bearer nope"),
        ("two_keys", f"Bearer {KEY} {KEY}"),
        ("tab", f"Bearer\t{KEY}x"),
        ("token_only", KEY),
        ("long", "Bearer " + "k" * 8000),
        ("latin1", "Bearer clé"),
        ("quote", 'Bearer "x"'),
        ("admin_path_key", "Bearer admin"),
    ]:
        headers = {"Content-Type": "application/json"}
        if value is not None:
            headers["Authorization"] = value
        out.append(
            {
                "name": f"auth:{name}",
                "method": "POST",
                "path": CHAT,
                "headers": headers,
                "body": json.dumps(chat()),
            }
        )
    add("content_type:text", json.dumps(chat()), **{"Content-Type": "text/plain"})
    add(
        "content_type:form",
        "model=tiny-arith",
        **{"Content-Type": "application/x-www-form-urlencoded"},
    )
    # admin routes with a tenant key, and bad admin bodies
    for method, path in [
        ("GET", "/admin/tenants"),
        ("GET", "/admin/tenants/demo"),
        ("POST", "/admin/reload"),
        ("PUT", "/admin/tenants/demo/budgets"),
    ]:
        add(f"admin:tenant_key:{method}:{path}", "{}", path, method)
    return out


if __name__ == "__main__":
    corpus = cases()
    target = Path(__file__).with_name("hostile_requests.jsonl")
    target.write_text("".join(json.dumps(c, ensure_ascii=True) + "\n" for c in corpus))
    print(f"{len(corpus)} cases -> {target}")
