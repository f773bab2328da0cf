"""What the captions know: the emoji study's subcategory kNN computed on caption embeddings instead of image features.

Every held-out query and every training image is represented by its caption's embedding (the embed stage's output
for the training vendors; a query's caption text is looked up there, as names are identical across vendors). The
score is `xclr_eval`'s weighted kNN (k = 20) by subcategory, the primary metric of the study, so it is the figure an
image encoder would reach if it mapped every image exactly onto its caption: the ceiling of what caption similarity
can teach. "Without the same caption" removes each query's own caption from its database, leaving graded similarity
alone. Queries whose caption the training vendors lack are skipped and counted.

    .venv/bin/python benchmarks/caption_ceiling.py runs/study/emoji/heldout-openmoji/embed \
        runs/study/emoji/heldout-openmoji/tars/openmoji
"""

from __future__ import annotations

import sys

import numpy as np

from xclr_eval.metrics import knn_accuracy
from xclr_schemas.embed_dir import load_embed_dir
from xclr_train.evalsets import load_eval_set


def main(embed_dir: str, heldout_tars: str) -> None:
    embed = load_embed_dir(embed_dir)
    vectors = embed.embeddings.astype(np.float32)
    db_caption = embed.samples.column("caption_id").to_numpy()
    db_label = embed.samples.column("label").to_numpy()
    caption_id = {text: i for i, text in enumerate(embed.captions)}
    queries = load_eval_set(heldout_tars)
    found = [(caption_id[text], label) for text, label in zip(queries.captions, queries.labels) if text in caption_id]
    q_caption, q_label = (np.array(column) for column in zip(*found))
    print(f"{len(found)} queries ({len(queries.labels) - len(found)} skipped: caption_not_in_database; "
          f"samples the reader skipped: {dict(queries.skipped)}), "
          f"{len(db_caption)} database images, {len(embed.captions)} captions")
    ceiling = knn_accuracy(vectors[db_caption], db_label, vectors[q_caption], q_label)
    print(f"caption-embedding kNN by subcategory: {ceiling:.3f}")
    # graded similarity alone: each query against the database without its own caption (same-label pairs unchanged)
    correct = 0
    for caption in np.unique(q_caption):
        mine, others = q_caption == caption, db_caption != caption
        correct += knn_accuracy(vectors[db_caption[others]], db_label[others], vectors[q_caption[mine]],
                                q_label[mine]) * mine.sum()
    print(f"the same, without the query's own caption in the database: {correct / len(q_caption):.3f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
