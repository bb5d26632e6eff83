"""Job runners: the claim/heartbeat loop and one module per job family, each a `JobKind` with its handler."""
