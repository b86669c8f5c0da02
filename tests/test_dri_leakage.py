"""DRI candidates that repeat the prompt instead of answering it (issue 15, item 3): the mask
marker, a role tag, a template placeholder or a run of words from our instructions is its own
failure class, counted on the job, and never becomes a candidate. Real supporter turns pass: 0
of the seeds' 353 and 1 of ESConv's 12,759 train-split supporter turns are taken for leakage
(bench/dri_leakage.py)."""

from __future__ import annotations

import dataclasses

import pytest

from curation.models import Candidate, Dialogue
from generation.inpainting import prompt_leakage

LEAKS = [
    "Write the supporter reply that belongs where [MASKED] is.",
    "You help build training data for emotional-support conversations, so here it is.",
    "That sounds hard. Seeker: thanks, it is.",
    "<|im_start|>assistant I hear you.",
    "{Your Name}, I'd love to talk about [insert message here].",
    "That sounds hard. [Reflect the seeker's feeling]",
]


def test_what_counts_as_leakage():
    for text in LEAKS:
        assert prompt_leakage(text), text
    for text in [
        "It sounds like you carried a lot this week. What helped, even a little?",
        "You said earlier that your sister supports you: could you tell her?",
        "I am here with you. Take your time.",
        "That is a lot (and it is okay to feel it). 3/10 today is still a step.",
    ]:
        assert prompt_leakage(text) is None, text


@pytest.mark.django_db(transaction=True)  # the job's threads write through their own connections
def test_a_dri_job_drops_leaked_fills_and_counts_them(settings, vocabulary_db, seeds):
    from generation.models import GenerationFailure
    from tests.fake_teacher import FakeTeacher, run_dri_job

    settings.TEACHER_MAX_RETRIES = 0
    first = Dialogue.objects.filter(origin="seed", safety_status="none").order_by("id").first()
    Dialogue.objects.filter(pk=first.pk).update(status="accepted")
    with FakeTeacher() as fake:
        fills = [LEAKS[0], "Take your time; I am here.", LEAKS[2], "What helps on days like this?",
                 "You have done a lot today.", "Tell me more about it."]  # fmt: skip
        fake.pool = dataclasses.replace(fake.pool, supporter=fills)
        job = run_dri_job(fake.url, concurrency=1)
    texts = set(Candidate.objects.values_list("text", flat=True))
    assert texts and not texts & set(LEAKS)
    leaked = GenerationFailure.objects.filter(job_id=job.pk, failure_class="prompt_leakage")
    assert leaked.count() >= 1
    job.refresh_from_db()
    assert job.progress()["failures"].get("prompt_leakage", 0) == leaked.count()
