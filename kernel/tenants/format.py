"""The export format (docs/export.md): one JSON object per line, a header, tenants, records, a trailer.

::

    {"format": "bastion-export", "version": 1, "bastion": "0.2.0", "created": "2026-12-07T12:00:00Z",
     "models": {"Todo": {"fields": ["done", "text"], "history": 100, "keep_removed": 100}, ...},
     "tenants": ["alpha.example.com", ...]}
    {"tenant": "alpha.example.com"}
    {"model": "Todo", "id": "…", "vsn": 3, "data": {…}, "history": [{"vsn": 1, "at": …, "by": "alice", "data": {…}}, …],
     "removal": null}
    …
    {"end": {"tenants": 1, "records": 2, "history": 4}, "sha256": "<hex digest of every byte before this line>"}

(each object on one line). :class:`ExportWriter` writes it, streaming;
:func:`check_export` reads a whole file and refuses it, with one
:class:`ExportError` naming the line, unless every line is what the format
says and the trailer's counts and checksum match; :func:`tenant_records`
then reads one tenant's records back from where :func:`check_export` found
them. Memory stays bounded by one line, except for the ids of the tenant
being read (a duplicate id is refused).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from kernel.core.driver import RecordVersion, TenantRecord, check_tenant_record, is_record_id

try:  # orjson reads a line several times faster, and refuses NaN and Infinity as the format does
    import orjson as _orjson
except ImportError:  # pragma: no cover - orjson is a dependency; the stdlib reads alike
    _orjson = None  # type: ignore[assignment]
from kernel.core.hosts import parse_domain
from kernel.core.jsonio import dumps_text

#: What the header's ``format`` says.
FORMAT = "bastion-export"

#: The version of the format this Bastion writes and reads.
VERSION = 1


class ExportError(ValueError):
    """A file that is not a complete, intact export: the message names the line (``line 12: ...``)."""

    def __init__(self, line: int, message: str):
        self.line = line
        super().__init__(f"line {line}: {message}")


@dataclass
class Section:
    """Where one tenant's lines are in a checked file, and what they hold."""

    tenant: str
    line: int  # the tenant line's number
    start: int  # the byte offset of its first record line
    end: int = 0  # the byte offset just past its last record line
    records: int = 0
    history: int = 0
    models: dict[str, int] = field(default_factory=dict)
    sha256: Any = field(default_factory=hashlib.sha256)  # of its record lines: read again, they must not differ


@dataclass
class CheckedExport:
    """What :func:`check_export` found in a file that passed: its header and each tenant's section."""

    header: dict[str, Any]
    sections: list[Section]

    @property
    def records(self) -> int:
        return sum(section.records for section in self.sections)

    @property
    def history(self) -> int:
        return sum(section.history for section in self.sections)


def model_description(info: Any) -> dict[str, Any]:
    """A model as the header describes it: its fields (None: it declares none) and its history bounds."""
    if info is None:
        return {"fields": None}
    fields = None if info.fields is None else sorted(info.fields)
    return {"fields": fields, "history": info.history, "keep_removed": info.keep_removed}


def record_line(record: TenantRecord) -> dict[str, Any]:
    """A record as its line holds it."""
    return {"model": record.model, "id": record.id, "vsn": record.vsn, "data": record.data,
            "history": [entry.to_dict() for entry in record.history], "removal": record.removal}


class ExportWriter:
    """Writes an export to a binary stream, line by line, counting and hashing as it goes.

    ``ExportWriter(out, models, tenants, version)``, then :meth:`tenant` and
    :meth:`record` in order, then :meth:`finish` for the trailer.
    """

    def __init__(self, out: IO[bytes], models: Mapping[str, dict[str, Any]], tenants: list[str], version: str):
        self._out = out
        self._digest = hashlib.sha256()
        self.tenants = self.records = self.history = 0
        #: Record lines per tenant (live records and ids holding only history).
        self.per_tenant: dict[str, int] = {}
        self._current = ""
        self._write({"format": FORMAT, "version": VERSION, "bastion": version,
                     "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "models": dict(models), "tenants": list(tenants)})

    def _write(self, value: dict[str, Any]) -> None:
        line = (dumps_text(value) + "\n").encode("utf-8")
        self._digest.update(line)
        self._out.write(line)

    def tenant(self, name: str) -> None:
        """Start a tenant's section."""
        self.tenants += 1
        self._current = name
        self.per_tenant[name] = 0
        self._write({"tenant": name})

    def record(self, record: TenantRecord) -> None:
        """Write one record of the current tenant."""
        self.records += 1
        self.per_tenant[self._current] += 1
        self.history += len(record.history)
        self._write(record_line(record))

    def finish(self) -> None:
        """Write the trailer: the counts, and the checksum of every line before it."""
        end = {"tenants": self.tenants, "records": self.records, "history": self.history}
        trailer = dumps_text({"end": end, "sha256": self._digest.hexdigest()}) + "\n"
        self._out.write(trailer.encode("utf-8"))


# -- reading ------------------------------------------------------------------------------------------------------


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_line(raw: bytes, number: int) -> dict[str, Any]:
    """One line as a JSON object, or ExportError."""
    if not raw.endswith(b"\n"):
        raise ExportError(number, "the file ends in the middle of a line (truncated)")
    if _orjson is not None:
        try:
            value = _orjson.loads(raw)
        except _orjson.JSONDecodeError:
            pass  # read again below, for the message
        else:
            if isinstance(value, dict):
                return value
    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=_constant)
    except UnicodeDecodeError:
        raise ExportError(number, "not UTF-8 text") from None
    except ValueError as exc:
        raise ExportError(number, f"not a JSON object ({str(exc).partition(':')[0]})") from None
    if not isinstance(value, dict):
        raise ExportError(number, f"a JSON {type(value).__name__}, not an object")
    return value


def _header(raw: bytes) -> dict[str, Any]:
    """Check the first line."""
    if not raw:
        raise ExportError(1, "the file is empty: not a Bastion export")
    header = parse_line(raw, 1)
    if header.get("format") != FORMAT:
        raise ExportError(1, f"not a Bastion export (no \"format\": \"{FORMAT}\" header)")
    if header.get("version") != VERSION:
        raise ExportError(1, f"format version {header.get('version')!r} is not one this Bastion reads ({VERSION}): "
                             "export again with this version, or import with the version that wrote it")
    models, tenants = header.get("models"), header.get("tenants")
    if not isinstance(models, dict) or not all(isinstance(name, str) and isinstance(about, dict)
                                               for name, about in models.items()):
        raise ExportError(1, "the header's \"models\" is not an object of model descriptions")
    if not isinstance(tenants, list) or not all(isinstance(name, str) for name in tenants):
        raise ExportError(1, "the header's \"tenants\" is not a list of names")
    return header


def record_of(line: dict[str, Any], number: int, check: bool = True) -> TenantRecord:
    """A record line as a :class:`TenantRecord`, or ExportError naming what is wrong.

    ``check``: also apply :func:`check_tenant_record` (the second pass of an
    import leaves it to the driver, which applies it anyway).
    """
    unknown = set(line) - {"model", "id", "vsn", "data", "history", "removal"}
    if unknown:
        raise ExportError(number, f"unknown keys {', '.join(sorted(unknown))} in a record line")
    history = line.get("history", [])
    if not isinstance(history, list) or not all(isinstance(entry, dict) and set(entry) == {"vsn", "at", "by", "data"}
                                                for entry in history):
        raise ExportError(number, "\"history\" is not a list of {vsn, at, by, data} entries")
    if not isinstance(line.get("model"), str) or not is_record_id(line.get("id")):
        raise ExportError(number, "a record line names its \"model\" and a valid \"id\"")
    try:
        record = TenantRecord(line["model"], line["id"], line.get("vsn"), line.get("data"),  # type: ignore[arg-type]
                              tuple(RecordVersion(**entry) for entry in history), line.get("removal"))
        if check:
            check_tenant_record(record)
    except TypeError as exc:
        raise ExportError(number, str(exc)) from None
    return record


def check_export(stream: IO[bytes], declared: Mapping[str, Any]) -> CheckedExport:
    """Read a whole export and return its sections; raise ExportError at the first line that is wrong.

    ``declared`` maps the model names the target's plugins declare (a record
    of any other model is refused). Nothing is written: this is the pass that
    makes an import all or nothing against a malformed, truncated or tampered
    file.
    """
    digest = hashlib.sha256()
    raw = stream.readline()
    header = _header(raw)
    digest.update(raw)
    listed = header["tenants"]
    sections: list[Section] = []
    ids: dict[tuple[str, str], int] = {}
    number, offset = 1, len(raw)
    while True:
        raw = stream.readline()
        number += 1
        if not raw:
            raise ExportError(number, "the file ends before its trailer (truncated)")
        line = parse_line(raw, number)
        if "end" in line:
            _check_trailer(line, number, digest.hexdigest(), sections, listed)
            if stream.readline():
                raise ExportError(number + 1, "a line after the trailer")
            return CheckedExport(header, sections)
        digest.update(raw)
        if "tenant" in line:
            section = _start_tenant(line, number, offset + len(raw), sections, listed)
            sections.append(section)
            ids.clear()
        else:
            _check_record(line, number, header["models"], declared, sections, ids)
            sections[-1].end = offset + len(raw)
            sections[-1].sha256.update(raw)
        offset += len(raw)


def _start_tenant(line: dict[str, Any], number: int, start: int, sections: list[Section],
                  listed: list[str]) -> Section:
    name = line.get("tenant")
    if set(line) != {"tenant"} or not isinstance(name, str):
        raise ExportError(number, "a tenant line is {\"tenant\": name}")
    try:
        normal = parse_domain(name)
    except Exception:  # noqa: BLE001 - InvalidHost, whatever the reason
        raise ExportError(number, f"{name!r} is not a tenant's name (a host name)") from None
    if normal != name:
        raise ExportError(number, f"tenant {name!r} is not written as Bastion writes it ({normal!r})")
    if name not in listed:
        raise ExportError(number, f"tenant {name} is not in the header's list of tenants")
    if any(section.tenant == name for section in sections):
        raise ExportError(number, f"tenant {name} a second time")
    return Section(name, number, start, start)


def _check_record(line: dict[str, Any], number: int, models: Mapping[str, Any], declared: Mapping[str, Any],
                  sections: list[Section], ids: dict[tuple[str, str], int]) -> None:
    if not sections:
        raise ExportError(number, "a record before the first tenant line")
    record = record_of(line, number)
    if record.model not in models:
        raise ExportError(number, f"a record of model {record.model!r}, which the header does not declare")
    if record.model not in declared:
        raise ExportError(number, f"a record of model {record.model!r}, which no installed plugin declares")
    first = ids.get((record.model, record.id))
    if first is not None:
        raise ExportError(number, f"a second {record.model} {record.id!r} in tenant {sections[-1].tenant} "
                                  f"(the first is on line {first})")
    ids[(record.model, record.id)] = number
    section = sections[-1]
    section.records += 1
    section.history += len(record.history)
    section.models[record.model] = section.models.get(record.model, 0) + 1


def _check_trailer(line: dict[str, Any], number: int, digest: str, sections: list[Section],
                   listed: list[str]) -> None:
    end = line.get("end")
    if set(line) != {"end", "sha256"} or not isinstance(end, dict):
        raise ExportError(number, "the trailer is {\"end\": {tenants, records, history}, \"sha256\": ...}")
    if line["sha256"] != digest:
        raise ExportError(number, "checksum mismatch: the file was changed or damaged after it was written")
    found = {"tenants": len(sections), "records": sum(s.records for s in sections),
             "history": sum(s.history for s in sections)}
    for name, count in found.items():
        if end.get(name) != count:
            raise ExportError(number, f"the trailer counts {end.get(name)!r} {name}, the file holds {count}")
    missing = [name for name in listed if name not in {s.tenant for s in sections}]
    if missing:
        raise ExportError(number, f"the header lists tenant {missing[0]}, whose section is missing")


def tenant_records(stream: IO[bytes], section: Section) -> Iterator[TenantRecord]:
    """Read back the records of one section of a checked file (ExportError if the file changed since)."""
    stream.seek(section.start)
    number = section.line
    digest = hashlib.sha256()
    while stream.tell() < section.end:
        number += 1
        raw = stream.readline()
        digest.update(raw)
        yield record_of(parse_line(raw, number), number, check=False)
    if digest.digest() != section.sha256.digest():
        raise ExportError(number, f"tenant {section.tenant}'s lines changed while they were imported")
