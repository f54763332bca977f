"""A GGUF language model served by llama.cpp (llama-cpp-python), one request at a time.

llama.cpp memory-maps the quantized file and decodes it natively, which on a small CPU
beats dequantized weights in torch at batch 1; it has no continuous batching here, so
requests take turns (MAX_CONCURRENT_INFERENCES, default 1).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import llguidance
from llama_cpp import LogitsProcessorList

from services.backend.types import Capability, ChatTurn, GenerationParams, TextChunk, Tools
from services.inference.models.base import CancelToken, ServedModel
from services.inference.models.chat_format import base_model_chat_prompt, template_messages
from services.inference.models.decoding_step import DecodingStep
from services.inference.models.grammar import TokenizerCache
from services.inference.models.text_assembly import TextAssembler

if TYPE_CHECKING:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter


class LlamaCppLM(ServedModel):
    capabilities = frozenset({Capability.TEXT_GENERATION, Capability.CHAT})

    def __init__(self, model_id: str, gguf: Callable[[], Path], device: str, max_context: int, threads: int) -> None:
        super().__init__()
        self.model_id = model_id
        self._gguf = gguf
        self._max_context = max_context
        self._threads = threads
        self.device, self.dtype = device, "gguf"
        self.llm = None
        self._path: Path | None = None

    def load(self) -> None:
        from llama_cpp import Llama

        self._path = self._gguf()
        # On CUDA every layer goes to the GPU; on CPU threads are sized to the cores we own.
        self.llm = Llama(
            model_path=str(self._path),
            n_ctx=self._max_context,
            n_threads=self._threads,
            n_threads_batch=self._threads,
            n_gpu_layers=-1 if self.device.startswith("cuda") else 0,
            verbose=False,
        )
        self.context_length = min(self._max_context, int(self.llm.n_ctx()))
        self._eos = self._end_of_generation_tokens()
        self._chat_format = self._chat_template()
        self._grammar_tokenizer = TokenizerCache(self._llguidance_tokenizer)

    def warmup(self) -> None:
        for _ in self.generate("Hello", GenerationParams(max_tokens=2), CancelToken()):
            pass

    def stop(self) -> None:
        if self.llm is not None:
            self._grammar_tokenizer.settle()  # it reads the vocabulary the model holds
            self.llm.close()
        self.llm = None

    def estimate_bytes(self) -> int:
        path = self._path or self._gguf()
        return path.stat().st_size

    def memory_bytes(self) -> int:
        return self.estimate_bytes() if self.llm is not None else 0

    def encode(self, prompt: str) -> list[int]:
        return self.llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    def chat_prompt(self, turns: list[ChatTurn], tools: Tools | None = None) -> tuple[str, tuple[str, ...]]:
        """The model's own chat template where its GGUF has one (with the tools, which
        templates like Qwen's describe to the model in its trained format); a base model's
        transcript otherwise. A template's turn ends with an end-of-generation token
        (Qwen's <|im_end|>), which stops generation by itself: no extra stop sequences."""
        if self._chat_format is None:
            return base_model_chat_prompt(turns, tools)
        described = [spec.as_openai() for spec in tools.callable_specs()] if tools else None
        return self._chat_format(messages=template_messages(turns), tools=described).prompt, ()

    def _end_of_generation_tokens(self) -> set[int]:
        """EOS, the end-of-turn token (EOT) and every other token llama.cpp ends generation
        on (Qwen: <|im_end|>, <|endoftext|>, ...), so a model's turn ends where it says so."""
        import llama_cpp

        vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        eog = {t for t in range(llama_cpp.llama_vocab_n_tokens(vocab)) if llama_cpp.llama_vocab_is_eog(vocab, t)}
        return eog | {int(t) for t in (self.llm.token_eos(), llama_cpp.llama_vocab_eot(vocab)) if t >= 0}

    def _chat_template(self) -> Jinja2ChatFormatter | None:
        """The GGUF's tokenizer.chat_template, rendered as Hugging Face renders it."""
        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            return None
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        def text(token: int) -> str:
            return self.llm.detokenize([token], special=True).decode("utf-8", errors="replace") if token >= 0 else ""

        # encode() adds BOS itself where the vocabulary asks for it: then the template must not.
        adds_bos = llama_cpp.llama_vocab_get_add_bos(llama_cpp.llama_model_get_vocab(self.llm.model))
        bos = "" if adds_bos else text(self.llm.token_bos())
        return Jinja2ChatFormatter(template, eos_token=text(self.llm.token_eos()), bos_token=bos)

    def generate(self, prompt: str, params: GenerationParams, cancel: CancelToken) -> Iterator[TextChunk]:
        tokens = self.encode(prompt)
        decode = lambda ids: self.llm.detokenize(ids).decode("utf-8", errors="replace")  # noqa: E731
        text = TextAssembler(decode, self._eos, params.stop_sequences, len(tokens), params.max_tokens)
        step = DecodingStep(params, self._grammar_tokenizer.constraint(params.grammar), self._token_text)
        greedy = params.temperature <= 0
        self.llm.set_seed(params.seed if params.seed is not None else random.randrange(2**31))
        stream = self.llm.generate(
            tokens,
            temp=0.0 if greedy else params.temperature,
            top_k=1 if greedy else params.top_k,
            top_p=1.0 if greedy else params.top_p,
            repeat_penalty=params.repetition_penalty,
            reset=True,
            # Run first in llama.cpp's sampler chain, on the logits in token-id order.
            logits_processor=LogitsProcessorList([lambda ids, scores: step.shape(scores)]) if step.active else None,
        )
        for token in stream:
            piece = text.push(int(token), step.chosen(int(token)))
            if step.complete:
                text.end()
            chunk = TextChunk(piece, logprobs=text.take_logprobs())
            if chunk.text or chunk.logprobs:
                yield chunk
            if text.finish is not None or cancel.cancelled:
                break
        yield text.last_chunk()

    def special_tokens(self, texts: set[str]) -> set[str]:
        return self._grammar_tokenizer.special(texts)

    def _token_text(self, token: int) -> str:
        return self.llm.detokenize([token]).decode("utf-8", errors="replace")

    def _llguidance_tokenizer(self) -> llguidance.LLTokenizer:
        import llama_cpp
        import llguidance.llamacpp

        # llguidance reads each token's attributes with llama_token_get_attr, which
        # llama-cpp-python 0.3.36 deprecates and warns about on every call (262k warnings
        # for Gemma's vocabulary): its replacement takes the same arguments.
        llama_cpp.llama_token_get_attr = llama_cpp.llama_vocab_get_attr
        return llguidance.llamacpp.lltokenizer_from_vocab(self.llm._model.vocab, eos_token=sorted(self._eos))
