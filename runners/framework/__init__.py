"""The runner framework: the claim/heartbeat loop, a job's context, the per-job child process, probe."""
