"""`rplat import documents|problems`: records streamed from any source into a dataset, one transaction per unit.

The source is whatever `rplat.imports.readers.open_source` reads: a `.jsonl` / `.jsonl.gz` / `.jsonl.zst` /
`.parquet` file, a directory of shards, `-` (stdin), a named pipe, or a Hugging Face `save_to_disk` directory.
Memory is bounded by a batch (`BATCH` rows), not by the input: records are read, validated, filtered and
written a batch at a time.

- **One transaction per unit.** A file (or a stream) is one unit: its rows, the dataset (on first import) and
  an `import-documents` / `import-problems` job recording the file, its sha256, the field mapping and the
  filters (so imported rows have lineage like derived ones; recorded through the queue, the only writer of
  jobs) commit together or not at all; the first bad record stops the unit with one sentence naming the file
  and line (Parquet: row). A directory of shards is one unit per shard: a killed import, re-run with the same
  command, skips the shards whose sha256 an import job of this dataset already records and goes on with the
  next.
- **Ids.** With an id field, ids must be unique within the dataset; a repeat is reported with its line (and
  where it was first seen), found through the table's unique constraint rather than a set of every id held in
  memory. Without one, a record's id is its content hash (documents: the text; problems: question, solution
  and answer), so `--append` of another file adds the records not already there, and re-importing the same
  file adds nothing; a record whose content repeats an earlier one of the same import is counted as a
  duplicate and skipped.
- **Field mapping.** Every field name may be a dotted path (`meta.pile_set_name`). An optional field named
  explicitly (`FieldMap.strict`) that no record of a unit has is an error, never a column of NULLs.
- **Filters.** `Filters.where` keeps records whose (dotted) field has one of the given values;
  `Filters.max_chars` drops documents longer than that; the summary counts them as `filtered`.
- **The MATH layout** (`FieldMap.layout == "math"`, built by `problem_fields`): the released MATH files (Hendrycks
  MATH's `problem` / `solution` / `type` / `level`, or the TDG release's `question` ("Problem:\\n...") / `answer`
  (the worked solution)). The question loses its "Problem:\\n" line and the solution its "Solution:\\n" line (as
  `rplat import chains` strips them), the gold answer is the last box of the solution (`labelers.chain_answer`,
  the finder `import chains` takes golds with) and, without an id field, the id is the hash of the question, as
  `import chains` makes it: a problem imported either way is one row. A record whose solution has no box is an
  error.
- **Gold answers checked.** Every problem import counts the gold answers it stores that are longer than
  `LONG_GOLD_CHARS` or hold no answer `labelers.gold_answer` can find (worked solutions stored as answers:
  `evaluate` would compare predictions with the whole text); `gold_warning` turns the counts into the line the
  CLI prints on stderr.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, String, Table, select
from sqlalchemy.orm import Session

from rplat.errors import UserError
from rplat.hashing import content_hash
from rplat.imports.readers import Source, Unit, getter, jsonl_records, open_source
from rplat.methods.labelers import chain_answer, gold_answer
from rplat.models import Dataset, Document, Job, Problem
from rplat.progress import Progress
from rplat.prompts import TDG_PROBLEM_PREFIX, TDG_SOLUTION_PREFIX, strip_prefix
from rplat.queue import Queue
from rplat.store import transaction

__all__ = ["BATCH", "LAYOUTS", "LONG_GOLD_CHARS", "FieldMap", "Filters", "gold_warning", "import_file",
           "import_source", "jsonl_records", "parse_where", "problem_fields"]

BATCH = 5000
LAYOUTS = ("fields", "math")  # how `import problems` reads a record: the --X-field mapping, or the MATH layout
LONG_GOLD_CHARS = 300  # a gold answer longer than this is a worked solution, not a final answer (MATH's: 333+)


@dataclass(frozen=True)
class FieldMap:
    """Which input field (a dotted path) feeds which column; `id` None means "the content hash is the id".
    `strict` names optional columns whose field must be found in at least one record of each unit."""

    kind: str
    id: str | None
    required: dict[str, str]
    optional: dict[str, str] = field(default_factory=dict)
    constants: dict[str, str | None] = field(default_factory=dict)
    strict: tuple[str, ...] = ()
    fallbacks: dict[str, str] = field(default_factory=dict)  # column -> field read where its own field is absent
    layout: str = "fields"  # problems: "math" derives the answer from the solution's last box (module docstring)


def problem_fields(*, layout: str = "fields", id_field: str | None = None, question: str | None = None,
                   solution: str | None = None, answer: str | None = None, subject: str | None = None,
                   level: str | None = None, benchmark: str | None = None, split: str | None = None) -> FieldMap:
    """The FieldMap of `rplat import problems`: the field each column is read from, None where not named.

    `fields`: question from `question` (default "question"); solution and answer from their fields (default
    "solution" and "answer", which may be absent); subject and level only where named. `math`: question from
    `problem` (else `question`), solution from `solution` (else `answer`), subject from `type` (else `subject`),
    level from `level`, benchmark `math` unless given; the answer is the solution's last box, so naming an answer
    field is an error."""
    if layout not in LAYOUTS:
        raise UserError(f"--layout {layout!r} is not a problems layout; choose one of {', '.join(LAYOUTS)}.")
    named = {"solution": solution, "answer": answer, "subject": subject, "level": level}
    strict = tuple(column for column, name in named.items() if name)
    constants: dict[str, str | None] = {"benchmark": benchmark, "split": split}
    if layout == "math":
        if answer is not None:
            raise UserError(f"--answer-field {answer} does not go with --layout math, which takes each gold answer "
                            "from the last \\boxed{} of the solution; drop --answer-field, or drop --layout math to "
                            "read the answer from that field.")
        fallbacks = {column: other for column, name, other in (
            ("question", question, "question"), ("solution", solution, "answer"), ("subject", subject, "subject"))
            if name is None}
        constants["benchmark"] = benchmark or "math"
        return FieldMap("problems", id_field, {"question": question or "problem", "solution": solution or "solution"},
                        {"subject": subject or "type", "level": level or "level"}, constants,
                        strict=tuple(c for c in strict if c != "solution"), fallbacks=fallbacks, layout="math")
    optional = {"solution": solution or "solution", "answer": answer or "answer"}
    optional.update({column: name for column, name in named.items() if name and column not in optional})
    return FieldMap("problems", id_field, {"question": question or "question"}, optional, constants, strict=strict)


@dataclass(frozen=True)
class Filters:
    """Records to leave out: `where` keeps a record only if each (dotted) field has one of its values;
    `max_chars` leaves out documents with a longer text."""

    max_chars: int | None = None
    where: tuple[tuple[str, frozenset[str]], ...] = ()

    def params(self) -> dict[str, Any]:
        """How the import job records them (empty when there are none)."""
        out: dict[str, Any] = {}
        if self.max_chars is not None:
            out["max_chars"] = self.max_chars
        if self.where:
            out["where"] = {name: sorted(values) for name, values in self.where}
        return out


def parse_where(text: str) -> tuple[str, frozenset[str]]:
    """`FIELD=VALUE[,VALUE...]` as (field, values); a malformed one is one sentence."""
    name, sep, values = text.partition("=")
    name = name.strip()
    kept = frozenset(v.strip() for v in values.split(",") if v.strip())
    if not sep or not name or not kept:
        raise UserError(f"--where {text!r} is not FIELD=VALUE[,VALUE]; write e.g. "
                        "--where meta.pile_set_name=ArXiv,Github.")
    return name, kept


@dataclass(frozen=True)
class _Source:
    """How one column is read from a record: the field, the option that names it, and its limits."""

    column: str
    field: str
    option: str
    required: bool
    max_len: int | None
    fallback: str | None = None  # the field read where `field` is absent
    get: Callable[[dict[str, Any]], Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        first = getter(self.field)
        if self.fallback is None:
            object.__setattr__(self, "get", first)
            return
        second = getter(self.fallback)

        def either(record: dict[str, Any]) -> Any:
            value = first(record)
            return second(record) if value is None else value

        object.__setattr__(self, "get", either)

    @property
    def names(self) -> str:
        """The field (and its fallback) as a sentence names them."""
        return repr(self.field) if self.fallback is None else f"{self.field!r} or {self.fallback!r}"

    def read_from(self, record: dict[str, Any]) -> str:
        """The field this record's value came from: `field`, or the fallback where `field` is absent."""
        if self.fallback is None or getter(self.field)(record) is not None:
            return self.field
        return self.fallback


def _max_len(table: Table, column: str) -> int | None:
    type_ = table.c[column].type
    return type_.length if isinstance(type_, String) else None


class _BadField(Exception):
    """What is wrong with one field; the caller prefixes the file and line."""


def _value(record: dict[str, Any], src: _Source) -> str | None:
    """The text of one field of one record; raises _BadField saying what is wrong and how to fix it."""
    value = src.get(record)
    if value is None:
        if src.required:
            raise _BadField(f"has no field {src.names}; name the right field with {src.option}")
        return None
    if isinstance(value, str):
        text = value
    elif isinstance(value, (dict, list)):
        if src.required:
            raise _BadField(f"field {src.field!r} is a JSON {'object' if isinstance(value, dict) else 'array'}, "
                            f"not text; name a text field with {src.option}")
        try:
            text = json.dumps(value, ensure_ascii=False)
        except ValueError as exc:  # an integer past Python's 4,300-digit conversion limit, inside the object
            raise _BadField(f"field {src.field!r} cannot be written as text ({exc})") from None
    else:
        try:
            text = str(value)
        except ValueError as exc:  # an integer past Python's 4,300-digit conversion limit
            raise _BadField(f"field {src.field!r} cannot be written as text ({exc})") from None
    if src.required and (not text or text.isspace()):
        raise _BadField(f"field {src.field!r} is empty; remove the record or fill it in")
    if src.max_len is not None and len(text) > src.max_len:
        raise _BadField(f"field {src.field!r} is {len(text)} characters long; the {src.column} column holds "
                        f"at most {src.max_len}")
    if "\x00" in text:
        raise _BadField(f"field {src.field!r} contains a NUL character (\\u0000), which databases cannot store; "
                        "remove it")
    if not text.isascii():  # only non-ASCII text can hold an unpaired surrogate
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise _BadField(f"field {src.field!r} contains an unpaired surrogate (\\u{ord(text[exc.start]):04x}), "
                            "which is not valid Unicode; fix that escape") from None
    return text


def _set(constants: dict[str, str | None]) -> dict[str, str]:
    """The constants that carry a value; the others are left to the column's NULL rather than bound per row."""
    return {column: value for column, value in constants.items() if value is not None}


@dataclass
class _Layout:
    """The table, the column order of a row (after dataset_id, job_id) and how each mapped column is read."""

    table: Table
    columns: list[str]
    sources: list[_Source]


def _layout(fmap: FieldMap) -> _Layout:
    table: Table = (Document if fmap.kind == "documents" else Problem).__table__  # type: ignore[assignment]
    for column, value in fmap.constants.items():
        limit = _max_len(table, column)
        if value is not None and limit is not None and len(value) > limit:
            raise UserError(f"--{column} is {len(value)} characters long; the {column} column holds at most {limit}.")
    sources = [_Source(column, name, f"--{column.replace('_', '-')}-field", required, _max_len(table, column),
                       fmap.fallbacks.get(column))
               for mapping, required in ((fmap.required, True), (fmap.optional, False))
               for column, name in mapping.items()]
    if fmap.id is not None:
        sources.insert(0, _Source("external_id", fmap.id, "--id-field", True, _max_len(table, "external_id")))
    extra = ["n_chars"] if fmap.kind == "documents" else []
    derived = ["answer"] if fmap.layout == "math" else []
    columns = ["external_id", *_set(fmap.constants), *(s.column for s in sources if s.column != "external_id"),
               *derived, "content_hash", *extra]
    return _Layout(table, columns, sources)


@dataclass
class _Counts:
    """What one unit's read saw: records read and filtered out, and which optional fields were ever found."""

    read: int = 0
    filtered: int = 0
    found: dict[str, int] = field(default_factory=dict)
    where_found: dict[str, int] = field(default_factory=dict)
    gold_too_long: int = 0  # gold answers longer than LONG_GOLD_CHARS
    gold_without_answer: int = 0  # gold answers in which labelers.gold_answer finds no answer
    gold_suspect: int = 0  # gold answers that are either (each counted once)


def _check_gold(gold: str, counts: _Counts, *, extractable: bool) -> None:
    """Count a stored gold answer that is a worked solution rather than a final answer."""
    long = len(gold) > LONG_GOLD_CHARS
    unanswered = not extractable and gold_answer(gold) is None
    counts.gold_too_long += long
    counts.gold_without_answer += unanswered
    counts.gold_suspect += long or unanswered


def _math_values(record: dict[str, Any], values: list[Any], question_at: int, solution_at: int,
                 sources: list[_Source]) -> str:
    """The MATH layout on one record's values: the prefixes stripped in place; returns the gold answer (the
    solution's last box). Raises _BadField for a record with no question or no boxed answer."""
    question = strip_prefix(values[question_at], TDG_PROBLEM_PREFIX)
    if not question.strip():
        raise _BadField(f"field {sources[question_at].read_from(record)!r} holds nothing after its 'Problem:' line")
    solution = strip_prefix(values[solution_at], TDG_SOLUTION_PREFIX)
    answer = chain_answer(solution)
    if answer is None or not answer.strip():
        raise _BadField(f"field {sources[solution_at].read_from(record)!r} (the solution) has no \\boxed{{}} answer, "
                        "and --layout math takes each gold answer from the last \\boxed{} of the solution; fix or "
                        "remove the record, or import without --layout math and name the answer with --answer-field")
    values[question_at], values[solution_at] = question, solution
    return answer


def _rows(unit: Unit, fmap: FieldMap, layout: _Layout, filters: Filters, prefix: tuple[Any, ...],
          counts: _Counts) -> Iterator[tuple[int, tuple[Any, ...]]]:
    """(line, row) for every record of `unit` that passes the filters, validated, in `prefix + columns` order;
    raises on the first bad record. `counts` is filled in as records are read."""
    sources = layout.sources
    by_id = fmap.id is not None
    constants = tuple(_set(fmap.constants).values())
    math = fmap.layout == "math"
    mapped = [s.column for s in sources] + (["answer"] if math else [])  # the columns of `values`, in order
    # An absent optional field hashes like an empty one: the same content either way.
    hash_columns = ("text",) if fmap.kind == "documents" else ("question", "solution", "answer")
    hashed = [mapped.index(c) if c in mapped else None for c in hash_columns]
    question_at = mapped.index("question") if math else -1
    solution_at = mapped.index("solution") if math else -1
    answer_at = mapped.index("answer") if "answer" in mapped else None
    text_at = mapped.index("text") if fmap.kind == "documents" else None
    unseen = [(i, s.column) for i, s in enumerate(sources) if not s.required]
    for _i, column in unseen:
        counts.found.setdefault(column, 0)
    where = [(name, values, getter(name)) for name, values in filters.where]
    for name, _values, _get in where:
        counts.where_found.setdefault(name, 0)
    max_chars = filters.max_chars
    for at, record in unit.records():
        counts.read += 1
        if where:
            keep = True
            for name, values, get in where:
                got = get(record)
                if got is not None:
                    counts.where_found[name] += 1
                if got is None or str(got) not in values:
                    keep = False
            if not keep:
                counts.filtered += 1
                continue
        try:
            values = [_value(record, src) for src in sources]
            if math:
                values.append(_math_values(record, values, question_at, solution_at, sources))
        except _BadField as exc:
            raise UserError(f"{at} {exc}.") from None
        if answer_at is not None and values[answer_at] is not None:
            _check_gold(values[answer_at], counts, extractable=math)
        if unseen:
            for i, column in unseen:
                if values[i] is not None:
                    counts.found[column] += 1
            unseen = [(i, column) for i, column in unseen if not counts.found[column]]
        if text_at is not None:
            text: str = values[text_at]  # type: ignore[assignment]
            n_chars = len(text)
            if max_chars is not None and n_chars > max_chars:
                counts.filtered += 1
                continue
            digest = content_hash(text)
            tail: tuple[Any, ...] = (digest, n_chars)
        else:
            digest = content_hash(*("" if i is None else values[i] or "" for i in hashed))
            tail = (digest,)
        if by_id:
            yield at.number, (*prefix, values[0], *constants, *values[1:], *tail)
        else:
            # The MATH layout's id is the bare question's hash, as `import chains` makes it (one row either way).
            ext = content_hash(values[question_at]) if math else digest
            yield at.number, (*prefix, ext, *constants, *values, *tail)


def _unique_violation(exc: BaseException) -> bool:
    if isinstance(exc, sqlite3.IntegrityError):
        return "UNIQUE" in str(exc)
    return getattr(exc, "sqlstate", None) == "23505"


class _Writer:
    """Writes batches of rows in the unit's transaction, no per-row SQLAlchemy work: PostgreSQL COPY, SQLite
    executemany; each batch in a savepoint, so a repeated id is found and named rather than half-written.
    Without an id field, rows whose content is already in the dataset are skipped (ON CONFLICT DO NOTHING)."""

    def __init__(self, session: Session, table: Table, columns: list[str], *, skip_conflicts: bool) -> None:
        self.conn = session.connection()
        self.dbapi = self.conn.connection.driver_connection
        self.table = table
        self.names = ", ".join(columns)
        self.skip = skip_conflicts
        self.pg = self.conn.dialect.name == "postgresql"
        self.staged = False
        conflict = " ON CONFLICT (dataset_id, external_id) DO NOTHING" if skip_conflicts else ""
        self.sql = (f"INSERT INTO {table.name} ({self.names}) VALUES ({', '.join(['?'] * len(columns))})"
                    f"{conflict}")
        self.stage_sql = (f"INSERT INTO {table.name} ({self.names}) SELECT {self.names} FROM rplat_import_stage"
                          f"{conflict}")

    def write(self, rows: list[tuple[Any, ...]]) -> int:
        """Insert `rows`; returns how many were inserted. A unique violation rolls the batch back and raises."""
        cursor = self.dbapi.cursor()
        try:
            cursor.execute("SAVEPOINT rplat_import_batch")
            try:
                inserted = self._insert(cursor, rows)
            except Exception as exc:
                if not _unique_violation(exc):
                    raise
                cursor.execute("ROLLBACK TO SAVEPOINT rplat_import_batch")
                raise _Repeat from None
            cursor.execute("RELEASE SAVEPOINT rplat_import_batch")
            return inserted
        finally:
            cursor.close()

    def _insert(self, cursor: Any, rows: list[tuple[Any, ...]]) -> int:
        if not self.pg:
            cursor.executemany(self.sql, rows)
            return len(rows) if not self.skip else int(cursor.rowcount)
        if not self.skip:
            with cursor.copy(f"COPY {self.table.name} ({self.names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            return len(rows)
        if not self.staged:
            cursor.execute(f"CREATE TEMP TABLE IF NOT EXISTS rplat_import_stage ON COMMIT DROP AS "
                           f"SELECT {self.names} FROM {self.table.name} WITH NO DATA")
            self.staged = True
        with cursor.copy(f"COPY rplat_import_stage ({self.names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        cursor.execute(self.stage_sql)
        inserted = int(cursor.rowcount)
        cursor.execute("TRUNCATE rplat_import_stage")
        return inserted


class _Repeat(Exception):
    """A batch repeats an id (of the batch itself, or one already written); the caller names it."""


def _dataset_job(session: Session, ds: Dataset) -> Job | None:
    return session.get(Job, ds.job_id) if ds.job_id is not None else None


def _imported_shas(session: Session, kind: str, dataset: str) -> set[str]:
    """The sha256 of every unit an import job of this kind already brought into `dataset`."""
    params = session.scalars(select(Job.params).where(Job.kind == f"import-{kind}", Job.status == "succeeded"))
    return {p["sha256"] for p in params if isinstance(p, dict) and p.get("dataset") == dataset and p.get("sha256")}


@dataclass
class _Plan:
    """What one `import_source` call does, shared by its units."""

    engine: Engine
    source: Source
    dataset: str
    fmap: FieldMap
    filters: Filters
    layout: _Layout
    append: bool
    preexisting: bool  # the dataset existed before this command (so --append skips what is there)
    multi: bool  # a directory of units: each recorded with the directory, resumable
    progress: Progress | None
    by_bytes: bool


def _params(plan: _Plan, unit: Unit, sha256: str | None) -> dict[str, Any]:
    fmap = plan.fmap
    where = unit.name if unit.path is None else str(unit.path.resolve())
    if unit.codec == "hf" and unit.path is not None:
        where += unit.name[len(str(unit.path)):]  # the split, e.g. [train]
    params: dict[str, Any] = {"file": where, "sha256": sha256, "dataset": plan.dataset, "id_field": fmap.id,
                              "fields": {**fmap.required, **fmap.optional}, "constants": fmap.constants}
    if fmap.layout != "fields":
        params["layout"] = fmap.layout
    if fmap.fallbacks:
        params["fallback_fields"] = fmap.fallbacks
    if plan.multi:
        params["source"] = str(Path(plan.source.spec).resolve())
    if plan.filters.params():
        params["filters"] = plan.filters.params()
    return params


def _first_line(plan: _Plan, unit: Unit, external_id: str, before: int) -> int | None:
    """The first line of `unit` (a file, read again) whose row has `external_id`; None for a stream."""
    if unit.path is None:
        return None
    for line, row in _rows(unit, plan.fmap, plan.layout, plan.filters, (), _Counts()):
        if line >= before:
            return None
        if row[0] == external_id:
            return line
    return None


def _name_repeat(session: Session, plan: _Plan, unit: Unit, ds_id: int, job_id: int,
                 batch: list[tuple[Any, ...]], lines: list[int]) -> UserError:
    """One sentence naming the first row of `batch` whose id was seen before, and where."""
    table = plan.layout.table
    ids = [row[2] for row in batch]
    stored = dict(session.execute(select(table.c.external_id, table.c.job_id).where(
        table.c.dataset_id == ds_id, table.c.external_id.in_(set(ids)))).all())
    seen: dict[str, int] = {}
    word = unit.unit_word
    for line, ext_id in zip(lines, ids, strict=True):
        if ext_id in seen:
            return UserError(f"{unit.name} {word} {line} repeats id {ext_id!r} first seen on {word} {seen[ext_id]}; "
                             "ids must be unique within a dataset.")
        if ext_id in stored:
            owner = stored[ext_id]
            if owner != job_id:
                return UserError(f"{unit.name} {word} {line} repeats id {ext_id!r}, which dataset {plan.dataset!r} "
                                 f"already holds (import job {owner}); ids must be unique within a dataset, or pass "
                                 "--append to skip records already there.")
            first = _first_line(plan, unit, ext_id, line)
            where = f"{word} {first}" if first is not None else f"earlier in {unit.name}"
            return UserError(f"{unit.name} {word} {line} repeats id {ext_id!r} first seen on {where}; "
                             "ids must be unique within a dataset.")
        seen[ext_id] = line
    return UserError(f"{unit.name} repeats an id between {word}s {lines[0]} and {lines[-1]}; ids must be unique "
                     "within a dataset.")


def _import_unit(plan: _Plan, unit: Unit, sha256: str | None) -> dict[str, Any]:
    fmap, layout, table = plan.fmap, plan.layout, plan.layout.table
    with transaction(plan.engine) as session:
        ds = session.scalar(select(Dataset).where(Dataset.name == plan.dataset))
        if ds is not None and ds.kind != fmap.kind:
            raise UserError(f"dataset {plan.dataset!r} holds {ds.kind}, not {fmap.kind}; choose another --dataset.")
        job_id = Queue.record_done(session, f"import-{fmap.kind}", _params(plan, unit, sha256), {})
        if ds is None:
            source = str(Path(plan.source.spec).resolve()) if unit.path is not None else unit.name
            ds = Dataset(name=plan.dataset, kind=fmap.kind, source=source, job_id=job_id)
            session.add(ds)
            session.flush()
        writer = _Writer(session, table, ["dataset_id", "job_id", *layout.columns], skip_conflicts=fmap.id is None)
        counts = _Counts()
        imported = already = duplicates = 0
        batch: list[tuple[Any, ...]] = []
        lines: list[int] = []
        shown = 0

        def flush() -> None:
            nonlocal imported, already, duplicates, shown
            rows = batch
            if plan.preexisting and plan.append:
                ids = {row[2] for row in rows}
                there = set(session.scalars(select(table.c.external_id).where(
                    table.c.dataset_id == ds.id, table.c.job_id != job_id, table.c.external_id.in_(ids))))
                if there:
                    rows = [row for row in rows if row[2] not in there]
                    already += len(batch) - len(rows)
            try:
                written = writer.write(rows) if rows else 0
            except _Repeat:
                raise _name_repeat(session, plan, unit, ds.id, job_id, batch, lines) from None
            imported += written
            duplicates += len(rows) - written
            if plan.progress is not None:
                done = unit.bytes_read() if plan.by_bytes else counts.read
                plan.progress.advance(done - shown)
                shown = done
            batch.clear()
            lines.clear()

        for line, row in _rows(unit, fmap, layout, plan.filters, (ds.id, job_id), counts):
            batch.append(row)
            lines.append(line)
            if len(batch) >= BATCH:
                flush()
        flush()
        if counts.read == 0:
            raise UserError(f"{unit.name} holds no records; nothing to import.")
        _check_matched(plan, unit, counts)
        if sha256 is None:
            sha256 = unit.sha256()
        result = {"dataset": plan.dataset, "kind": fmap.kind, "read": counts.read, "imported": imported,
                  "already_present": already}
        if duplicates:
            result["duplicates"] = duplicates
        if counts.filtered or plan.filters.params():
            result["filtered"] = counts.filtered
        if counts.gold_suspect:
            result.update(gold_too_long=counts.gold_too_long, gold_without_answer=counts.gold_without_answer,
                          gold_suspect=counts.gold_suspect)
        if fmap.layout != "fields":
            result["layout"] = fmap.layout
        Queue.finish_recorded(session, job_id, params=_params(plan, unit, sha256), result=result,
                              items=counts.read)
    return {**result, "job_id": job_id}


def _check_matched(plan: _Plan, unit: Unit, counts: _Counts) -> None:
    """A field named explicitly that no record has is a typo, not a column of NULLs."""
    for name, n in counts.where_found.items():
        if n == 0:
            raise UserError(f"no record of {unit.name} has the field {name!r} named by --where; check the name "
                            "(a dotted path such as meta.pile_set_name reaches into objects).")
    considered = counts.read - counts.filtered
    by_column = {s.column: s for s in plan.layout.sources}
    for column in plan.fmap.strict:
        if considered and counts.found.get(column, 0) == 0:
            src = by_column[column]
            raise UserError(f"no record of {unit.name} has the field {src.field!r} named by {src.option}; check the "
                            "name (a dotted path such as meta.pile_set_name reaches into objects).")


def _totals(source: Source) -> tuple[int | None, str, bool]:
    """The progress total, its unit, and whether it counts input bytes (files) rather than records."""
    sizes = [u.size for u in source.units]
    if any(s is None for s in sizes):
        return None, "records", False
    if all(u.codec in ("parquet", "hf") for u in source.units):
        return sum(s for s in sizes if s is not None), "records", False
    if all(u.codec not in ("parquet", "hf") for u in source.units):
        return sum(s for s in sizes if s is not None), "bytes", True
    return None, "records", False


def progress_for(source: Source, what: str, **options: Any) -> Progress:
    """A Progress over `source`: input bytes with a total for files (so a terminal shows an ETA), records
    otherwise."""
    total, unit, _by_bytes = _totals(source)
    return Progress(what, total=total, unit=unit, **options)


def import_source(engine: Engine, spec: str, dataset: str, fmap: FieldMap, *, append: bool = False,
                  filters: Filters | None = None, progress: Progress | None = None,
                  source: Source | None = None) -> dict[str, Any]:
    """Import every unit of `spec` into `dataset`, each in its own transaction; returns a summary (for one
    unit: its job's result and `job_id`; for several: the sums, `units`, `units_skipped` and `job_ids`)."""
    filters = filters or Filters()
    name_limit = _max_len(Dataset.__table__, "name")  # type: ignore[arg-type]
    if name_limit is not None and len(dataset) > name_limit:
        raise UserError(f"--dataset is {len(dataset)} characters long; dataset names are at most {name_limit}.")
    layout = _layout(fmap)
    source = source or open_source(spec)
    multi = source.kind in ("shards", "hf")
    resolved = str(Path(spec).resolve()) if spec != "-" else spec
    with transaction(engine) as session:
        ds = session.scalar(select(Dataset).where(Dataset.name == dataset))
        done: set[str] = set()
        resuming = False
        if ds is not None:
            job = _dataset_job(session, ds)
            resuming = multi and job is not None and job.params.get("source") == resolved
            if not append and not resuming:
                raise UserError(f"dataset {dataset!r} already exists; choose another --dataset or pass --append.")
            if ds.kind != fmap.kind:
                raise UserError(f"dataset {dataset!r} holds {ds.kind}, not {fmap.kind}; choose another --dataset.")
            if multi:
                done = _imported_shas(session, fmap.kind, dataset)
    _total, _unit, by_bytes = _totals(source)
    plan = _Plan(engine, source, dataset, fmap, filters, layout, append, ds is not None and not resuming, multi,
                 progress, by_bytes)
    results: list[dict[str, Any]] = []
    skipped = 0
    for unit in source.units:
        sha256 = unit.sha256() if unit.path is not None else None
        if multi and sha256 in done:
            skipped += 1
            if progress is not None and progress.total is not None and unit.size is not None:
                progress.set_total(progress.total - unit.size)
            continue
        results.append(_import_unit(plan, unit, sha256))
        if sha256 is not None:
            done.add(sha256)
    if not multi:
        return results[0]
    summary: dict[str, Any] = {"dataset": dataset, "kind": fmap.kind}
    if fmap.layout != "fields":
        summary["layout"] = fmap.layout
    for key in ("read", "imported", "already_present", "duplicates", "filtered", "gold_too_long",
                "gold_without_answer", "gold_suspect"):
        if key in ("read", "imported", "already_present") or any(key in r for r in results):
            summary[key] = sum(r.get(key, 0) for r in results)
    summary.update(units=len(source.units), units_skipped=skipped, job_ids=[r["job_id"] for r in results],
                   job_id=results[-1]["job_id"] if results else None)
    return summary


def import_file(engine: Engine, path: Path, dataset: str, fmap: FieldMap, *, append: bool = False,
                filters: Filters | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Import one file (or any other source `path` names) into `dataset`; see `import_source`."""
    return import_source(engine, str(path), dataset, fmap, append=append, filters=filters, progress=progress)


def describe(summary: dict[str, Any]) -> str:
    """The summary as one line for a person."""
    parts = [f"{summary['already_present']} already present"]
    if summary.get("duplicates"):
        parts.append(f"{summary['duplicates']} repeated within the import")
    if "filtered" in summary:
        parts.append(f"{summary['filtered']} filtered out")
    if "units" in summary:
        parts.append(f"{summary['units'] - summary['units_skipped']} of {summary['units']} units imported, "
                     f"{summary['units_skipped']} done before")
    job = f"import job {summary['job_id']}" if "job_ids" not in summary else \
        f"import jobs {', '.join(map(str, summary['job_ids'])) or 'none'}"
    return (f"imported {summary['imported']} {summary['kind']} into dataset {summary['dataset']} "
            f"({'; '.join(parts)}; {job})")



def gold_warning(summary: dict[str, Any], answer_field: str = "answer") -> str | None:
    """The line to print on stderr when an import stored gold answers that look like worked solutions (see
    `_check_gold`), saying how to fix it; None when it stored none."""
    suspect = summary.get("gold_suspect", 0)
    if not suspect:
        return None
    reasons = []
    if summary.get("gold_too_long"):
        reasons.append(f"{summary['gold_too_long']} longer than {LONG_GOLD_CHARS} characters")
    if summary.get("gold_without_answer"):
        reasons.append(f"{summary['gold_without_answer']} with no final answer rplat can find in them (no \\boxed{{}}, "
                       "no `#### N`, no \"the answer is\", and not one short line)")
    if summary.get("layout") == "math":
        fix = "check those records' last \\boxed{} (imported all the same)"
    else:
        fix = (f"evaluate compares predictions with them as they are, so for a MATH-format file import again with "
               f"--layout math (gold = the solution's last \\boxed{{}}), else name the field that holds the final "
               f"answer with --answer-field (the answers were read from field {answer_field!r})")
    return (f"warning: {suspect} gold answers imported into dataset {summary['dataset']} look like worked "
            f"solutions, not final answers ({'; '.join(reasons)}); {fix}.")
