"""RATIONALYST's job family: prefilter, extract and score rationales, train the rationalyst, solve."""
