"""Scene captions: caption-like text at any scale, composed from WordNet by a seeded grammar.

The real offline corpora stop at 165k unique texts; this one writes millions, so every prep stage can be run at
CC3M-like sizes here. A caption is one of TEMPLATES with its slots filled from WordNet (`wordnet-base`):

- subject and object: single-word nouns of the lexicographer files animal, artifact, food, person and plant;
- place: single-word nouns of the files location and object (``beach``, ``terrace``);
- attribute: single-word adjectives of adj.all;
- relation and time: fixed phrases (RELATIONS, TIMES).

Words are drawn with probability proportional to their sense-tagged count in WordNet's ``cntlist.rev`` (senses
in the slot's files only) plus UNTAGGED_WEIGHT, so "man" and "dog" are frequent and "aardwolf" is rare, as in
web captions. Numbers and determiner-like adjectives (NOT_ATTRIBUTES) are left out.

Near-duplicates: with probability VARIANT_RATE a caption is a variant of an earlier one (chosen uniformly): one
noun slot is replaced by a synonym (another lemma of its synset) or a co-hyponym (another hyponym of its
hypernym), or its attribute is redrawn. Exact repeats are drawn again, so `captions(n)` returns n unique texts.
The same seed gives the same captions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

WORDNET_DIR = Path("/usr/share/wordnet")
SUBJECT_FILES = ("05", "06", "13", "18", "20")  # noun.animal, artifact, food, person, plant
PLACE_FILES = ("15", "17")  # noun.location, noun.object
ATTRIBUTE_FILES = ("00",)  # adj.all
NOT_ATTRIBUTES = {"cardinal", "ordinal", "one", "second", "other", "such", "many", "own", "all", "same", "more",
                  "some", "several", "much", "no", "next", "only", "certain", "possible", "whole", "last", "first",
                  "enough", "few", "most", "less", "least", "each", "every", "both", "any", "various", "former",
                  "latter"}
UNTAGGED_WEIGHT = 0.05  # a word WordNet never saw tagged is that much as likely as one seen once
RELATIONS = ("on", "in", "next to", "in front of", "behind", "under", "near", "beside", "on top of", "with",
             "holding", "looking at", "walking past", "sitting on", "lying on", "standing in", "leaning against")
TIMES = ("at night", "at sunset", "at dawn", "in the rain", "in winter", "in summer", "on a sunny day", "indoors")
TEMPLATES = (
    "{a} {adj} {subj} {rel} the {place}",
    "{a} {subj} {rel} {a} {adj} {obj}",
    "{a} {adj} {subj} and {a} {obj} {rel} the {place}",
    "close-up of {a} {adj} {subj}",
    "{a} {subj} {rel} the {place} {time}",
    "photo of {a} {subj} {rel} {a} {obj} {time}",
    "{a} {adj} {subj} {rel} {a} {obj} in the {place}",
    "the {subj} {rel} {a} {adj} {obj}",
    "{a} {adj} {subj} {rel} {a} {adj} {obj} {time}",
    "{a} {subj} and {a} {adj} {obj} {rel} the {place} {time}",
)
VARIANT_RATE = 0.3
_WORD = re.compile(r"^[a-z][a-z-]*$")


@dataclass(frozen=True)
class Vocabulary:
    """Words of one slot kind: `words[i]` is drawn with probability `p[i]`; `synonyms[i]` and `siblings[i]` are
    indices of the words a variant may put in its place."""
    words: list[str]
    p: np.ndarray
    synonyms: list[list[int]]
    siblings: list[list[int]]


def _tag_counts(wordnet: Path) -> dict[tuple[str, str], int]:
    """(lemma, lexicographer file) -> sense-tagged count of the lemma's senses in that file (nouns, adjectives)."""
    counts: dict[tuple[str, str], int] = {}
    for line in (wordnet / "cntlist.rev").read_text(encoding="utf-8").splitlines():
        key, _, count = line.split(" ")
        lemma, sense = key.split("%", 1)
        if sense[0] in "135":  # noun, adjective, adjective satellite
            lexfile = sense.split(":")[1]
            counts[(lemma, lexfile)] = counts.get((lemma, lexfile), 0) + int(count)
    return counts


def _synsets(wordnet: Path, name: str) -> list[tuple[str, str, list[str], list[str]]]:
    """(offset, lexicographer file, lemmas, parent offsets) of each synset of data.`name`; a noun's parents are
    its hypernyms, an adjective satellite's its head (the "similar to" pointer)."""
    out = []
    for line in (wordnet / f"data.{name}").read_text(encoding="utf-8").splitlines():
        if line.startswith("  "):
            continue  # licence header
        fields = line.split(" | ", 1)[0].split(" ")
        n_lemmas = int(fields[3], 16)
        lemmas = [re.sub(r"\(.*\)$", "", w) for w in fields[4:4 + 2 * n_lemmas:2]]
        pointers = fields[5 + 2 * n_lemmas:]
        hypernyms = [pointers[i + 1] for i in range(0, len(pointers) - 3, 4) if pointers[i] in ("@", "@i", "&")]
        out.append((fields[0], fields[1], lemmas, hypernyms))
    return out


def _vocabulary(synsets: list[tuple[str, str, list[str], list[str]]], files: tuple[str, ...],
                counts: dict[tuple[str, str], int], excluded: set[str] = frozenset()) -> Vocabulary:
    """The single-word lemmas of the synsets of `files`, one entry per distinct word, weighted by their tagged
    count in those files plus UNTAGGED_WEIGHT. Synsets with a lemma or parent in `excluded` are left out."""
    heads = {offset: lemmas for offset, _, lemmas, _ in synsets}
    index: dict[str, int] = {}
    words: list[str] = []
    of_synset: dict[str, list[int]] = {}
    parents: dict[int, list[str]] = {}
    for offset, lexfile, lemmas, hypernyms in synsets:
        if lexfile not in files or excluded & {*lemmas, *(w for h in hypernyms for w in heads.get(h, []))}:
            continue
        members = []
        for lemma in lemmas:
            if _WORD.match(lemma) and lemma not in index:
                index[lemma] = len(words)
                words.append(lemma)
                parents[index[lemma]] = hypernyms
            if lemma in index:
                members.append(index[lemma])
        of_synset[offset] = members
    children: dict[str, list[int]] = {}
    for offset, _, _, hypernyms in synsets:
        for h in hypernyms:
            children.setdefault(h, []).extend(of_synset.get(offset, []))
    synonyms = [[] for _ in words]
    for members in of_synset.values():
        for w in members:
            synonyms[w].extend(m for m in members if m != w)
    siblings = [sorted({s for h in parents[w] for s in children.get(h, []) if s != w}) for w in range(len(words))]
    weight = np.array([UNTAGGED_WEIGHT + sum(counts.get((w, f), 0) for f in files) for w in words])
    return Vocabulary(words, weight / weight.sum(), synonyms, siblings)


@dataclass(frozen=True)
class Grammar:
    subjects: Vocabulary
    places: Vocabulary
    attributes: Vocabulary


def load_grammar(wordnet: Path = WORDNET_DIR) -> Grammar:
    counts = _tag_counts(wordnet)
    nouns = _synsets(wordnet, "noun")
    return Grammar(_vocabulary(nouns, SUBJECT_FILES, counts), _vocabulary(nouns, PLACE_FILES, counts),
                   _vocabulary(_synsets(wordnet, "adj"), ATTRIBUTE_FILES, counts, NOT_ATTRIBUTES))


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


SLOTS = ("template", "rel", "time", "subj", "obj", "place", "adj")  # the columns of a slots array
_BATCH = 65_536


def _render(g: Grammar, row: np.ndarray) -> str:
    template, rel, time, subj, obj, place, adj = row.tolist()
    words = {"subj": g.subjects.words[subj], "obj": g.subjects.words[obj], "place": g.places.words[place],
             "adj": g.attributes.words[adj], "rel": RELATIONS[rel], "time": TIMES[time]}
    # "a"/"an" agrees with the word after it: split the template at each {a}.
    parts = TEMPLATES[template].split("{a} ")
    text = parts[0].format(**words)
    for part in parts[1:]:
        rest = part.format(**words)
        text += f"{_article(rest)} {rest}"
    return text


def _sample(vocab: Vocabulary, rng: np.random.Generator, n: int) -> np.ndarray:
    return np.minimum(np.searchsorted(np.cumsum(vocab.p), rng.random(n)), len(vocab.words) - 1)


def _draw(g: Grammar, rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, len(SLOTS)) fresh slot values."""
    return np.stack([rng.integers(len(TEMPLATES), size=n), rng.integers(len(RELATIONS), size=n),
                     rng.integers(len(TIMES), size=n), _sample(g.subjects, rng, n), _sample(g.subjects, rng, n),
                     _sample(g.places, rng, n), _sample(g.attributes, rng, n)], axis=1)


def _vary(g: Grammar, row: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`row` with one noun swapped for a synonym or co-hyponym, or its attribute redrawn."""
    column = SLOTS.index(("subj", "obj", "place", "adj")[int(rng.integers(4))])
    vocab = {"subj": g.subjects, "obj": g.subjects, "place": g.places, "adj": g.attributes}[SLOTS[column]]
    w = int(row[column])
    pool = vocab.synonyms[w] + vocab.siblings[w] if vocab is not g.attributes else []
    row = row.copy()
    row[column] = pool[int(rng.integers(len(pool)))] if pool else int(_sample(vocab, rng, 1)[0])
    return row


def captions(n: int, seed: int = 0, grammar: Grammar | None = None) -> list[str]:
    """`n` unique scene captions, the same for the same seed."""
    g = grammar or load_grammar()
    rng = np.random.default_rng(seed)
    kept = np.empty((n, len(SLOTS)), dtype=np.int64)
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        fresh = _draw(g, rng, _BATCH)
        varied = rng.random(_BATCH) < VARIANT_RATE
        source = rng.random(_BATCH)  # which earlier caption a variant varies, as a fraction of those kept so far
        for i in range(_BATCH):
            row = _vary(g, kept[int(source[i] * len(out))], rng) if varied[i] and out else fresh[i]
            text = _render(g, row)
            if text not in seen:
                seen.add(text)
                kept[len(out)] = row
                out.append(text)
                if len(out) == n:
                    break
    return out
