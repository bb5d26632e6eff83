"""The bounds of user input, in one place: names, ids and the counts the store and memory can hold.

Pure functions and constants (no click, no store): the CLI's parameter types (`rplat.cli._common`) check with
them before anything opens the store, and the library checks with them where the same values arrive another
way (a job's params, a run spec of `rplat report compare`). Each failure is a `UserError` of one sentence.

A *name* (of a model, experiment, dataset, teacher's chain set, adapter or any result registered by name) is 1 to
200 characters from `A-Z a-z 0-9 . _ -`, starts with a letter or digit and holds no `..`: it fits the columns
that store it and can never form a path (no `/`, no `..`, no leading `.` or `-`), so a name may safely become a
file or directory name under RPLAT_HOME.
"""

from __future__ import annotations

import re

from rplat.errors import UserError

NAME_MAX = 200
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
NAME_RULE = "1 to 200 letters, digits, '.', '_' or '-', starting with a letter or digit, without '..'"

# Integer columns (ids, a job's priority, max_attempts, gpus) are 32-bit on PostgreSQL and 64-bit on SQLite: an id
# is what both hold (past 2^31-1 PostgreSQL refuses the query; past 2^63-1 SQLite's driver overflows).
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
ID_MAX = INT32_MAX
# What one job may ask of a runner, and what one command may hold in memory.
MAX_GPUS = 64
MAX_ATTEMPTS = 1000
MAX_RESAMPLES = 1_000_000  # a float each: 8 MB
MAX_REPEATS = 10_000
SEED_MAX = 2**32 - 1  # what every random generator rplat seeds (numpy, random, torch) accepts
HOST_MAX = 200
MAX_LISTED = 1_000_000  # rows one listing prints (`rplat jobs ls --limit`)
MAX_SLOTS = 256  # jobs one runner runs at once, each a process
MAX_WORKERS = 256  # processes one import starts
MAX_EXAMPLES = 1_000  # documents a report shows per side
MAX_GENERATED = 10_000_000  # problems one `rplat generate` writes
MAX_SLURM_RUNNERS = 10_000  # runner tasks of one Slurm array (and of `rplat slurm scale`)


def _shown(value: str, limit: int = 40) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "…")


def name_problem(value: str) -> str | None:
    """Why `value` is not a name (a clause), or None if it is one."""
    if not value:
        return "is empty"
    if len(value) > NAME_MAX:
        return f"is {len(value)} characters long, at most {NAME_MAX}"
    if not NAME_PATTERN.fullmatch(value) or ".." in value:
        return f"{_shown(value)} is not a name rplat accepts"
    return None


def check_name(value: str, what: str) -> str:
    """`value` if it is a name, else a UserError naming `what` (e.g. "--dataset", "model name")."""
    problem = name_problem(value)
    if problem is None:
        return value
    if problem.startswith("is "):
        raise UserError(f"{what} {problem} (names are {NAME_RULE}); choose another name, e.g. smollm2-135m.")
    suggestion = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9._-]+", "-", value)).lstrip("._-")[:NAME_MAX]
    instead = f"e.g. {suggestion!r}" if suggestion else "e.g. 'smollm2-135m'"
    raise UserError(f"{what} {problem} (names are {NAME_RULE}); choose another name, {instead}.")


def id_problem(value: int) -> str | None:
    """Why `value` is not an id, or None."""
    if not 1 <= value <= ID_MAX:
        return f"{value} is not an id (ids run from 1 to {ID_MAX})"
    return None


def check_id(value: int, what: str) -> int:
    problem = id_problem(value)
    if problem is not None:
        raise UserError(f"{what} {problem}; give the id of an existing row.")
    return value


def check_host(value: str, what: str) -> str:
    """A machine name: not empty, no whitespace or control characters, at most HOST_MAX characters."""
    if not value.strip():
        raise UserError(f"{what} is empty; give a host name, e.g. {what} gpu01 (or leave the option out).")
    if len(value) > HOST_MAX:
        raise UserError(f"{what} is {len(value)} characters long, at most {HOST_MAX}; give a host name.")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise UserError(f"{what} {_shown(value)} holds whitespace or control characters; give a host name, "
                        f"e.g. {what} gpu01.")
    return value


def parse_run(text: str) -> tuple[int, str | None]:
    """`rplat report compare`'s run spec JOB or JOB:METHOD as (job id, method or None)."""
    job, sep, method = text.strip().partition(":")
    if not (job.isascii() and job.isdigit()) or (sep and not method):
        raise UserError(f"run {text!r} is not JOB or JOB:METHOD; give an evaluate or aggregate job id, optionally "
                        "with the method to compare, e.g. 12 or 12:asc-f3.")
    return check_id(int(job), f"run {text!r}:"), method or None
