"""`rplat import chains`: teacher chains (TDG B1) into `teacher_chains`, labelled by both labelers, all or nothing.

Two layouts. *Released*: the TDG authors' files, one MATH problem per line with its gold solution and the
teacher's chains (`{"question": "Problem:\\n…", "answer": …, "generated_answer": [...], "level", "type"}`); the
problems are created in the dataset, or reused when their question is there already (the external id is a hash
of the bare question, so the same problem imported for two teachers is one row). *Flat*: one chain per line on a
problem already in the dataset, in one of two forms, told apart by the field holding the chain:

- `{"problem_id": external id in the dataset, "chain": …, "sample_idx"?}`: the chain loses a leading
  "Solution:" line, as released chains do;
- without `chain`, `{"problem": external id, "text": …, "sample_idx"?, …}`: a row of `rplat export chains` (any
  file type, a Hugging Face directory included), whose `problem_id` is the exporting store's row id and is
  ignored, as are its other columns (`teacher`, `label`, ...: the chains are labelled here, by this import's
  labelers); the text is taken as it is.

So `chain` wins over `text`, and the id is read from the field of the form the chain decides: `problem_id`
beside `chain`, `problem` beside `text`. A record with neither `chain` nor `text` is refused. Without
`sample_idx`, a chain takes the next index of its problem in the order read. Input is read through
rplat.imports.readers (plain, gzip or Zstandard JSONL, Parquet, stdin, a directory of them). Every record is
validated, and every new chain labelled (in a pool of processes, one per core by default; math-verify's timeouts
counted per chain), before anything is written; the rows and an `import-chains` job (their lineage) commit
together. A chain is stored once per (problem, teacher, sample index), so a re-import adds nothing, except that
a re-import with the other `--labeler` relabels the chain set from its stored verdicts (rplat.chainsets).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, String, select, update
from sqlalchemy.orm import Session

from rplat.chainsets import relabel
from rplat.errors import UserError
from rplat.hashing import content_hash
from rplat.imports.readers import Unit, Where, open_source
from rplat.methods.labelers import LABELERS, default_workers, gold_answer, label_chains
from rplat.models import Dataset, Job, Problem, TeacherChain
from rplat.prompts import TDG_PROBLEM_PREFIX, TDG_SOLUTION_PREFIX, strip_prefix
from rplat.queue import Queue
from rplat.reviews import problem_answer
from rplat.store import insert_ignore, transaction

LAYOUTS = ("auto", "released", "flat")
BATCH = 2000
_RELEASED_FIELDS = ("question", "answer", "generated_answer")
_FLAT_FIELDS = ("problem_id", "chain")


def _limit(model: type, column: str) -> int | None:
    type_ = model.__table__.c[column].type  # type: ignore[attr-defined]
    return type_.length if isinstance(type_, String) else None


class _Bad(Exception):
    """What is wrong with one record; the caller prefixes the file and line."""


@dataclass(frozen=True)
class _NewProblem:
    external_id: str
    question: str
    solution: str
    answer: str | None
    subject: str | None
    level: str | None


@dataclass
class _Chain:
    external_id: str  # the problem's
    sample_idx: int
    text: str
    where: Where


def _clean(value: str, name: str) -> str:
    if "\x00" in value:
        raise _Bad(f"field {name} contains a NUL character (\\u0000), which databases cannot store; remove it")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _Bad(f"field {name} contains an unpaired surrogate (\\u{ord(value[exc.start]):04x}), which is not "
                   "valid Unicode; fix that escape") from None
    return value


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "text", bool: "a boolean", int: "a number", float: "a number",
            type(None): "null"}.get(type(value), type(value).__name__)


def _text(record: dict[str, Any], name: str, *, required: bool = True, max_len: int | None = None) -> str | None:
    """A text field: present (if required), a string, not blank, storable, within its column's length."""
    value = record.get(name)
    if value is None:
        if required:
            raise _Bad(f"has no field {name!r}")
        return None
    if not isinstance(value, str):
        raise _Bad(f"field {name!r} is {_kind(value)}, not text")
    if required and not value.strip():
        raise _Bad(f"field {name!r} is empty")
    if max_len is not None and len(value) > max_len:
        raise _Bad(f"field {name!r} is {len(value)} characters long; the column holds at most {max_len}")
    return _clean(value, repr(name))


_SHARD_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst", ".jsonl.zstd", ".parquet")


def _units(spec: str) -> list[Unit]:
    """The units to read, through the one reader of imports (rplat.imports.readers): a file (.jsonl, .jsonl.gz,
    .jsonl.zst, .parquet), `-` (stdin) or a named pipe, a Hugging Face save_to_disk directory, or a directory of
    chain files, searched recursively (in sorted path order; other files are left alone)."""
    path = Path(spec)
    if spec != "-" and path.is_dir() and not (path / "dataset_dict.json").is_file() and not (
            (path / "state.json").is_file() and (path / "dataset_info.json").is_file()):
        found = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")
                       and p.name.endswith(_SHARD_SUFFIXES))
        if not found:
            raise UserError(f"{path} is a directory with no chain files (.jsonl, .jsonl.gz, .jsonl.zst, .parquet); "
                            "point at a chains file or a directory holding some.")
        return [unit for file in found for unit in open_source(str(file)).units]
    return open_source(spec).units


def _records_of(units: list[Unit]) -> Iterator[tuple[Where, dict[str, Any]]]:
    for unit in units:
        yield from unit.records()


def _layout_of(record: dict[str, Any], layout: str) -> str:
    if layout != "auto":
        return layout
    if "generated_answer" in record:
        return "released"
    if "chain" in record or "text" in record:
        return "flat"
    raise _Bad("is neither a released record (question, answer, generated_answer) nor a flat one (problem_id and "
               "chain, or problem and text as rplat export chains writes); fix it, or pass --layout to say which "
               "it should be")


def _flat(record: dict[str, Any], id_max: int | None) -> tuple[str, str, bool]:
    """A flat record's problem external id and chain, and whether it is in the export form (module docstring):
    `chain` with `problem_id`, else `text` with `problem`."""
    if record.get("chain") is None and record.get("text") is None:
        raise _Bad("has neither field 'chain' nor field 'text'; give each chain in 'chain' with its problem's "
                    "external id in 'problem_id', or in 'text' with the id in 'problem' (as rplat export chains "
                    "writes them)")
    exported = record.get("chain") is None
    id_field = "problem" if exported else "problem_id"
    raw_id = record.get(id_field)
    if exported and raw_id is None:
        raise _Bad("has its chain in 'text' but no field 'problem' (in an rplat chains export, 'problem' is the "
                   "problem's external id and 'problem_id' the exporting store's row id); give 'problem', or put "
                   "the chain in 'chain' to name the problem by 'problem_id'")
    if isinstance(raw_id, int) and not isinstance(raw_id, bool):
        try:
            raw_id = str(raw_id)
        except ValueError:  # past Python's 4,300-digit conversion limit
            raise _Bad(f"field {id_field!r} is a number too long to be an id") from None
        record = {**record, id_field: raw_id}
    ext = _text(record, id_field, max_len=id_max) or ""
    chain = _text(record, "text" if exported else "chain") or ""
    return ext, chain if exported else strip_prefix(chain, TDG_SOLUTION_PREFIX), exported


@dataclass
class _Parsed:
    """Everything the files say, validated: new problems (released), chains, and which layouts were seen."""

    problems: dict[str, _NewProblem]
    chains: list[_Chain]
    layouts: set[str]


def _parse(units: list[Unit], layout: str) -> _Parsed:
    subject_max, level_max, id_max = _limit(Problem, "subject"), _limit(Problem, "level"), _limit(Problem,
                                                                                                  "external_id")
    parsed = _Parsed({}, [], set())
    next_idx: dict[str, int] = {}  # released: chains continue their problem's indices if its question repeats
    flat_keys: dict[tuple[str, int], tuple[Where, Any]] = {}  # (problem, index) -> where first seen, its teacher
    for where, record in _records_of(units):
        try:
            kind = _layout_of(record, layout)
            parsed.layouts.add(kind)
            if kind == "released":
                question = strip_prefix(_text(record, "question") or "", TDG_PROBLEM_PREFIX)
                if not question.strip():
                    raise _Bad("field 'question' holds nothing after its 'Problem:' line")
                solution = strip_prefix(_text(record, "answer") or "", TDG_SOLUTION_PREFIX)
                subject = _text(record, "type", required=False, max_len=subject_max)
                level = _text(record, "level", required=False, max_len=level_max)
                generated = record.get("generated_answer")
                if not isinstance(generated, list):
                    raise _Bad(f"field 'generated_answer' is {_kind(generated)}, not an array of chains")
                if not generated:
                    raise _Bad("field 'generated_answer' is an empty array; give each record at least one chain or "
                               "remove the record")
                texts = []
                for k, chain in enumerate(generated):
                    if not isinstance(chain, str):
                        raise _Bad(f"generated_answer item {k} is {_kind(chain)}, not text")
                    texts.append(strip_prefix(_clean(chain, f"generated_answer item {k}"), TDG_SOLUTION_PREFIX))
                ext = content_hash(question)
                if ext not in parsed.problems:
                    parsed.problems[ext] = _NewProblem(ext, question, solution, gold_answer(solution), subject, level)
                start = next_idx.get(ext, 0)
                parsed.chains.extend(_Chain(ext, start + k, text, where) for k, text in enumerate(texts))
                next_idx[ext] = start + len(texts)
            else:
                ext, chain, exported = _flat(record, id_max)
                raw_idx = record.get("sample_idx")
                if raw_idx is None:
                    idx = next_idx.get(ext, 0)
                elif isinstance(raw_idx, int) and not isinstance(raw_idx, bool) and raw_idx >= 0:
                    idx = raw_idx
                else:
                    raise _Bad(f"field 'sample_idx' is {raw_idx!r}, not a whole number of at least 0")
                teacher = record.get("teacher") if exported else None
                first, first_teacher = flat_keys.setdefault((ext, idx), (where, teacher))
                if first != where:
                    several = (f" (the export holds the chains of teachers {first_teacher!r} and {teacher!r}: "
                               f"export one teacher's, e.g. with --where \"teacher = '{first_teacher}'\")"
                               if teacher != first_teacher else "")
                    raise _Bad(f"repeats sample_idx {idx} of problem {ext!r} first seen on {first}{several}; give "
                               "each chain of a problem its own sample_idx")
                next_idx[ext] = max(next_idx.get(ext, 0), idx + 1)
                parsed.chains.append(_Chain(ext, idx, chain, where))
        except _Bad as exc:
            raise UserError(f"{where} {exc}.") from None
    if not parsed.layouts:
        raise UserError(f"{units[0].name if len(units) == 1 else 'the files under the directory'} hold no records; "
                        "nothing to import.")
    return parsed


@dataclass(frozen=True)
class _Stored:
    problem_id: int
    answer: str | None


def _stored_problems(session: Session, dataset_id: int | None) -> dict[str, _Stored]:
    if dataset_id is None:
        return {}
    # the gold answers in effect: a problem whose gold a person corrected labels its chains against the correction
    rows = session.execute(select(Problem.external_id, Problem.id, problem_answer(None), Problem.solution)
                           .where(Problem.dataset_id == dataset_id)).all()
    return {ext: _Stored(pid, answer if answer is not None else gold_answer(solution))
            for ext, pid, answer, solution in rows}


def _stored_chains(session: Session, dataset_id: int | None, teacher: str) -> set[tuple[int, int]]:
    if dataset_id is None:
        return set()
    rows = session.execute(select(TeacherChain.problem_id, TeacherChain.sample_idx)
                           .join(Problem, Problem.id == TeacherChain.problem_id)
                           .where(Problem.dataset_id == dataset_id, TeacherChain.teacher == teacher)).all()
    return {(pid, idx) for pid, idx in rows}


def _dataset(session: Session, name: str) -> Dataset | None:
    ds = session.scalar(select(Dataset).where(Dataset.name == name))
    if ds is not None and ds.kind != "problems":
        raise UserError(f"dataset {name!r} holds {ds.kind}, not problems; choose another --dataset.")
    return ds


def _fingerprint(spec: str, units: list[Unit]) -> str | None:
    """The input's sha256 (a stream's as it was read); for several units, the hash of their names (relative to
    the directory) and sha256s."""
    if len(units) == 1:
        return units[0].sha256()
    root = Path(spec)
    return content_hash([[str(Path(u.name).relative_to(root)) if u.path is not None and root in Path(u.name).parents
                          else u.name, u.sha256()] for u in units])


def _check_options(teacher: str, dataset: str, labeler: str, layout: str) -> None:
    if labeler not in LABELERS:
        raise UserError(f"--labeler {labeler!r} is not a labeler; choose one of {', '.join(LABELERS)}.")
    if layout not in LAYOUTS:
        raise UserError(f"--layout {layout!r} is not a chains layout; choose one of {', '.join(LAYOUTS)}.")
    teacher_max, name_max = _limit(TeacherChain, "teacher"), _limit(Dataset, "name")
    if not teacher.strip():
        raise UserError("--teacher is empty; name the chain set (e.g. gpt-3.5).")
    if teacher_max is not None and len(teacher) > teacher_max:
        raise UserError(f"--teacher is {len(teacher)} characters long; teacher names are at most {teacher_max}.")
    if not dataset.strip():
        raise UserError("--dataset is empty; name the problem dataset (e.g. math-train).")
    if name_max is not None and len(dataset) > name_max:
        raise UserError(f"--dataset is {len(dataset)} characters long; dataset names are at most {name_max}.")


def import_chains(engine: Engine, path: Path | str, *, teacher: str, dataset: str, labeler: str = "hendrycks",
                  benchmark: str | None = "math", split: str | None = "train", layout: str = "auto",
                  workers: int | None = None, progress: Callable[[int], None] = lambda _n: None,
                  total: Callable[[int], None] = lambda _n: None) -> dict[str, Any]:
    """Import the chains in `path` (a .jsonl, .jsonl.gz, .jsonl.zst or .parquet file, `-` for stdin, a named pipe, a
    Hugging Face save_to_disk directory, or a directory of chain files, recursively, in sorted order) as
    `teacher`'s, on the problems of `dataset`, labelled by `labeler` (both verdicts stored) in a pool of `workers`
    processes (default: one per core; 1 labels in this process); one transaction. Chains of the set stored
    before under the other labeler are relabelled from their stored verdicts in the same transaction, so the
    chain set has one labeler. `total(n)` is told how many chains will be labelled, `progress(n)` of every n
    labelled. Returns a summary."""
    spec = str(path)
    _check_options(teacher, dataset, labeler, layout)
    if workers is not None and workers < 1:
        raise UserError(f"--workers {workers} is not a number of processes; give 1 or more (1 labels in this "
                        "process).")
    units = _units(spec)
    parsed = _parse(units, layout)
    sha256 = _fingerprint(spec, units)
    where = spec if spec == "-" else str(Path(spec).resolve())

    # Label only the chains not stored yet (math-verify is the slow part), outside any write transaction.
    with transaction(engine) as session:
        ds = _dataset(session, dataset)
        stored = _stored_problems(session, ds.id if ds else None)
        present = _stored_chains(session, ds.id if ds else None, teacher)
    if "flat" in parsed.layouts:
        if ds is None:
            raise UserError(f"dataset {dataset!r} does not exist, and flat chains name problems in it; import its "
                            "problems first (rplat import problems, or the released chains layout).")
        for chain in parsed.chains:
            if chain.external_id not in stored and chain.external_id not in parsed.problems:
                raise UserError(f"{chain.where} names problem {chain.external_id!r}, which dataset {dataset!r} does "
                                "not hold; fix the problem_id or import that problem first.")
    gold = {ext: s.answer for ext, s in stored.items()}
    gold.update({ext: p.answer for ext, p in parsed.problems.items() if ext not in stored})
    todo = []
    for chain in parsed.chains:
        known = stored.get(chain.external_id)
        if known is None or (known.problem_id, chain.sample_idx) not in present:
            todo.append(chain)
    total(len(todo))
    workers = default_workers() if workers is None else workers
    labelled = label_chains([(c.text, gold[c.external_id]) for c in todo], labeler, workers=workers,
                            progress=progress)
    verdicts = {(c.external_id, c.sample_idx): v for c, v in zip(todo, labelled.verdicts, strict=True)}

    with transaction(engine) as session:
        ds = _dataset(session, dataset)
        stored = _stored_problems(session, ds.id if ds else None)
        present = _stored_chains(session, ds.id if ds else None, teacher)
        created = [p for ext, p in parsed.problems.items() if ext not in stored]
        referenced = {c.external_id for c in parsed.chains} | set(parsed.problems)
        fresh = [c for c in parsed.chains if (c.external_id, c.sample_idx) in verdicts
                 and (c.external_id not in stored or (stored[c.external_id].problem_id, c.sample_idx) not in present)]
        positives = sum(verdicts[c.external_id, c.sample_idx].label == "pos" for c in fresh)
        disagree = sum(verdicts[c.external_id, c.sample_idx].hendrycks
                       != verdicts[c.external_id, c.sample_idx].math_verify for c in fresh)
        result = {"dataset": dataset, "teacher": teacher, "labeler": labeler, "layout": "+".join(sorted(
            parsed.layouts)), "files": len(units), "read": len(parsed.chains), "imported": len(fresh),
            "already_present": len(parsed.chains) - len(fresh), "positives": positives,
            "negatives": len(fresh) - positives, "labelers_disagree": disagree, "problems_created": len(created),
            "problems_reused": len(referenced) - len(created),
            "problems_without_gold": sum(gold[ext] is None for ext in referenced), "workers": workers}
        job_id = Queue.record_done(session, "import-chains", {
            "file": where, "sha256": sha256, "files": len(units), "teacher": teacher,
            "dataset": dataset, "labeler": labeler, "layout": layout, "benchmark": benchmark, "split": split},
            result, items=len(parsed.chains))
        result["relabelled"] = relabel(session, ds.id, teacher, labeler) if ds is not None else 0
        if ds is None:
            ds = Dataset(name=dataset, kind="problems", source=where, job_id=job_id)
            session.add(ds)
            session.flush()
        for start in range(0, len(created), BATCH):
            insert_ignore(session, Problem, [{
                "dataset_id": ds.id, "job_id": job_id, "external_id": p.external_id, "benchmark": benchmark,
                "split": split, "subject": p.subject, "level": p.level, "question": p.question,
                "solution": p.solution, "answer": p.answer,
                "content_hash": content_hash(p.question, p.solution, p.answer or ""),
            } for p in created[start:start + BATCH]], ["dataset_id", "external_id"])
        ids = {ext: s.problem_id for ext, s in stored.items()}
        if created:
            ids.update(session.execute(select(Problem.external_id, Problem.id)
                                       .where(Problem.dataset_id == ds.id)).all())
        for start in range(0, len(fresh), BATCH):
            rows = []
            for c in fresh[start:start + BATCH]:
                v = verdicts[c.external_id, c.sample_idx]
                rows.append({"job_id": job_id, "problem_id": ids[c.external_id], "teacher": teacher,
                             "sample_idx": c.sample_idx, "text": c.text, "extracted_answer": v.answer,
                             "label": v.label, "labeler": labeler, "hendrycks_correct": v.hendrycks,
                             "math_verify_correct": v.math_verify, "n_chars": len(c.text)})
            insert_ignore(session, TeacherChain, rows, ["problem_id", "teacher", "sample_idx"])
        timed_out = {(ids[c.external_id], c.sample_idx) for c in fresh if verdicts[c.external_id, c.sample_idx]
                     .timed_out}
        result["math_verify_timeouts"] = len(timed_out)
        result["timeout_chain_ids"] = _chain_ids(session, ds.id, teacher, timed_out)
        session.execute(update(Job).where(Job.id == job_id).values(result=result))
    return {**result, "job_id": job_id}


def _chain_ids(session: Session, dataset_id: int, teacher: str, keys: set[tuple[int, int]]) -> list[int]:
    """The ids of the chains of `teacher` with these (problem id, sample index) keys, in id order."""
    if not keys:
        return []
    rows = session.execute(select(TeacherChain.id, TeacherChain.problem_id, TeacherChain.sample_idx)
                           .join(Problem, Problem.id == TeacherChain.problem_id)
                           .where(Problem.dataset_id == dataset_id, TeacherChain.teacher == teacher)).all()
    return sorted(cid for cid, pid, idx in rows if (pid, idx) in keys)


def summary_line(summary: dict[str, Any]) -> str:
    """The one line `rplat import chains` prints."""
    return (f"imported {summary['imported']} chains of teacher {summary['teacher']} into dataset "
            f"{summary['dataset']} ({summary['already_present']} already present"
            + (f", {summary['relabelled']} of them relabelled by {summary['labeler']}" if summary['relabelled'] else "")
            + f"; {summary['positives']} positive, {summary['negatives']} negative by {summary['labeler']}, "
            f"{summary['labelers_disagree']} where the labelers disagree; math-verify timed out on "
            f"{summary['math_verify_timeouts']}"
            + (f" (chain ids {_ids(summary['timeout_chain_ids'])})" if summary['timeout_chain_ids'] else "")
            + f"; problems {summary['problems_created']} created, {summary['problems_reused']} reused; "
            f"{summary['workers']} labelling processes; import job {summary['job_id']})")


def _ids(ids: list[int], shown: int = 20) -> str:
    return ", ".join(map(str, ids[:shown])) + (f" and {len(ids) - shown} more, all in the job's result"
                                              if len(ids) > shown else "")
