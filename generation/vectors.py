"""Dialogue embeddings stored in the database (generation.models.DialogueVector).

`vectors_for(ids)` returns each dialogue's vector: read when stored, otherwise computed in
batches (one embed call for all the missing ones) and stored, so that no other worker process
computes it again. A generated dialogue's vector, computed by its gates before it was stored,
is stored with it (`store`).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

MODEL = "all-MiniLM-L6-v2"
BATCH = 64


def _decode(data: bytes | memoryview) -> np.ndarray:
    return np.frombuffer(bytes(data), dtype=np.float32)


def store(dialogue_id: int, content_hash: str, vector: np.ndarray) -> None:
    """In the caller's transaction (and writing() section, on SQLite)."""
    from generation.models import DialogueVector

    DialogueVector.objects.bulk_create(
        [
            DialogueVector(
                dialogue_id=dialogue_id,
                model=MODEL,
                content_hash=content_hash,
                vector=np.asarray(vector, dtype=np.float32).tobytes(),
            )
        ],
        ignore_conflicts=True,
    )


def vectors_for(ids: Iterable[int]) -> dict[int, np.ndarray]:
    """Vectors of these dialogues, by id: stored ones read, missing ones computed and stored."""
    from django.db import transaction

    from curation.models import Dialogue, Turn
    from generation.embeddings import dialogue_text, get_embedder
    from generation.models import DialogueVector, writing

    wanted = list(dict.fromkeys(ids))
    found: dict[int, np.ndarray] = {}
    hashes = dict(Dialogue.objects.filter(pk__in=wanted).values_list("pk", "content_hash"))
    for pk, digest, data in DialogueVector.objects.filter(
        dialogue_id__in=wanted, model=MODEL
    ).values_list("dialogue_id", "content_hash", "vector"):
        if hashes.get(pk) == digest:  # computed from the text the dialogue still has
            found[pk] = _decode(data)
    missing = [pk for pk in wanted if pk not in found and pk in hashes]
    for start in range(0, len(missing), BATCH * 4):
        chunk = missing[start : start + BATCH * 4]
        descriptions = dict(Dialogue.objects.filter(pk__in=chunk).values_list("pk", "description"))
        texts: dict[int, list[str]] = {pk: [] for pk in chunk}
        for dialogue_id, text in (
            Turn.objects.filter(dialogue_id__in=chunk)
            .order_by("dialogue_id", "index")
            .values_list("dialogue_id", "text")
        ):
            texts[dialogue_id].append(text)
        vectors = get_embedder().embed(
            [dialogue_text(descriptions.get(pk, ""), texts[pk]) for pk in chunk], batch_size=BATCH
        )
        with writing(), transaction.atomic():
            DialogueVector.objects.filter(dialogue_id__in=chunk).delete()  # stale ones, if any
            DialogueVector.objects.bulk_create(
                [
                    DialogueVector(
                        dialogue_id=pk,
                        model=MODEL,
                        content_hash=hashes[pk],
                        vector=vector.tobytes(),
                    )
                    for pk, vector in zip(chunk, vectors, strict=True)
                ],
                ignore_conflicts=True,
            )
        found.update(zip(chunk, vectors, strict=True))
    return found
