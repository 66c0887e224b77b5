"""The LLM handler's words: the prompt, the result schema, and reading the reply back.

Pure functions, no I/O. Replies are read leniently (```json fences, <think> blocks, prose
around the JSON, an object wrapping the array, a reply cut off mid-object) and each result is
validated on its own with pydantic, so one garbled entry never costs the others.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import structlog
from pydantic import BaseModel, BeforeValidator, ConfigDict, StringConstraints, ValidationError

from batcher.models import BatchOutcome, Entry

log = structlog.stdlib.get_logger(__name__)

ResponseFormat = Literal["json_schema", "json_object", "text"]
MAX_TITLE_CHARS = 300
MAX_TEXT_CHARS = 1000
CATEGORIES = "technology science business politics world sports health entertainment other".split()
_ENTRY_LINE = re.compile(r'^\[id=("(?:[^"\\]|\\.)*")\] title: ?(.*)$')
_TAG = re.compile(r"<[^>]+>")
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"```[A-Za-z]*")


# --- the prompt -------------------------------------------------------------------------


def _clean(text: str, limit: int) -> str:
    # One line per field: the fake server (and the model) read the prompt line by line.
    text = " ".join(html.unescape(_TAG.sub(" ", text)).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_entry(entry_id: str, title: str, text: str) -> str:
    """The two prompt lines of one entry; ``parse_entry_lines`` reads them back."""
    marker = json.dumps(entry_id, ensure_ascii=False)
    title, text = _clean(title, MAX_TITLE_CHARS), _clean(text, MAX_TEXT_CHARS)
    return f"[id={marker}] title: {title}\ntext: {text}"


def parse_entry_lines(prompt: str) -> list[tuple[str, str]]:
    """(id, title) of every entry in a prompt built by ``build_prompt``."""
    found = []
    for line in prompt.splitlines():
        match = _ENTRY_LINE.match(line)
        if match:
            found.append((str(json.loads(match.group(1))), match.group(2)))
    return found


def entry_text(entry: Entry) -> str:
    payload = entry.payload
    title = str(payload.get("title") or "(untitled)")
    text = str(payload.get("summary") or payload.get("description") or payload.get("link") or "")
    return format_entry(entry.id, title, text)


def instructions(response_format: ResponseFormat) -> str:
    # json_object: OpenAI answers 400 unless a message contains the word "JSON"
    shape = ('a JSON object {"results": [ ... ]}' if response_format != "text"
             else "a JSON array")
    return (
        "You summarise news feed entries. For each entry write a one-sentence summary, "
        f"choose one category from: {', '.join(CATEGORIES)}; and rate its importance "
        "from 1 (trivial) to 5 (major news).\n"
        f"Reply with only {shape}, one object per entry, in the order given:\n"
        '[{"id": "<the entry id exactly as given>", "summary": "...", '
        '"category": "technology", "importance": 3}]\n'
        "No prose and no markdown."
    )


def build_prompt(
    entries: Sequence[Entry], response_format: ResponseFormat = "text"
) -> list[dict[str, str]]:
    """The chat messages for ``entries``: instructions, then each entry with its id."""
    body = "\n".join(entry_text(e) for e in entries)
    return [
        {"role": "system", "content": instructions(response_format)},
        {"role": "user", "content": f"Entries ({len(entries)}):\n{body}"},
    ]


def results_schema() -> dict[str, Any]:
    """The ``response_format`` of json_schema mode: strict, every field required."""
    item = {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "summary": {"type": "string"},
            "category": {"type": "string", "enum": CATEGORIES},
            "importance": {"type": "integer", "enum": [1, 2, 3, 4, 5]},
        },
        "required": ["id", "summary", "category", "importance"],
        "additionalProperties": False,
    }
    schema = {
        "type": "object",
        "properties": {"results": {"type": "array", "items": item}},
        "required": ["results"],
        "additionalProperties": False,
    }
    return {"type": "json_schema",
            "json_schema": {"name": "entry_results", "strict": True, "schema": schema}}


def response_format_param(response_format: ResponseFormat) -> dict[str, Any] | None:
    if response_format == "json_schema":
        return results_schema()
    if response_format == "json_object":
        return {"type": "json_object"}
    return None


def estimate_tokens(messages: Sequence[Mapping[str, str]]) -> int:
    """The chars/4 heuristic, plus a few tokens of chat template per message."""
    return sum(len(m["content"]) for m in messages) // 4 + 4 * len(messages)


# --- the reply --------------------------------------------------------------------------


def _usable(value: Any) -> list[Any] | None:
    """The result list inside a decoded value: a list of objects, or an object wrapping one."""
    if isinstance(value, list):
        return value if any(isinstance(v, dict) for v in value) or not value else None
    if isinstance(value, dict):
        for inner in value.values():
            if isinstance(inner, list) and any(isinstance(v, dict) for v in inner):
                return inner
        if "id" in value:  # a lone result, as JSON mode can give for one entry
            return [value]
    return None


def _strip(text: str) -> str:
    return _FENCE.sub("", _THINK.sub("", text)).strip()


def parse_reply(text: str) -> list[Any]:
    """The list of result objects in a model's reply; raises ValueError when there is none.

    Tolerates ```json fences, <think> blocks, prose around the JSON and an object
    wrapping the array (``{"results": [...]}``).
    """
    text = _strip(text)
    decoder = json.JSONDecoder()
    starts = [i for i, ch in enumerate(text) if ch in "[{"][:500]
    for start in starts:
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        found = _usable(value)
        if found is not None:
            return found
    raise ValueError(f"no JSON array of results in the reply: {text[:120]!r}")


def _walk_objects(text: str, start: int) -> list[Any]:
    decoder = json.JSONDecoder()
    found: list[Any] = []
    pos = start + 1
    while pos < len(text):
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] != "{":
            break
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            break  # the object the reply was cut in
        found.append(value)
    return found


def salvage_results(text: str) -> list[Any]:
    """The complete objects of a reply cut off mid-array (``finish_reason: "length"``)."""
    text = _strip(text)
    best: list[Any] = []
    for start in [i for i, ch in enumerate(text) if ch == "["][:20]:
        found = _walk_objects(text, start)
        if len(found) > len(best):
            best = found
    if best:
        return best
    try:
        return parse_reply(text)
    except ValueError:
        return []


def _importance(value: Any) -> Any:
    if isinstance(value, bool):
        return value  # refused by the int check below
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        return min(5, max(1, value))  # a 0 or a 6 is a scale slip, not a garbled answer
    return value


class EntryResult(BaseModel):
    """One entry's answer, as stored: what a model's reply object must hold."""

    model_config = ConfigDict(extra="ignore")

    summary: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
    category: Annotated[str, StringConstraints(strip_whitespace=True, to_lower=True,
                                               min_length=1)]
    importance: Annotated[int, BeforeValidator(_importance)]


def validate_result(item: Mapping[str, Any]) -> dict[str, Any] | str:
    """The clean result of one reply object, or why it is unusable."""
    try:
        return EntryResult.model_validate(item, strict=False).model_dump()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "result"
        return f"'{where}': {first['msg']} (got {first.get('input')!r:.60})"


def _item_id(item: Any) -> str | None:
    raw_id = item.get("id") if isinstance(item, dict) else None
    # Models echo numeric-looking ids as numbers; a bool is never an id.
    valid = isinstance(raw_id, str | int) and not isinstance(raw_id, bool)
    return str(raw_id) if valid else None


def map_results(entry_ids: Sequence[str], items: Sequence[Any]) -> BatchOutcome:
    """Match reply objects to the batch by id; omitted or garbled entries go to ``failed``."""
    wanted = set(entry_ids)
    good: dict[str, Any] = {}
    errors: dict[str, str] = {}
    unknown = 0
    for item in items:
        item_id = _item_id(item)
        if item_id is None or item_id not in wanted:
            unknown += 1
            continue
        checked = validate_result(item)
        if isinstance(checked, str):
            errors.setdefault(item_id, f"garbled result: {checked}")
        else:
            good.setdefault(item_id, checked)
    failed = {i: errors.get(i, "omitted by the model") for i in entry_ids if i not in good}
    if unknown:
        log.warning("llm.reply_items_ignored", count=unknown, reason="no id or an unknown id")
    return BatchOutcome(results={i: good[i] for i in entry_ids if i in good}, failed=failed)
