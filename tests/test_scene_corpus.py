"""The generated scene-caption corpus: unique, seeded, caption-like, with near-duplicates, paired with real images."""

from __future__ import annotations

import io
import re
import tarfile

import numpy as np
import pytest
from PIL import Image

from xclr_prep import scene_captions
from xclr_prep.sample_corpora import fashion_mnist, write_scene_tars


@pytest.fixture(scope="module")
def grammar():
    return scene_captions.load_grammar()


@pytest.fixture(scope="module")
def texts(grammar):
    return scene_captions.captions(20_000, seed=0, grammar=grammar)


def test_captions_are_unique_and_the_seed_fixes_them(grammar, texts):
    assert len(set(texts)) == len(texts) == 20_000
    assert scene_captions.captions(500, seed=0, grammar=grammar) == texts[:500]
    other = scene_captions.captions(500, seed=1, grammar=grammar)
    assert len(set(other) & set(texts[:500])) < 25


def test_captions_are_caption_like(texts):
    words = np.array([len(t.split()) for t in texts])
    assert 7 <= words.mean() <= 12 and words.min() >= 4 and words.max() <= 16
    assert all(t == t.strip() and "  " not in t and "_" not in t for t in texts)
    # frequent words recur as in web captions; the article agrees with the next word
    last_words = [t.split()[-1] for t in texts]
    assert max(last_words.count(w) for w in set(last_words)) > 100
    joined = "\n".join(texts)
    assert joined.count(" an ") > 500
    assert not re.search(r"\ba [aeiou]", joined) and not re.search(r"\ban [^aeiou]", joined)


def test_a_share_of_captions_differ_from_another_by_one_word(texts):
    """Near-duplicates: captions equal to another one but for a single word (a variant's swapped slot)."""
    masked = {}
    for t in texts:
        words = t.split()
        for i in range(len(words)):
            masked.setdefault((len(words), i, " ".join(words[:i] + words[i + 1:])), set()).add(t)
    near = set().union(*(group for group in masked.values() if len(group) > 1))
    share = len(near) / len(texts)
    assert 0.25 <= share <= 0.6, share  # 0.11 without variants (chance), 0.42 with


def test_tars_pair_each_caption_with_a_fashion_mnist_image(tmp_path, grammar):
    tars = write_scene_tars(tmp_path, 250, seed=0, per_tar=100)
    assert [t.name for t in tars] == ["00000.tar", "00001.tar", "00002.tar"]
    texts = scene_captions.captions(250, seed=0, grammar=grammar)
    images = fashion_mnist("train")[0]
    sample = 0
    for path in tars:
        with tarfile.open(path) as tar:
            names = tar.getnames()
            keys = sorted({n.rsplit(".", 1)[0] for n in names})
            assert len(names) == 2 * len(keys)
            for key in keys:
                assert tar.extractfile(f"{key}.txt").read().decode() == texts[sample]
                image = np.asarray(Image.open(io.BytesIO(tar.extractfile(f"{key}.png").read())))
                assert np.array_equal(image, images[sample])
                sample += 1
    assert sample == 250
