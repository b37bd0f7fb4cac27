"""Contact lists in and out of CSV: `jisr contacts import` and `jisr contacts export`.

Import reads a UTF-8 CSV file (with or without a byte-order mark) with a header line,
validates every row, and imports the good ones in batches, one transaction per batch; a
bad row is reported as ``<file>:<line>: <column>: <problem>`` and skipped. The file is
streamed: memory does not grow with its length (except for the list of rejections, and,
in a dry run, the set of addresses already seen).

Phone numbers and chat ids are never written to logs or quoted in a rejection: a value
that might be one is reported as "the value (not shown)".
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import itertools
import logging
import re
import time
import zoneinfo
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Optional, TextIO, Union

import yaml

from jisr.paths import CONTENT_DIR, REPLY_LANGUAGES, reply_language_of
from jisr.store.contacts import IMPORTED, OPT_IN_REFUSED, SUPPRESSED, UPDATED, ContactStore, ImportedContact
from jisr.topics import SUBSCRIPTION_TOPICS, parse_topics

logger = logging.getLogger(__name__)

IMPORT_COLUMNS = ("channel", "address", "language", "country", "region", "role", "child_level", "timezone", "consent")
REQUIRED_COLUMNS = ("channel", "address", "consent")
# "topics" (subscription topics, "exams;orientation": jisr/topics.py) is imported and exported.
TOPICS_COLUMN = "topics"
EXPORT_COLUMNS = IMPORT_COLUMNS + ("consent_changed_at", TOPICS_COLUMN)
# An export can be imported again: consent_changed_at is accepted, and ignored (the import
# records its own time for the consent changes it makes); its topics are subscribed again,
# except those the family itself stopped (ContactStore.subscribe_topics).
ACCEPTED_COLUMNS = frozenset(EXPORT_COLUMNS)

CHANNELS = ("whatsapp", "telegram", "messenger")
ROLES = ("parent", "student")
CHILD_LEVELS = ("preschool", "primary", "lower_secondary", "upper_secondary", "higher")
CONSENT_WORDS: dict[str, Optional[str]] = {
    "yes": "opted_in",
    "oui": "opted_in",
    "opted_in": "opted_in",
    "no": "opted_out",
    "non": "opted_out",
    "opted_out": "opted_out",
    # What an export says of a contact who never answered: re-importing it changes nothing.
    "unknown": None,
}
# Morocco is where the families come from, never their host country (as in the gazetteer).
ORIGIN_COUNTRY = "MA"
# Codes CLDR knows that are not countries: groupings, pseudo-locales, "unknown".
_NOT_COUNTRIES = frozenset({"EU", "EZ", "UN", "QO", "XA", "XB", "ZZ"})

# Rows per transaction: fewer, larger commits are faster (100,000 rows: 11 s with 500, 8 s with
# 2,000 on SQLite), while the gateway's writes wait at most for one batch.
BATCH_SIZE = 2000

_E164 = re.compile(r"\+[1-9][0-9]{7,14}")
# Telegram: private chats are positive, groups negative (an export may carry either).
_TELEGRAM_ID = re.compile(r"-?[1-9][0-9]{0,19}")
_PSID = re.compile(r"[1-9][0-9]{0,31}")
# What spreadsheets and people put inside phone numbers: spaces (also non-breaking), dashes, dots, brackets.
_PHONE_SEPARATORS = re.compile(r"[\s\u00a0\u202f().-]")


class CsvFileError(Exception):
    """The file cannot be imported at all (unreadable, not CSV, bad header): nothing was imported."""


@dataclass(frozen=True)
class Rejection:
    """Why one row was not imported; ``column`` is "row" for a problem with the whole row."""

    line: int
    column: str
    problem: str

    def message(self, file: str) -> str:
        return f"{file}:{self.line}: {self.column}: {self.problem}"


@dataclass
class ImportReport:
    """What an import did (or, in a dry run, would do)."""

    file: str
    dry_run: bool = False
    rows: int = 0
    imported: int = 0
    updated: int = 0
    rejected: int = 0
    rejections: list[Rejection] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return 1 if self.rejected else 0

    def messages(self) -> list[str]:
        return [r.message(self.file) for r in self.rejections]

    def summary(self) -> str:
        verbs = ("would import", "would update") if self.dry_run else ("imported", "updated")
        text = f"{self.file}: {verbs[0]} {self.imported}, {verbs[1]} {self.updated}, rejected {self.rejected} ({self.rows} rows in {self.seconds:.1f} s)"
        return text + (" — dry run, nothing written" if self.dry_run else "")

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "dry_run": self.dry_run,
            "rows": self.rows,
            "imported": self.imported,
            "updated": self.updated,
            "rejected": self.rejected,
            "seconds": round(self.seconds, 3),
            "rejections": [
                {"line": r.line, "column": r.column, "problem": r.problem, "message": r.message(self.file)} for r in self.rejections
            ],
        }


# -- reference values -------------------------------------------------------------------


@lru_cache(maxsize=1)
def country_codes() -> frozenset[str]:
    """ISO 3166 alpha-2 codes, from Babel's copy of CLDR (a project dependency)."""
    from babel import Locale

    return frozenset(code for code in Locale.parse("en").territories if len(code) == 2 and code.isalpha()) - _NOT_COUNTRIES


@lru_cache(maxsize=1)
def _time_zones() -> dict[str, str]:
    """IANA names by their lower-case form, so "europe/paris" is read as "Europe/Paris"."""
    return {name.lower(): name for name in zoneinfo.available_timezones()}


@lru_cache(maxsize=1)
def _regions() -> dict[str, str]:
    """The regions Jisr knows (those whose school calendars differ), by lower-case key."""
    data = yaml.safe_load((CONTENT_DIR / "gazetteer.yml").read_text(encoding="utf-8")) or {}
    return {str(key).lower(): str(key) for key in (data.get("regions") or {})}


def _shown(value: str) -> str:
    """A cell's value, quoted in a message unless it might be a phone number or a chat id."""
    if sum(ch.isdigit() for ch in value) >= 5 or len(value) > 40:
        return "the value (not shown)"
    return repr(value)


# -- one row ----------------------------------------------------------------------------


def normalize_address(channel: str, value: str) -> tuple[Optional[str], Optional[str]]:
    """``(address, None)`` as the gateway writes it ("whatsapp:+33612345678"), or ``(None, problem)``.

    The channel prefix is optional in the file, but must be the row's channel if present.
    """
    prefix, sep, rest = value.partition(":")
    if sep:
        if prefix.strip().lower() != channel:
            return None, f"starts with another channel's prefix (the row's channel is {channel})"
        value = rest.strip()
    if channel == "whatsapp":
        number = _PHONE_SEPARATORS.sub("", value)
        if not _E164.fullmatch(number):
            return None, "not a phone number in E.164 form (+, country code, 8 to 15 digits in all)"
        return f"whatsapp:{number}", None
    if channel == "telegram":
        if not _TELEGRAM_ID.fullmatch(value):
            return None, "not a Telegram chat id (a number)"
        return f"telegram:{value}", None
    if not _PSID.fullmatch(value):
        return None, "not a Messenger page-scoped id (a number)"
    return f"messenger:{value}", None


def _choice(column: str, value: str, allowed: tuple[str, ...], problems: list[tuple[str, str]]) -> Optional[str]:
    if value.lower() in allowed:
        return value.lower()
    problems.append((column, f"{_shown(value)} is not one of {', '.join(allowed)}"))
    return None


def validate_row(values: dict[str, str], line: int) -> tuple[Optional[ImportedContact], list[Rejection]]:
    """A row's cells by column name → the contact to import, or the row's problems (one per column)."""
    cell = {name: (values.get(name) or "").strip() for name in IMPORT_COLUMNS}
    problems: list[tuple[str, str]] = []

    for required in REQUIRED_COLUMNS:
        if not cell[required]:
            problems.append((required, "missing"))

    channel = address = None
    if cell["channel"]:
        channel = _choice("channel", cell["channel"], CHANNELS, problems)
    if channel and cell["address"]:
        address, problem = normalize_address(channel, cell["address"])
        if problem:
            problems.append(("address", problem))

    language = None
    if cell["language"]:
        form = cell["language"].lower()
        if form == "ary" or form in REPLY_LANGUAGES:
            language = reply_language_of(form)
        else:
            problems.append(("language", f"{_shown(cell['language'])} is not one of {', '.join(REPLY_LANGUAGES)} (or ary, read as ar)"))

    country = None
    if cell["country"]:
        code = cell["country"].upper()
        if code == ORIGIN_COUNTRY:
            problems.append(("country", "MA is the families' country of origin; give the country they live in"))
        elif code in country_codes():
            country = code
        else:
            problems.append(("country", f"{_shown(cell['country'])} is not an ISO 3166 alpha-2 country code"))

    region = None
    if cell["region"]:
        region = _regions().get(cell["region"].lower())
        if region is None:
            problems.append(("region", f"{_shown(cell['region'])} is not a region Jisr knows (see regions in content/gazetteer.yml)"))
        elif country and not region.startswith(country + "-"):
            problems.append(("region", f"{region} is not in {country}"))
            region = None
        elif not cell["country"]:
            country = region.split("-", 1)[0]  # a region names its country, as in conversations

    role = _choice("role", cell["role"], ROLES, problems) if cell["role"] else None
    school_level = _choice("child_level", cell["child_level"], CHILD_LEVELS, problems) if cell["child_level"] else None

    timezone = None
    if cell["timezone"]:
        timezone = _time_zones().get(cell["timezone"].lower())
        if timezone is None:
            problems.append(("timezone", f"{_shown(cell['timezone'])} is not an IANA time zone such as Europe/Paris"))

    topics: tuple[str, ...] = ()
    if (values.get(TOPICS_COLUMN) or "").strip():
        topics, unknown_topics = parse_topics(values[TOPICS_COLUMN])
        if unknown_topics:
            problems.append((TOPICS_COLUMN, f"{_shown(', '.join(unknown_topics))}: not a topic; topics are {', '.join(SUBSCRIPTION_TOPICS)} (separated by ;)"))

    consent = None
    if cell["consent"]:
        word = cell["consent"].lower()
        if word in CONSENT_WORDS:
            consent = CONSENT_WORDS[word]
        else:
            problems.append(("consent", f"{_shown(cell['consent'])} is not one of {', '.join(CONSENT_WORDS)}"))

    if problems:
        # Report in the file's column order, whatever order the checks ran in.
        problems.sort(key=lambda p: IMPORT_COLUMNS.index(p[0]) if p[0] in IMPORT_COLUMNS else len(IMPORT_COLUMNS))
        return None, [Rejection(line, column, problem) for column, problem in problems]
    assert channel and address
    return (
        ImportedContact(
            line=line,
            address=address,
            channel=channel,
            consent=consent,
            language=language,
            country=country,
            region=region,
            role=role,
            school_level=school_level,
            timezone=timezone,
            topics=topics,
        ),
        [],
    )


# -- reading the file -------------------------------------------------------------------


class _Lines:
    """The file's lines, decoded one by one, so one badly encoded line costs one row, not the file."""

    def __init__(self, binary: BinaryIO) -> None:
        self.binary = binary
        self.number = 0
        self.bad: set[int] = set()

    def __iter__(self) -> "_Lines":
        return self

    def __next__(self) -> str:
        raw = self.binary.readline()
        if not raw:
            raise StopIteration
        self.number += 1
        if self.number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.bad.add(self.number)
            return raw.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class _Record:
    line: int
    values: Optional[dict[str, str]]        # None when the row is rejected as a whole
    rejection: Optional[Rejection] = None


def _delimiter(header_line: str) -> str:
    # Spreadsheets in French, Spanish, Italian or German locales save CSV with ";".
    for candidate in (",", ";", "\t"):
        if candidate in header_line:
            return candidate
    return ","


def _records(path: Union[str, Path], name: str) -> Iterator[_Record]:
    """The file's data rows as dicts by column name; raises CsvFileError before the first row
    if the file cannot be read or its header is wrong."""
    try:
        binary = open(path, "rb")
    except OSError as error:
        raise CsvFileError(f"{name}: cannot be read: {error.strerror or error}") from error
    with binary:
        lines = _Lines(binary)
        try:
            first = next(lines)
        except StopIteration:
            raise CsvFileError(f"{name}: empty file (a header line is expected: {','.join(IMPORT_COLUMNS)})") from None
        except OSError as error:
            raise CsvFileError(f"{name}: cannot be read: {error.strerror or error}") from error
        if 1 in lines.bad:
            raise CsvFileError(f"{name}:1: the header is not UTF-8 text (save the file as CSV UTF-8)")
        reader = csv.reader(itertools.chain([first], lines), delimiter=_delimiter(first))
        try:
            header = [column.strip().lower() for column in next(reader)]
        except csv.Error as error:
            raise CsvFileError(f"{name}:1: the header is not valid CSV ({error})") from error
        _check_header(header, name)

        while True:
            start = reader.line_num + 1
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                yield _Record(reader.line_num, None, Rejection(reader.line_num, "row", f"not valid CSV ({error})"))
                continue
            if not any(f.strip() for f in fields):
                continue  # blank lines are not rows
            if any(number in lines.bad for number in range(start, reader.line_num + 1)):
                yield _Record(start, None, Rejection(start, "row", "not UTF-8 text (save the file as CSV UTF-8)"))
                continue
            if len(fields) > len(header) and any(f.strip() for f in fields[len(header) :]):
                yield _Record(start, None, Rejection(start, "row", f"{len(fields)} fields, but the header has {len(header)}"))
                continue
            # Missing trailing cells are empty: some tools drop them.
            yield _Record(start, {name: value for name, value in zip(header, fields) if name})


def _check_header(header: list[str], name: str) -> None:
    # Empty header cells (a trailing ";" from a spreadsheet) name no column: they are ignored.
    named = [column for column in header if column]
    unknown = sorted(set(named) - ACCEPTED_COLUMNS)
    if unknown:
        raise CsvFileError(f"{name}:1: unknown column(s): {', '.join(unknown)} (known: {', '.join(EXPORT_COLUMNS)})")
    repeated = sorted({column for column in named if named.count(column) > 1})
    if repeated:
        raise CsvFileError(f"{name}:1: column(s) given twice: {', '.join(repeated)}")
    missing = [column for column in REQUIRED_COLUMNS if column not in named]
    if missing:
        raise CsvFileError(f"{name}:1: missing column(s): {', '.join(missing)}")


def _first_opt_in(path: Union[str, Path], name: str) -> Optional[int]:
    """The line of the first row that opts in, reading the file once without keeping it."""
    for record in _records(path, name):
        if record.values and CONSENT_WORDS.get((record.values.get("consent") or "").strip().lower()) == "opted_in":
            return record.line
    return None


# -- import and export ------------------------------------------------------------------


def import_csv(
    store: ContactStore,
    path: Union[str, Path],
    source_basis: Optional[str],
    *,
    dry_run: bool = False,
    batch_size: int = BATCH_SIZE,
    name: Optional[str] = None,
    progress: Optional[Callable[[str, int], Any]] = None,
) -> ImportReport:
    """Import a contact list; see the module's docstring. ``name`` is the file as the operator wrote it.

    ``source_basis`` (how and where the people on the list agreed) is recorded with every
    consent change; it is required as soon as one row opts in, and then checked before
    anything is written. Raises CsvFileError if the file cannot be imported at all.
    """
    name = name or str(path)
    basis = (source_basis or "").strip() or None
    started = time.monotonic()
    report = ImportReport(file=name, dry_run=dry_run)
    if basis is None:
        # Found out before writing anything: a half-imported list is worse than none.
        line = _first_opt_in(path, name)
        if line is not None:
            raise CsvFileError(f"{name}:{line}: consent: an opt-in needs --source-basis (how and where these people agreed)")

    seen: Optional[dict[str, str]] = {} if dry_run else None
    batch: list[ImportedContact] = []
    in_batch: set[str] = set()

    def flush() -> None:
        outcomes = store.import_contacts(batch, basis, dry_run=dry_run, dry_run_seen=seen)
        for row, outcome in zip(batch, outcomes):
            if outcome == IMPORTED:
                report.imported += 1
            elif outcome == UPDATED:
                report.updated += 1
            elif outcome == OPT_IN_REFUSED:
                report.rejected += 1
                report.rejections.append(
                    Rejection(row.line, "consent", "this contact opted out; a list cannot opt them back in (only they can, by subscribing again)")
                )
            elif outcome == SUPPRESSED:
                report.rejected += 1
                report.rejections.append(
                    Rejection(row.line, "address", "this person asked Jisr to forget them; a list cannot add them again (only they can, by writing)")
                )
        batch.clear()
        in_batch.clear()

    bar = None
    if progress is not None:
        try:
            with open(path, "rb") as counted:
                bar = progress("rows", max(0, sum(1 for _ in counted) - 1))  # lines less the header (a quoted line break counts twice)
        except OSError:
            bar = None  # unreadable: _records says so, as a CsvFileError
    for record in _records(path, name):
        report.rows += 1
        if bar is not None:
            bar.advance()
        if record.values is None:
            assert record.rejection is not None
            report.rejected += 1
            report.rejections.append(record.rejection)
            continue
        contact, rejections = validate_row(record.values, record.line)
        if contact is None:
            report.rejected += 1
            report.rejections.extend(rejections)
            continue
        if contact.address in in_batch:
            flush()  # the repeated row must see the first one's result, as if imported one by one
        batch.append(contact)
        in_batch.add(contact.address)
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    if bar is not None:
        bar.finish()

    report.rejections.sort(key=lambda r: r.line)  # refusals are found when a batch is written
    report.seconds = time.monotonic() - started
    logger.info(
        "contact list %s: %d rows, %d imported, %d updated, %d rejected%s",
        name, report.rows, report.imported, report.updated, report.rejected, " (dry run)" if dry_run else "",
    )
    return report


def _timestamp(value: Optional[dt.datetime]) -> str:
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if value else ""


def export_csv(store: ContactStore, out: TextIO) -> int:
    """Write every contact as CSV with the import's columns (+ consent_changed_at, topics); returns the count."""
    writer = csv.writer(out)
    writer.writerow(EXPORT_COLUMNS)
    count = 0
    for row in store.export_rows():
        writer.writerow(
            [
                row["channel"],
                row["address"].split(":", 1)[1] if ":" in row["address"] else row["address"],
                row["language"] or "",
                row["country"] or "",
                row["region"] or "",
                row["role"] or "",
                row["school_level"] or "",
                row["timezone"] or "",
                row["consent"],
                _timestamp(row["consent_changed_at"]),
                ";".join(row["topics"]),
            ]
        )
        count += 1
    return count
