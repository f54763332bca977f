"""Token ids to text chunks: stop sequences, and log probabilities lined up with the text
their tokens added (text_assembly.py)."""

from services.backend.types import FinishReason, TokenLogprob
from services.inference.models.text_assembly import TextAssembler

VOCAB = {1: "Hello", 2: " world", 3: "\n", 4: "User", 5: ":", 6: " again", 0: "<eos>"}


def assembler(stops=()) -> TextAssembler:
    return TextAssembler(lambda ids: "".join(VOCAB[i] for i in ids), {0}, stops, input_tokens=3, max_tokens=10)


def run(text: TextAssembler, tokens: list[int]) -> tuple[str, list[TokenLogprob]]:
    out, entries = "", []
    for token in tokens:
        out += text.push(token, TokenLogprob(VOCAB[token], -0.5))
        entries += text.take_logprobs()
        if text.finish is not None:
            break
    last = text.last_chunk()
    return out + last.text, entries + last.logprobs


def test_each_generated_token_has_its_entry_and_the_entries_join_to_the_text():
    text, entries = run(assembler(), [1, 2, 6, 0])
    assert text == "Hello world again"
    assert [e.token for e in entries] == ["Hello", " world", " again"]


def test_a_stop_sequence_swallows_its_tokens_entries_too():
    machine = assembler(stops=("\nUser:",))
    text, entries = run(machine, [1, 3, 4, 5, 6])
    assert text == "Hello" and machine.finish is FinishReason.STOP
    assert "".join(e.token for e in entries) == "Hello"


def test_text_held_back_for_a_possible_stop_is_released_with_its_entries():
    text, entries = run(assembler(stops=("\nUser:",)), [1, 3, 6, 0])
    assert text == "Hello\n again"
    assert "".join(e.token for e in entries) == text


def test_ending_from_outside_stops_with_stop():
    machine = assembler()
    machine.push(1)
    machine.end()
    assert machine.finish is FinishReason.STOP and machine.last_chunk().usage.output_tokens == 1
