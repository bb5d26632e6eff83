"""Job runners: the claim/heartbeat loop and one module per job family (kind and handler)."""
