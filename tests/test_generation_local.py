"""The default teacher, offline: SmolLM2-135M-Instruct writes a short dialogue turn by turn."""

from __future__ import annotations

import os

import pytest

from curation.models import Dialogue, Scenario
from generation import runner
from generation.models import GenerationJob, new_job
from generation.teacher import LOCAL_MODEL_NAME, Sampling, TeacherConfig
from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("vocabulary_db", "seeds")]


def test_local_model_writes_a_dialogue_in_turns_mode(settings):
    settings.MODELS_DIR = os.environ.get("EXTES_TEST_MODELS_DIR", ROOT / "var" / "test-models")
    job = new_job(
        GenerationJob.Kind.SELFCHAT,
        teacher=TeacherConfig("local", LOCAL_MODEL_NAME).as_dict(),
        sampling=Sampling(temperature=0.7, top_p=0.9, max_tokens=80, seed=7).as_dict(),
        scenarios=[Scenario.objects.get(name="Academic Stress")],
        mode=GenerationJob.Mode.TURNS,
        exchanges=2,
        per_scenario=1,
        duplicate_threshold=None,
    )
    job = runner.run_inline(job.pk, concurrency=1)
    progress = job.progress()
    assert job.status == GenerationJob.Status.COMPLETED, (
        job.error,
        list(job.failures.values_list("failure_class", "detail")),
    )
    dialogue = Dialogue.objects.get(origin="generated")
    assert [t.role for t in dialogue.turns.order_by("index")] == ["seeker", "supporter"] * 2
    assert all(t.text.strip() for t in dialogue.turns.all())
    assert dialogue.turns.filter(role="supporter", strategy__isnull=False).count() == 2
    assert dialogue.description
    assert dialogue.provenance["teacher"]["backend"] == "local"
    assert progress["calls"] >= 5 and progress["completion_tokens"] > 0
