"""The offline text generator: a word-level Markov chain trained on the public-domain text in `_corpus/`.

The chain predicts the next token from the two before it (a 3-gram model) and backs off to the
one before it when that pair was never seen. Tokens are lower-cased words and the punctuation
marks . , ; : ! ? ; a paragraph's end is the chain's end condition.
"""

from __future__ import annotations

import functools
import math
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

MODEL_NAME = "offline-markov-3gram"
CORPUS_DIR = Path(__file__).parent / "_corpus"
START = "<s>"
END = "</s>"
# Words and the punctuation the chain keeps; quotes, dashes and brackets are dropped from training.
MODEL_TOKEN = re.compile(r"[^\W_]+(?:['\-][^\W_]+)*|[.,;:!?]")
# Any word or single punctuation mark: how prompts and generated text are counted.
COUNT_TOKEN = re.compile(r"\w+(?:['\-]\w+)*|[^\w\s]")
NO_SPACE_BEFORE = frozenset(".,;:!?")
SENTENCE_END = frozenset({START, ".", "!", "?"})
# Next-token candidates that also occur in the prompt weigh this much more, to stay on topic.
PROMPT_WORD_BOOST = 4.0
MIN_BOOSTED_WORD = 4  # shorter words ("the", "and") are everywhere: boosting them only adds loops

Context = tuple[str, str]


def count_tokens(text: str) -> int:
    """How many tokens (words and punctuation marks) `text` holds."""
    return len(COUNT_TOKEN.findall(text))


def model_tokens(text: str) -> list[str]:
    """The tokens of `text` as the chain knows them (lower-cased)."""
    return [token.lower() for token in MODEL_TOKEN.findall(text)]


@dataclass
class Generation:
    """Tokens produced by one run, and why it stopped ("stop" at an end condition, else "length")."""

    tokens: list[str]
    finish_reason: str
    text: str = ""


@dataclass
class MarkovChain:
    """Counts of next tokens after each (previous, current) pair and after each single token."""

    pairs: dict[Context, Counter[str]] = field(default_factory=dict)
    singles: dict[str, Counter[str]] = field(default_factory=dict)
    # How each lower-cased token is most often written ("england" -> "England").
    spellings: dict[str, str] = field(default_factory=dict)

    @classmethod
    def train(cls, paragraphs: Iterable[str]) -> MarkovChain:
        """Count every 3-gram and 2-gram of each paragraph, framed by start and end markers."""
        chain = cls()
        written: dict[str, Counter[str]] = {}
        for paragraph in paragraphs:
            surface = MODEL_TOKEN.findall(paragraph)
            # A sentence's first word is capitalised by position, not by spelling: leave it out.
            for previous, word in zip([START, *surface], surface, strict=False):
                if previous not in SENTENCE_END:
                    written.setdefault(word.lower(), Counter())[word] += 1
            tokens = [START, START, *(word.lower() for word in surface), END]
            if len(tokens) == 3:
                continue
            for before, current, following in zip(tokens, tokens[1:], tokens[2:], strict=False):
                chain.pairs.setdefault((before, current), Counter())[following] += 1
                chain.singles.setdefault(current, Counter())[following] += 1
        chain.spellings = {token: forms.most_common(1)[0][0] for token, forms in written.items()}
        return chain

    def knows(self, token: str) -> bool:
        """Whether `token` was seen in training (so it can start a continuation)."""
        return token in self.singles

    def start_context(self, prompt: Sequence[str]) -> Context:
        """Continue from the last prompt token the chain knows, or from a paragraph start."""
        for index in range(len(prompt) - 1, -1, -1):
            if self.knows(prompt[index]):
                before = prompt[index - 1] if index > 0 else START
                return (before, prompt[index])
        return (START, START)

    def candidates(self, context: Context) -> Counter[str]:
        """Next-token counts after `context`, backing off to its last token alone."""
        found = self.pairs.get(context) or self.singles.get(context[1])
        return found if found else self.pairs[(START, START)]

    def generate(
        self,
        prompt: Sequence[str],
        max_tokens: int,
        temperature: float,
        rng: random.Random,
        topic: Sequence[str] = (),
        on_token: Callable[[int], None] = lambda count: None,
    ) -> Generation:
        """Produce up to `max_tokens` tokens after `prompt`; temperature 0 always takes the likeliest."""
        start = context = self.start_context(prompt)
        boosted = {word for word in (*prompt, *topic) if len(word) >= MIN_BOOSTED_WORD and word.isalpha()}
        tokens: list[str] = []
        finish_reason = "length"
        while len(tokens) < max_tokens:
            token = self._pick(self.candidates(context), temperature, rng, boosted)
            if token == END:
                finish_reason = "stop"
                break
            tokens.append(token)
            on_token(len(tokens))
            context = (context[1], token)
        text = detokenize([self.spellings.get(token, token) for token in tokens], start[1] in SENTENCE_END)
        return Generation(tokens, finish_reason, text)

    @staticmethod
    def _pick(counts: Counter[str], temperature: float, rng: random.Random, boosted: set[str]) -> str:
        weights = [count * (PROMPT_WORD_BOOST if token in boosted else 1.0) for token, count in counts.items()]
        tokens = list(counts)
        if temperature == 0:
            # max() keeps the first of equal weights: ties go to the token seen first in training.
            return tokens[max(range(len(tokens)), key=weights.__getitem__)]
        # Raising counts to 1/T sharpens (T < 1) or flattens (T > 1) the distribution. Computed as
        # (w / w_max) ** (1/T) = exp(log(w / w_max) / T): every term lies in [0, 1], so no temperature
        # overflows (w ** 1e300 did); a tiny one leaves only the likeliest tokens with any weight.
        heaviest = max(weights)
        return rng.choices(tokens, weights=[math.exp(math.log(weight / heaviest) / temperature)
                                            for weight in weights])[0]


def detokenize(tokens: Sequence[str], capitalize_first: bool) -> str:
    """Join tokens into prose: no space before punctuation, capitals after a sentence ends."""
    words: list[str] = []
    capitalize = capitalize_first
    for token in tokens:
        word = token[:1].upper() + token[1:] if capitalize else token
        if words and token not in NO_SPACE_BEFORE:
            words.append(" ")
        words.append(word)
        if token in NO_SPACE_BEFORE:
            capitalize = token in SENTENCE_END
        else:
            capitalize = False
    return "".join(words)


def corpus_paragraphs(directory: Path = CORPUS_DIR) -> list[str]:
    """The paragraphs of every .txt file in `directory`, '#' comment lines left out."""
    paragraphs: list[str] = []
    for path in sorted(directory.glob("*.txt")):
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
        paragraphs += [block.strip() for block in "\n".join(lines).split("\n\n") if block.strip()]
    return paragraphs


@functools.lru_cache(maxsize=1)
def default_chain() -> MarkovChain:
    """The chain trained on the shipped corpus, built on first use and then kept per process."""
    return MarkovChain.train(corpus_paragraphs())
