"""User-facing errors: one clear sentence each, mapped to CLI exit code 2."""


class UserError(Exception):
    """A mistake the user can fix (bad input, bad configuration); printed as one sentence, exit code 2."""

    exit_code = 2


class LeaseLost(Exception):
    """This runner no longer holds the job's lease; its writes are fenced out."""


class JobCancelled(Exception):
    """The job was cancelled while it ran."""


class JobInterrupted(Exception):
    """The runner is shutting down (SIGTERM); the job is released for another runner."""
