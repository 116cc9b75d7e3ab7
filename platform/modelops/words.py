"""A fixed vocabulary and seeded texts over it (pure, stdlib only): the parity gate's text samples
(`conversion.text_parity`), the load test's BYTES inputs (`bench.loadtest`), and the words of the
seeded models' WordPiece vocabulary (`demo.text_models`, which adds the special tokens)."""

from __future__ import annotations

import random

POSITIVE = ["good", "great", "fine", "love", "best"]
NEGATIVE = ["bad", "awful", "poor", "hate", "worst"]
FILLER = ["the", "a", "movie", "is", "was", "it", "and", "not", "very", "story"]
WORDS = POSITIVE + NEGATIVE + FILLER + [f"w{i}" for i in range(60)]


def random_text(rng: random.Random, min_words: int = 1, max_words: int = 40) -> str:
    """One text of MIN_WORDS..MAX_WORDS words drawn from WORDS with RNG."""
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words)))


def seeded_texts(n: int, seed: int = 0, min_words: int = 1, max_words: int = 40) -> list[str]:
    """N texts of MIN_WORDS..MAX_WORDS words drawn from WORDS, the same for the same SEED."""
    rng = random.Random(seed)
    return [random_text(rng, min_words, max_words) for _ in range(n)]
