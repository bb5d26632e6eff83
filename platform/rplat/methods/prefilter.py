"""RATIONALYST A1: preprocess, embed, centroid of the reference set, keep documents near it."""

from __future__ import annotations

import re
import string

import torch

# NLTK's English stopword list (179 words), inlined because the NLTK corpus download needs the network.
NLTK_ENGLISH_STOPWORDS = frozenset([
    "i", "me", "my", "myself", "we", "our", "ours", "ourselves", "you", "you're", "you've", "you'll", "you'd",
    "your", "yours", "yourself", "yourselves", "he", "him", "his", "himself", "she", "she's", "her", "hers",
    "herself", "it", "it's", "its", "itself", "they", "them", "their", "theirs", "themselves", "what", "which",
    "who", "whom", "this", "that", "that'll", "these", "those", "am", "is", "are", "was", "were", "be", "been",
    "being", "have", "has", "had", "having", "do", "does", "did", "doing", "a", "an", "the", "and", "but", "if",
    "or", "because", "as", "until", "while", "of", "at", "by", "for", "with", "about", "against", "between", "into",
    "through", "during", "before", "after", "above", "below", "to", "from", "up", "down", "in", "out", "on", "off",
    "over", "under", "again", "further", "then", "once", "here", "there", "when", "where", "why", "how", "all",
    "any", "both", "each", "few", "more", "most", "other", "some", "such", "no", "nor", "not", "only", "own",
    "same", "so", "than", "too", "very", "s", "t", "can", "will", "just", "don", "don't", "should", "should've",
    "now", "d", "ll", "m", "o", "re", "ve", "y", "ain", "aren", "aren't", "couldn", "couldn't", "didn", "didn't",
    "doesn", "doesn't", "hadn", "hadn't", "hasn", "hasn't", "haven", "haven't", "isn", "isn't", "ma", "mightn",
    "mightn't", "mustn", "mustn't", "needn", "needn't", "shan", "shan't", "shouldn", "shouldn't", "wasn", "wasn't",
    "weren", "weren't", "won", "won't", "wouldn", "wouldn't"
])
# After punctuation is stripped, "don't" reads "dont": drop those forms too, as the reference script effectively does.
_STOPWORDS = NLTK_ENGLISH_STOPWORDS | {w.replace("'", "") for w in NLTK_ENGLISH_STOPWORDS}
_PUNCT = str.maketrans("", "", string.punctuation)
_SPACE = re.compile(r"\s+")


def preprocess(text: str) -> str:
    """Lowercase, strip string.punctuation, collapse whitespace, drop English stopwords (reference and documents)."""
    words = _SPACE.sub(" ", text.lower().translate(_PUNCT)).strip().split(" ")
    return " ".join(w for w in words if w and w not in _STOPWORDS)


def reference_text(question: str, solution: str | None) -> str:
    """GSM8K-style reference entry: `question + "\\n" + answer`."""
    return question if not solution else f"{question}\n{solution}"


def centroid(embeddings: torch.Tensor) -> torch.Tensor:
    """c = mean_i emb(ref_i): a single vector."""
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise ValueError("the reference set is empty: nothing to take a centroid of")
    return embeddings.float().mean(dim=0)


def cosine_to(center: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """cos(c, emb(doc)) for each row of `embeddings`."""
    return torch.nn.functional.cosine_similarity(embeddings.float(), center.float().unsqueeze(0), dim=1)


def keep(cosines: torch.Tensor, n_chars: torch.Tensor, threshold: float, max_chars: int | None) -> torch.Tensor:
    """Keep iff cos >= threshold and (when max_chars is set) the document has at most max_chars characters."""
    passed = cosines >= threshold
    if max_chars is not None:
        passed &= n_chars <= max_chars
    return passed
