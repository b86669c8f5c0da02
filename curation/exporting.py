"""Write dialogues in the exact ExTES format, streamed in chunks so memory stays flat."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import IO, Any

from django.db.models import QuerySet

from curation.models import Dialogue, Turn

CHUNK = 1000


def extes_records(dialogues: QuerySet[Dialogue]) -> Iterator[dict[str, Any]]:
    """ExTES records in id order; two queries per chunk of dialogues, no model instances. A
    settled dialogue is written in its final state (curation.settlement), others as written."""
    rows = dialogues.order_by("id").values_list("id", "scenario__name", "description")
    last_id = 0
    while True:
        chunk = list(rows.filter(id__gt=last_id)[:CHUNK])
        if not chunk:
            return
        last_id = chunk[-1][0]
        content: dict[int, list[dict[str, str]]] = {pk: [] for pk, _, _ in chunk}
        turns = (
            Turn.objects.filter(dialogue_id__in=content)
            .order_by("dialogue_id", "index")
            .values_list(
                "dialogue_id",
                "role",
                "text",
                "strategy__name",
                "final_text",
                "final_strategy__name",
            )
        )
        for dialogue_id, role, text, strategy, final_text, final in turns:
            if final_text is not None:  # settled: its final state (curation.settlement)
                text, strategy = final_text, final
            if role == Turn.Role.SEEKER:
                content[dialogue_id].append({"User": text})
            else:
                content[dialogue_id].append({"AI Strategy": strategy or "", "AI": text})
        for pk, scene, description in chunk:
            yield {"scene": scene, "description": description, "content": content[pk]}


def write_extes(dialogues: QuerySet[Dialogue], out: IO[str]) -> int:
    """Write a JSON array, one indented record at a time; returns the number written."""
    count = 0
    out.write("[")
    for record in extes_records(dialogues):
        out.write(",\n  " if count else "\n  ")
        out.write(json.dumps(record, ensure_ascii=False, indent=2).replace("\n", "\n  "))
        count += 1
    out.write("\n]\n" if count else "]\n")
    return count
