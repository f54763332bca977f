"""multipart/form-data bodies (OpenAI's file uploads), parsed whole with python-multipart:
the body has already arrived in one piece through Envoy's transcoder (google.api.HttpBody)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from python_multipart.multipart import MultipartParser, parse_options_header

from services.runtime.errors import InvalidArgument


@dataclass
class Part:
    name: str
    data: bytes
    filename: str | None = None
    content_type: str = ""

    @property
    def text(self) -> str:
        try:
            return self.data.decode()
        except UnicodeDecodeError:
            raise InvalidArgument(f"form field {self.name!r} is not UTF-8 text", reason="INVALID_MULTIPART") from None


def parse(content_type: str, body: bytes) -> list[Part]:
    """The parts of a multipart/form-data body, in order; INVALID_ARGUMENT for a body that
    is not one."""
    try:
        kind, options = parse_options_header(content_type)
    except (UnicodeError, ValueError):  # a header value HTTP cannot carry
        kind, options = b"", {}
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise InvalidArgument(
            f"the request body must be multipart/form-data with a boundary, not {content_type or 'no content type'!r}",
            reason="INVALID_MULTIPART",
        )
    parts: list[Part] = []
    headers: dict[bytes, bytes] = {}
    field, value, data = bytearray(), bytearray(), bytearray()

    def header_end() -> None:
        headers[bytes(field).lower()] = bytes(value)
        field.clear()
        value.clear()

    def part_end() -> None:
        disposition, params = parse_options_header(headers.get(b"content-disposition", b""))
        if disposition != b"form-data" or b"name" not in params:
            raise InvalidArgument(
                "a form part has no name (Content-Disposition: form-data; name=...)", reason="INVALID_MULTIPART"
            )
        filename = params.get(b"filename")
        parts.append(
            Part(
                params[b"name"].decode(errors="replace"),
                bytes(data),
                filename.decode(errors="replace") if filename is not None else None,
                headers.get(b"content-type", b"").decode(errors="replace"),
            )
        )
        headers.clear()
        data.clear()

    ended = []
    callbacks = {
        "on_end": lambda: ended.append(True),
        "on_header_field": lambda chunk, start, end: field.extend(chunk[start:end]),
        "on_header_value": lambda chunk, start, end: value.extend(chunk[start:end]),
        "on_header_end": header_end,
        "on_part_data": lambda chunk, start, end: data.extend(chunk[start:end]),
        "on_part_end": part_end,
    }
    parser = MultipartParser(boundary, callbacks)
    try:
        parser.write(body)
        parser.finalize()
    except InvalidArgument:
        raise
    except Exception as error:  # noqa: BLE001 - python-multipart's errors are all a malformed body
        raise InvalidArgument(f"the multipart body is malformed: {error}", reason="INVALID_MULTIPART") from None
    if not ended:
        raise InvalidArgument("the multipart body ends before its closing boundary", reason="INVALID_MULTIPART")
    return parts


def form_fields(parts: list[Part], file_field: str = "file") -> tuple[dict[str, Any], Part]:
    """A multipart form's fields as a request's JSON would hold them (`name[]` parts as
    one list under `name`), and its file part; a missing file or a field given twice is
    a 400 naming it."""
    fields: dict[str, Any] = {}
    upload = None
    for part in parts:
        if part.name == file_field:
            if upload is not None:
                raise InvalidArgument(f"'{file_field}' is given twice", reason="DUPLICATE_PARAMETER", param=file_field)
            upload = part
        elif part.name.endswith("[]"):
            fields.setdefault(part.name[:-2], []).append(part.text)
        elif part.name in fields:
            raise InvalidArgument(f"'{part.name}' is given twice", reason="DUPLICATE_PARAMETER", param=part.name)
        else:
            fields[part.name] = part.text
    if upload is None or not upload.data:
        raise InvalidArgument(
            f"a non-empty '{file_field}' part is required", reason="INVALID_REQUEST_FIELDS", param=file_field
        )
    return fields, upload
