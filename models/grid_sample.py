"""Sample a grid checkpoint's held-back questions through vLLM: pass@k and maj@k counts per cell.

Why vLLM's offline `LLM` here and not the server's async adapter (`server.engine`): the grid
draws 320 × 64 samples for each of ~30 checkpoints. The offline engine batches all of a cell's
requests at once and skips detokenisation (we decode the character tokens ourselves), which
measured ~15,000 tokens/s against ~1,300 through the adapter on this CPU. Same sampler, same
tokenizer and chat prompt as the server, so the counts are what serving would see.

Why one engine per model size: all checkpoints of a size share a shape, so the engine starts
once (~35 s) and `reload_weights` swaps each checkpoint in (~0.03 s), with the prefix cache
reset so no block computed by the previous weights is reused.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.aggregate.extract import last_number
from models import chain

MAX_TOKENS = 40  # the longest worked answer is 28 tokens with its end token


@dataclass(frozen=True)
class QuestionCounts:
    """One question of one cell: how often each extracted answer came up (None: no number)."""

    problem: str
    gold: str
    samples: int
    correct: int
    answers: dict[str, int]
    texts: list[str]  # every sample's text, in index order (kept only where asked for)


class CellSampler:
    """An offline vLLM engine for one model shape, reloaded for each checkpoint of that shape."""

    def __init__(self, first_checkpoint: Path, *, seed: int, max_num_seqs: int = 1024) -> None:
        from vllm import LLM

        self._llm = LLM(
            model=str(first_checkpoint),
            dtype="float32",
            max_model_len=128,
            kv_cache_memory_bytes=512 * 2**20,
            max_num_seqs=max_num_seqs,
            block_size=32,
            enforce_eager=True,
            seed=seed,
            disable_log_stats=True,
        )
        self._loaded = first_checkpoint
        self._seed = seed
        tok = self._llm.get_tokenizer()
        self._vocab = {i: t for t, i in tok.get_vocab().items()}
        self._special = set(tok.all_special_ids)
        self._tok = tok

    def load(self, checkpoint: Path) -> None:
        if checkpoint != self._loaded:
            self._llm.collective_rpc("reload_weights", kwargs={"weights_path": str(checkpoint)})
            self._llm.reset_prefix_cache()
            self._loaded = checkpoint

    def _decode(self, ids: Any) -> str:
        return "".join(self._vocab.get(i, "\ufffd") for i in ids if i not in self._special)

    def sample(
        self, questions: list[chain.Question], samples: int, *, keep_texts: bool = False
    ) -> list[QuestionCounts]:
        """`samples` draws per question at T = 1, top_p = 1 (seeded per question)."""
        from vllm import SamplingParams

        prompts = [
            {"prompt_token_ids": self._tok.encode(chain.chat_prompt(q), add_special_tokens=False)}
            for q in questions
        ]
        params = [
            SamplingParams(
                n=samples,
                temperature=1.0,
                top_p=1.0,
                max_tokens=MAX_TOKENS,
                detokenize=False,
                seed=self._seed * 100_003 + i,
            )
            for i in range(len(questions))
        ]
        outs = self._llm.generate(prompts, params, use_tqdm=False)
        result: list[QuestionCounts] = []
        for i, (q, out) in enumerate(zip(questions, outs, strict=True)):
            by_index = sorted(out.outputs, key=lambda c: c.index)  # n > 1: collect by index
            texts = [self._decode(c.token_ids) for c in by_index]
            answers = [last_number(t) for t in texts]
            counts = Counter("" if a is None else a for a in answers)
            result.append(
                QuestionCounts(
                    problem=f"chain-{i:04d}",
                    gold=chain.gold(q),
                    samples=len(texts),
                    correct=sum(a == chain.gold(q) for a in answers),
                    answers=dict(counts),
                    texts=texts if keep_texts else [],
                )
            )
        return result

    def shutdown(self) -> None:
        self._llm.llm_engine.engine_core.shutdown()
