"""Where rplat may write: under RPLAT_HOME, or where the user's own `--out` points.

`under(root, *parts)` is the one check every write under the store's home goes through (server and job logs,
adapters and models, checkpoints, run directories, Slurm scripts and logs): the parts are joined to the resolved
root and normalised without following links, and a result outside the root (a part that is absolute or climbs out
with `..`, e.g. a model name that reached the database some other way) is refused in one sentence before anything
is written. Links that the user made inside RPLAT_HOME (checkpoints on another disk) are theirs and are followed.
"""

from __future__ import annotations

import os
from pathlib import Path

from rplat.errors import UserError


def under(root: Path | str, *parts: str | Path) -> Path:
    """root/parts, absolute and normalised; a UserError if it does not lie strictly inside `root`."""
    base = Path(root).resolve()
    joined = Path(os.path.normpath(base.joinpath(*parts)))
    if "\x00" in str(joined) or joined == base or not joined.is_relative_to(base):
        shown = "/".join(str(p) for p in parts)
        raise UserError(f"the path {shown!r} would lie outside {base}; rplat writes only under RPLAT_HOME (or an "
                        "explicit --out), so rename what it is named after to a name without '/' or '..'.")
    return joined


def model_dir(home: Path | str, name: str) -> Path:
    """RPLAT_HOME/artifacts/models/<name>, where a job writes the model it registers as `name`: the name is
    checked to be a name (`rplat.boundary`) and the directory to lie under RPLAT_HOME."""
    from rplat.boundary import check_name

    return under(home, "artifacts", "models", check_name(name, "the name of the model the job registers"))
