"""Streaming text assembly: what a streaming client receives must equal the full text."""

from services.inference.models.text_stream import IncrementalDecoder, StopSequenceFilter

# A toy tokenizer where one character ("é", two UTF-8 bytes) spans two tokens.
BYTES = {1: b"Caf", 2: b"\xc3", 3: b"\xa9", 4: b" au", 5: b" lait"}


def decode(ids):
    return b"".join(BYTES[i] for i in ids).decode("utf-8", errors="replace")


def test_decoder_never_emits_half_a_character():
    decoder = IncrementalDecoder(decode)
    pieces = [decoder.push(i) for i in [1, 2, 3, 4, 5]]
    assert "\ufffd" not in "".join(pieces)
    assert "".join(pieces) == "Café au lait"
    assert pieces[1] == ""  # waited for the second byte of é


def test_stop_sequence_split_across_chunks_is_cut_and_not_emitted():
    stops = StopSequenceFilter(["\nUser:"])
    out = [stops.push(t) for t in ["Paris is", " nice.\n", "Us", "er: more"]]
    assert "".join(out) == "Paris is nice."
    assert stops.stopped
    assert stops.push("ignored") == ""


def test_text_that_only_looks_like_a_stop_prefix_is_released():
    stops = StopSequenceFilter(["\nUser:"])
    out = [stops.push("line one\n"), stops.push("Uno"), stops.flush()]
    assert "".join(out) == "line one\nUno"
    assert not stops.stopped


def test_held_back_tail_is_flushed_at_the_end():
    stops = StopSequenceFilter(["END"])
    assert stops.push("almost E") == "almost "
    assert stops.flush() == "E"


def test_earliest_of_several_stop_sequences_wins():
    stops = StopSequenceFilter(["b", "a"])
    assert stops.push("xxaxxb") == "xx"
