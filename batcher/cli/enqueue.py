"""``batcher enqueue``: one entry from the command line, or many from a JSON-lines file."""

from __future__ import annotations

import uuid
from typing import IO, Any

import click
import orjson

from batcher.cli.common import (
    EXIT_BUFFER_FULL,
    EXIT_REDIS_FULL,
    CommandFailed,
    queue_options,
    settings,
)
from batcher.config import BatchProcessingConfig
from batcher.connection import ping_or_raise
from batcher.errors import BufferFullError, InvalidEntryError, RedisFullError
from batcher.models import EnqueueResult
from batcher.producer import BatchStateManager, build_envelope

PRIORITIES = {"0": 0, "1": 1, "2": 2, "normal": 0, "high": 1, "urgent": 2}
LINE_FIELDS = frozenset({"id", "source", "priority", "payload", "batch_key"})
DEFAULT_SOURCE = "cli"


def parse_priority(text: str | None) -> int | None:
    if text is None:
        return None
    value = PRIORITIES.get(text.strip().lower())
    if value is None:
        raise InvalidEntryError(f"--priority {text!r} must be 0 (normal), 1 (high) or 2 (urgent)")
    return value


def _one_entry(text: str, entry_id: str | None, source: str | None,
               priority: int | None, batch_key: str | None) -> dict[str, Any]:
    try:
        payload = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidEntryError(f"JSON payload is not valid JSON: {exc}") from None
    return {"id": str(uuid.uuid4()) if entry_id is None else entry_id,
            "source": source or DEFAULT_SOURCE, "priority": 0 if priority is None else priority,
            "payload": payload, "batch_key": batch_key}


def read_lines(stream: IO[bytes], name: str, source: str | None,
               priority: int | None, batch_key: str | None = None,
               ) -> list[tuple[int, dict[str, Any]]]:
    """(line number, entry) for each non-blank line; a bad line raises naming its number."""
    entries: list[tuple[int, dict[str, Any]]] = []
    for number, raw in enumerate(stream, start=1):
        if not raw.strip():
            continue
        try:
            item = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidEntryError(f"{name} line {number}: not valid JSON: {exc}") from None
        if not isinstance(item, dict):
            raise InvalidEntryError(f"{name} line {number}: must be a JSON object with id, "
                                    "source, priority and payload")
        unknown = sorted(set(item) - LINE_FIELDS)
        if unknown:
            raise InvalidEntryError(f"{name} line {number}: unknown field(s) {unknown}; "
                                    f"a line holds {sorted(LINE_FIELDS)}")
        item.setdefault("source", source or DEFAULT_SOURCE)
        item.setdefault("priority", 0 if priority is None else priority)
        item.setdefault("batch_key", batch_key)
        entries.append((number, item))
    if not entries:
        raise InvalidEntryError(f"{name}: no entries")
    return entries


def validate(entries: list[tuple[int, dict[str, Any]]], name: str | None,
             config: BatchProcessingConfig) -> None:
    """Every entry as the producer will check it, before anything is sent."""
    for index, (number, item) in enumerate(entries):
        try:
            build_envelope(item.get("id"), item.get("source"), item.get("priority"),
                           item.get("payload"), index=index,
                           max_entry_bytes=config.max_entry_bytes,
                           batch_key=item.get("batch_key"))
        except InvalidEntryError as exc:
            where = f"{name} line {number}: " if name is not None else ""
            raise InvalidEntryError(f"{where}{exc}", entry_id=exc.entry_id,
                                    index=index) from None


def _print(result: EnqueueResult, sent_ids: list[str], as_json: bool) -> None:
    if not as_json:
        click.echo(f"accepted={result.accepted} duplicates={result.duplicates} "
                   f"rejected={result.rejected}")
        return
    skipped = set(result.duplicate_ids) | set(result.rejected_ids)
    click.echo(orjson.dumps({
        "accepted": result.accepted, "duplicates": result.duplicates,
        "rejected": result.rejected,
        "accepted_ids": [i for i in sent_ids if i not in skipped],
        "duplicate_ids": result.duplicate_ids, "rejected_ids": result.rejected_ids,
    }).decode())


@click.command("enqueue")
@click.argument("payload", required=False, metavar="JSON")
@click.option("--file", "-f", "file", type=click.File("rb"), default=None,
              help="JSON lines {id, source, priority, payload}; '-' reads stdin")
@click.option("--id", "entry_id", default=None, help="entry id [default: a new UUID]")
@click.option("--source", default=None, help=f"source name [default: {DEFAULT_SOURCE}]")
@click.option("--priority", "-p", default=None, metavar="P",
              help="0/normal, 1/high or 2/urgent [default: 0]")
@click.option("--batch-key", default=None, metavar="KEY",
              help="entries of different keys never share a batch [default: none]")
@click.option("--json", "as_json", is_flag=True, help="print a JSON object with the ids")
@queue_options
def enqueue(payload: str | None, file: IO[bytes] | None, entry_id: str | None,
            source: str | None, priority: str | None, batch_key: str | None, as_json: bool,
            queue: str | None, redis_url: str | None) -> None:
    """Enqueue one entry (JSON object payload) or every line of --file.

    The whole input is validated before anything is sent; a bad entry writes nothing.
    Prints accepted=N duplicates=N rejected=N; exit 3 when the buffer rejected some.
    """
    if (payload is None) == (file is None):
        raise click.UsageError("give either a JSON payload or --file, not both")
    if file is not None and entry_id is not None:
        raise click.UsageError("--id is for a single entry; a --file line carries its own id")
    config = settings(queue, redis_url)
    level = parse_priority(priority)
    if file is not None:
        label = str(getattr(file, "name", "<stdin>"))
        name = "-" if label == "<stdin>" else label
        numbered = read_lines(file, name, source, level, batch_key)
    else:
        name, numbered = None, [(1, _one_entry(str(payload), entry_id, source, level,
                                               batch_key))]
    validate(numbered, name, config)
    entries = [item for _, item in numbered]
    client = config.redis_client()
    ping_or_raise(client)
    manager = BatchStateManager(client, config)
    sent_ids = [str(item["id"]) for item in entries]
    try:
        result = manager.queue_many(entries)
    except BufferFullError as exc:
        _print(exc.result, sent_ids, as_json)
        code = EXIT_REDIS_FULL if isinstance(exc, RedisFullError) else EXIT_BUFFER_FULL
        raise CommandFailed(str(exc), code) from None
    _print(result, sent_ids, as_json)


commands = [enqueue]
