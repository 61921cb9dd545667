"""A sans-I/O Server-Sent Events decoder that yields typed job events."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter
from pydantic_core import from_json

from .models.events import JobEvent

_event_adapter: TypeAdapter[Any] = TypeAdapter(JobEvent)


@dataclass
class SSEDecoder:
    """Feed lines (without newline); complete events come out. Tracks ``last_id`` for resume."""

    last_id: str | None = None
    _data: list[str] = field(default_factory=list)
    _event: str | None = None
    _id: str | None = None

    def feed(self, line: str) -> Iterator[Any]:
        if line == "":
            if self._data:
                data = "\n".join(self._data)
                if self._id is not None:
                    self.last_id = self._id
                body = from_json(data)
                if self._id is not None:
                    body.setdefault("id", self._id)
                yield _event_adapter.validate_python(body)
            self._data, self._event, self._id = [], None, None
            return
        if line.startswith(":"):
            return
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            self._id = value


def parse_event(body: dict[str, Any]) -> Any:
    return _event_adapter.validate_python(body)
