"""Turning Dust into Gold's job family: chains, the negative/NAT/NCE models and baselines, the ranker, ASC."""
