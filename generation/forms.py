from __future__ import annotations

from typing import Any, cast

from django import forms

from curation.models import Dialogue, Scenario
from generation.models import GenerationJob
from generation.teacher import LOCAL_MODEL_NAME, Sampling, TeacherConfig


class JobForm(forms.Form):
    kind = forms.ChoiceField(choices=GenerationJob.Kind.choices, widget=forms.RadioSelect)
    token = forms.CharField(widget=forms.HiddenInput)

    # Teacher and sampling
    teacher = forms.ChoiceField(choices=[], help_text="")
    model = forms.CharField(required=False, help_text="Leave empty for the configured default.")
    temperature = forms.FloatField(initial=Sampling.temperature, min_value=0, max_value=2)
    top_p = forms.FloatField(initial=Sampling.top_p, min_value=0.01, max_value=1)
    max_tokens = forms.IntegerField(initial=Sampling.max_tokens, min_value=16, max_value=8192)
    seed = forms.IntegerField(required=False)
    duplicate_threshold = forms.FloatField(
        initial=0.92,
        min_value=0,
        max_value=1,
        required=False,
        help_text="Cosine similarity at which a new item counts as a near-duplicate; empty turns the filter off.",
    )

    # Self-chat
    scenarios = forms.ModelMultipleChoiceField(
        queryset=Scenario.objects.filter(is_official=True).order_by("name"),
        required=False,
        widget=forms.CheckboxSelectMultiple,
    )
    per_scenario = forms.IntegerField(
        initial=2, min_value=1, max_value=1000, label="Dialogues per scenario, per round"
    )
    rounds = forms.IntegerField(initial=1, min_value=1, max_value=20)
    mode = forms.ChoiceField(choices=GenerationJob.Mode.choices, initial="dialogue")
    examples_per_prompt = forms.IntegerField(initial=1, min_value=1, max_value=5)
    exchanges = forms.IntegerField(
        initial=6, min_value=2, max_value=12, help_text="Turn-by-turn mode: seeker/supporter pairs."
    )
    strategy_policy = forms.ChoiceField(
        choices=[("target", "Sample from the ExTES shares"), ("teacher", "Let the teacher choose")],
        initial="target",
    )

    # DRI
    dri_source_status = forms.ChoiceField(
        choices=Dialogue.Status.choices, initial="accepted", label="Take dialogues that are"
    )
    dri_dialogue_limit = forms.IntegerField(
        initial=20, min_value=1, max_value=100_000, label="How many dialogues"
    )
    dri_mask = forms.ChoiceField(
        choices=[
            ("random", "k random supporter turns"),
            ("all", "every supporter turn"),
            ("strategy", "turns with chosen strategies"),
        ],
        initial="random",
        label="Turns to mask",
    )
    dri_turns_per_dialogue = forms.IntegerField(initial=1, min_value=1, max_value=20, label="k")
    dri_strategies = forms.CharField(required=False, label="Strategies (comma-separated)")
    dri_candidates = forms.IntegerField(
        initial=4, min_value=1, max_value=16, label="Candidates per masked turn"
    )
    dri_right_context = forms.BooleanField(
        initial=True, required=False, label="Show the turns after the gap too"
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        configured = TeacherConfig.from_env()
        choices = [("local", "Local model (SmolLM2-135M-Instruct, offline)")]
        if configured.backend == "http":
            choices.insert(0, ("http", f"{configured.model} at {configured.base_url}"))
        teacher = cast(forms.ChoiceField, self.fields["teacher"])
        teacher.choices = choices
        teacher.initial = choices[0][0]
        # A 135M local model rarely writes a whole dialogue as valid JSON: turn by turn works.
        self.fields["mode"].initial = "dialogue" if configured.backend == "http" else "turns"

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("kind") == GenerationJob.Kind.SELFCHAT and not data.get("scenarios"):
            self.add_error("scenarios", "Pick at least one scenario.")
        return data

    def teacher_config(self) -> dict[str, str]:
        configured = TeacherConfig.from_env()
        data = self.cleaned_data
        if data["teacher"] == "http":
            return TeacherConfig(
                "http", data["model"] or configured.model, configured.base_url
            ).as_dict()
        return TeacherConfig("local", LOCAL_MODEL_NAME).as_dict()

    def sampling(self) -> dict[str, Any]:
        data = self.cleaned_data
        return Sampling(
            data["temperature"], data["top_p"], data["max_tokens"], data["seed"]
        ).as_dict()

    def job_options(self) -> dict[str, Any]:
        data = self.cleaned_data
        common = {
            "duplicate_threshold": data["duplicate_threshold"] or None,
            "request_token": data["token"],
        }
        if data["kind"] == GenerationJob.Kind.DRI:
            strategies = [s.strip() for s in (data["dri_strategies"] or "").split(",") if s.strip()]
            return (
                common
                | {
                    k: data[k]
                    for k in (
                        "dri_source_status",
                        "dri_dialogue_limit",
                        "dri_mask",
                        "dri_turns_per_dialogue",
                        "dri_candidates",
                        "dri_right_context",
                    )
                }
                | {"dri_strategies": strategies}
            )
        return common | {
            k: data[k]
            for k in (
                "per_scenario",
                "rounds",
                "mode",
                "examples_per_prompt",
                "exchanges",
                "strategy_policy",
            )
        }
