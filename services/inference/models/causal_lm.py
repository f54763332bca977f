"""A decoder-only language model served with transformers, one request at a time.

The decode loop is written out (rather than calling generate() with a streamer thread)
so that every step yields its text at once and a cancelled caller stops the loop
between two forward passes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import llguidance.hf
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from services.backend.types import Capability, ChatTurn, GenerationParams, TextChunk, Tools
from services.inference.models.base import CancelToken, ServedModel, safetensors_bytes
from services.inference.models.chat_format import base_model_chat_prompt, template_messages
from services.inference.models.continuous_batching import BatchingSettings, ContinuousBatcher
from services.inference.models.decoding_step import DecodingStep
from services.inference.models.grammar import Constraint, TokenizerCache
from services.inference.models.text_assembly import TextAssembler
from services.inference.models.torch_threads import use_torch_threads

log = logging.getLogger(__name__)


class TransformersCausalLM(ServedModel):
    capabilities = frozenset({Capability.TEXT_GENERATION, Capability.CHAT})

    def __init__(
        self,
        model_id: str,
        prepare: Callable[[], Path],
        device: str,
        dtype: torch.dtype,
        max_context: int,
        batching: BatchingSettings | None = None,
        weights_dir: Path | None = None,
        threads: int | None = None,
    ) -> None:
        super().__init__()
        self.model_id = model_id
        self._threads = threads or torch.get_num_threads()
        self._prepare = prepare
        self._torch_device = torch.device(device)
        self._torch_dtype = dtype
        self._max_context = max_context
        self.device, self.dtype = str(self._torch_device), str(dtype).removeprefix("torch.")
        self.model = None
        self.tokenizer = None
        self._batching = batching
        self._weights_dir = weights_dir
        self.batcher: ContinuousBatcher | None = None

    def load(self) -> None:
        path = self._prepare()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=self._torch_dtype)
        model = model.to(self._torch_device).eval()
        if any(p.device.type == "meta" for p in model.parameters()):
            raise RuntimeError(f"{self.model_id}: weights left on the meta device after loading {path}")
        # The batch manager and the one-request loop share these weights; their forward
        # passes must not overlap (seen: a request sampled while the manager stepped got
        # different tokens for the same seed), so each pass holds the model's lock. Passes
        # run on the manager's thread and on executor threads: each sets its thread count.
        lock = threading.RLock()
        threads = self._threads

        def enter(module: torch.nn.Module, args: tuple) -> None:
            lock.acquire()
            use_torch_threads(threads)

        def leave(module: torch.nn.Module, args: tuple, output: object) -> None:
            lock.release()

        model.register_forward_pre_hook(enter)
        model.register_forward_hook(leave, always_call=True)
        self.model = model
        self.context_length = min(int(model.config.max_position_embeddings), self._max_context)
        eos = model.generation_config.eos_token_id
        self._eos = {eos} if isinstance(eos, int) else set(eos or [])
        if self.tokenizer.eos_token_id is not None:
            self._eos.add(self.tokenizer.eos_token_id)
        if self._batching is not None:
            self.batcher = ContinuousBatcher(model, self._eos, self._batching, self.model_id)
            self.batcher.start()
        tokenizer = self.tokenizer
        self._grammar_tokenizer = TokenizerCache(lambda: llguidance.hf.from_tokenizer(tokenizer))

    def estimate_bytes(self) -> int:
        if self._weights_dir is None or not self._weights_dir.exists():
            return 0
        return safetensors_bytes(self._weights_dir, self._torch_dtype.itemsize)

    def warmup(self) -> None:
        for _ in self.generate("Hello", GenerationParams(max_tokens=2), CancelToken()):
            pass

    def stop(self) -> None:
        if self.batcher is not None:
            self.batcher.stop()
            self.batcher = None
        self.model = None
        self.tokenizer = None
        if self._torch_device.type == "cuda":
            torch.cuda.empty_cache()

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text)["input_ids"])

    def chat_prompt(self, turns: list[ChatTurn], tools: Tools | None = None) -> tuple[str, tuple[str, ...]]:
        if self.tokenizer.chat_template:
            described = {"tools": [spec.as_openai() for spec in tools.callable_specs()]} if tools else {}
            prompt = self.tokenizer.apply_chat_template(
                template_messages(turns), add_generation_prompt=True, tokenize=False, **described
            )
            return prompt, ()
        return base_model_chat_prompt(turns, tools)

    def encode(self, prompt: str) -> list[int]:
        return self.tokenizer(prompt)["input_ids"]

    def assembler(self, input_tokens: int, params: GenerationParams) -> TextAssembler:
        decode = lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
        return TextAssembler(decode, self._eos, params.stop_sequences, input_tokens, params.max_tokens)

    @torch.inference_mode()
    def generate(self, prompt: str, params: GenerationParams, cancel: CancelToken) -> Iterator[TextChunk]:
        """One request alone: used where batching cannot honour a parameter (seeded sampling,
        penalties, a grammar, log probabilities) and when batching is off."""
        input_ids = torch.tensor([self.encode(prompt)], device=self._torch_device)
        text = self.assembler(int(input_ids.shape[1]), params)
        pick = self._sampler(params)
        step = DecodingStep(params, self._grammar_tokenizer.constraint(params.grammar), self._token_text)
        output = self.model(input_ids=input_ids, use_cache=True)
        tokens = input_ids
        while not cancel.cancelled:
            logits = output.logits[:, -1, :]
            if step.active:
                row = step.shape(logits[0].float().cpu().numpy().copy())
                logits = torch.from_numpy(row).unsqueeze(0).to(logits.device)
            next_id = pick(tokens, logits)
            token = int(next_id)
            piece = text.push(token, step.chosen(token))
            if step.complete:
                text.end()
            chunk = TextChunk(piece, logprobs=text.take_logprobs())
            if chunk.text or chunk.logprobs:
                yield chunk
            if text.finish is not None:
                break
            tokens = torch.cat([tokens, next_id.view(1, 1)], dim=1)
            output = self.model(input_ids=next_id.view(1, 1), cache=output.cache, use_cache=True)
        yield text.last_chunk()

    def constraint(self, grammar: str) -> Constraint:
        """A matcher for one request's grammar (for the batch's sampler)."""
        return self._grammar_tokenizer.constraint(grammar)

    def special_tokens(self, texts: set[str]) -> set[str]:
        return self._grammar_tokenizer.special(texts)

    def _token_text(self, token: int) -> str:
        return self.tokenizer.decode([token])

    def _sampler(self, params: GenerationParams) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        penalty = LogitsProcessorList()
        if params.repetition_penalty != 1.0:
            penalty.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
        if params.temperature <= 0:
            return lambda tokens, logits: _finite(penalty(tokens, logits.float())).argmax(dim=-1)
        warpers = LogitsProcessorList([*penalty, TemperatureLogitsWarper(params.temperature)])
        if params.top_k:
            warpers.append(TopKLogitsWarper(params.top_k))
        if params.top_p < 1.0:
            warpers.append(TopPLogitsWarper(params.top_p))
        generator = torch.Generator(device=self._torch_device)
        if params.seed is not None:
            generator.manual_seed(params.seed)
        else:
            generator.seed()

        def pick(tokens: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
            probs = torch.softmax(_finite(warpers(tokens, logits.float())), dim=-1)
            return torch.multinomial(probs, 1, generator=generator).view(-1)

        return pick


def _finite(scores: torch.Tensor) -> torch.Tensor:
    """Scores sampling can draw from: an extreme repetition penalty (1e-45 divides a
    logit into infinity) made softmax NaN and the request fail; the largest finite
    value stands in for infinity, NaN is never chosen."""
    return torch.nan_to_num(scores, nan=float("-inf"), posinf=torch.finfo(scores.dtype).max)
