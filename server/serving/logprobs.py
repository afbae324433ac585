"""The returned sample's token logprobs in OpenAI's two shapes (chat and legacy completions),
and the text split into streamed pieces that each carry their own tokens' logprobs."""

from __future__ import annotations

from server.api.protocol import ChatLogprobs, CompletionLogprobs, TokenLogprobEntry, TopLogprob
from server.engine.base import TokenLogprob


def visible(text: str, tokens: tuple[TokenLogprob, ...]) -> tuple[TokenLogprob, ...]:
    """The tokens that spell `text` (a stop string or EOS the text does not show is dropped);
    all of them when they do not spell it (a detokenizer that merges characters)."""
    spelled, kept = "", []
    for t in tokens:
        if spelled == text or not text.startswith(spelled + t.token):
            break
        spelled += t.token
        kept.append(t)
    return tuple(kept) if spelled == text else tokens


def _entry(token: str, logprob: float) -> TopLogprob:
    return TopLogprob(token=token, logprob=logprob, bytes=list(token.encode()))


def chat_logprobs(tokens: tuple[TokenLogprob, ...], top: int) -> ChatLogprobs:
    return ChatLogprobs(
        content=[
            TokenLogprobEntry(
                token=t.token,
                logprob=t.logprob,
                bytes=list(t.token.encode()),
                top_logprobs=[_entry(tok, lp) for tok, lp in t.top[:top]],
            )
            for t in tokens
        ]
    )


def completion_logprobs(
    tokens: tuple[TokenLogprob, ...], top: int, offset: int = 0
) -> CompletionLogprobs:
    offsets, at = [], offset
    for t in tokens:
        offsets.append(at)
        at += len(t.token)
    return CompletionLogprobs(
        tokens=[t.token for t in tokens],
        token_logprobs=[t.logprob for t in tokens],
        top_logprobs=[dict(t.top[:top]) for t in tokens],
        text_offset=offsets,
    )


def pieces(
    text: str, tokens: tuple[TokenLogprob, ...], per_piece: int
) -> list[tuple[str, tuple[TokenLogprob, ...]]]:
    """`text` in pieces of `per_piece` tokens, each with its tokens' logprobs; when the tokens
    do not spell the text, one piece carrying them all."""
    if "".join(t.token for t in tokens) != text:
        return [(text, tokens)]
    groups = [tokens[i : i + per_piece] for i in range(0, len(tokens), per_piece)]
    return [("".join(t.token for t in g), g) for g in groups]
