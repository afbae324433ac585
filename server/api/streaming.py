"""SSE in OpenAI's chunk format for adaptive sampling.

The answer is known only once the controller stops, so the stream sends `: keep-alive` comments
while waves run (proxies and clients keep the connection open; SSE parsers ignore comments), then
the chosen text in chunks, a finish chunk per choice, one final chunk with `choices: []`, `usage`
and `t2`, and `data: [DONE]`. Disconnecting cancels the generator, which cancels the jobs and so
aborts the engine's outstanding samples.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from server.api.errors import APIError

if TYPE_CHECKING:
    from server.api.routes import Kind, _Runs

_PIECE = re.compile(r"\s*\S+\s*|\s+")
WORDS_PER_CHUNK = 4


def _event(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def text_pieces(text: str) -> list[str]:
    """Split text into a few words per chunk; joining the pieces gives back `text` exactly."""
    words = _PIECE.findall(text)
    return ["".join(words[i : i + WORDS_PER_CHUNK]) for i in range(0, len(words), WORDS_PER_CHUNK)]


async def sse_stream(
    runs: _Runs,
    request_id: str,
    kind: Kind,
    model: str,
    keepalive_s: float,
    started: float,
    echo_prompts: list[str] | None = None,
) -> AsyncIterator[bytes]:
    from server.api.routes import t2_summary, usage

    created = int(time.time())
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
    progressed = asyncio.Event()
    runs.on_progress = progressed.set
    status = 200
    try:
        pending = asyncio.ensure_future(runs.wait())
        while not pending.done():
            waiter = asyncio.ensure_future(progressed.wait())
            await asyncio.wait(
                {pending, waiter}, timeout=keepalive_s, return_when=asyncio.FIRST_COMPLETED
            )
            waiter.cancel()
            if not pending.done():
                note = f"wave {runs.waves_done}" if progressed.is_set() else "sampling"
                progressed.clear()
                yield f": keep-alive {note}\n\n".encode()
        try:
            outcomes = pending.result()
        except APIError as exc:
            status = exc.status
            yield _event(exc.body())
            yield _event("[DONE]")
            return

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            return _event(
                {
                    "id": request_id,
                    "object": obj,
                    "created": created,
                    "model": model,
                    "choices": choices,
                    **extra,
                }
            )

        ttft: float | None = None
        per_prompt = len(outcomes) // len(echo_prompts) if echo_prompts else 1
        for i, outcome in enumerate(outcomes):
            text = outcome.text
            if kind == "text" and echo_prompts:
                text = echo_prompts[i // per_prompt] + text
            if kind == "chat":
                yield chunk(
                    [
                        {
                            "index": i,
                            "delta": {"role": "assistant", "content": ""},
                            "finish_reason": None,
                            "logprobs": None,
                        }
                    ]
                )
            for piece in text_pieces(text):
                if ttft is None:
                    ttft = time.monotonic() - started
                if kind == "chat":
                    yield chunk(
                        [
                            {
                                "index": i,
                                "delta": {"content": piece},
                                "finish_reason": None,
                                "logprobs": None,
                            }
                        ]
                    )
                else:
                    yield chunk(
                        [{"index": i, "text": piece, "finish_reason": None, "logprobs": None}]
                    )
            if kind == "chat":
                yield chunk(
                    [
                        {
                            "index": i,
                            "delta": {},
                            "finish_reason": outcome.finish_reason,
                            "logprobs": None,
                        }
                    ]
                )
            else:
                yield chunk(
                    [
                        {
                            "index": i,
                            "text": "",
                            "finish_reason": outcome.finish_reason,
                            "logprobs": None,
                        }
                    ]
                )
        yield chunk([], usage=usage(outcomes), t2=t2_summary(outcomes), **_header_fields(runs))
        yield _event("[DONE]")
        runs.record(ttft)
    except (asyncio.CancelledError, GeneratorExit):
        status = 499
        raise
    finally:
        if status != 200:
            runs.cancel_now()
            await asyncio.shield(runs.cancel())


def _header_fields(runs: _Runs) -> dict[str, Any]:
    """Streams cannot set the x-t2-* headers at the end, so the final chunk repeats them."""
    return {"t2_headers": runs.headers()}
