from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from django import forms
from django.db.models import Count

from curation.models import Dialogue, Scenario
from generation.models import GenerationJob, dri_dialogues
from generation.teacher import LOCAL_MODEL_NAME, Sampling, TeacherConfig

# The fields of each fieldset of the new-job page, in order; the options of each kind of job.
TEACHER_FIELDS = (
    "teacher",
    "model",
    "temperature",
    "top_p",
    "max_tokens",
    "seed",
    "duplicate_threshold",
)
SELFCHAT_FIELDS = (
    "per_scenario",
    "rounds",
    "mode",
    "examples_per_prompt",
    "exchanges",
    "strategy_policy",
)
DRI_FIELDS = (
    "dri_source_status",
    "dri_dialogue_limit",
    "dri_mask",
    "dri_turns_per_dialogue",
    "dri_strategies",
    "dri_candidates",
    "dri_right_context",
)


def evaluated_jobs() -> Any:
    """Finished training jobs with scored replies, newest first: what a round can target."""
    from training.models import TrainingJob

    return (
        TrainingJob.objects.filter(status=TrainingJob.Status.DONE)
        .exclude(samples=[])
        .select_related("release")
        .order_by("-id")
    )


def dialogues_by_status(scenarios: Sequence[Scenario] = ()) -> str:
    """What DRI could take, per status: "49 pending, 2 in review, …, 0 accepted, 0 rejected"."""
    counts = dict(dri_dialogues(scenarios).values_list("status").annotate(n=Count("id")).order_by())
    return ", ".join(
        f"{counts.get(value, 0)} {label.lower()}" for value, label in Dialogue.Status.choices
    )


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

    # A round targeted from an evaluation (training.targeting)
    target_job = forms.TypedChoiceField(
        choices=[],
        coerce=int,
        required=False,
        empty_value=None,
        label="Plan from the evaluation of",
    )
    # Not required: a form without them (an even round) is complete.
    target_rule = forms.ChoiceField(
        choices=[], initial="likelihood", required=False, label="Weakest by"
    )
    target_emphasis = forms.FloatField(
        initial=0.5,
        min_value=0,
        max_value=1,
        required=False,
        label="Emphasis",
        help_text="0: an even round; 1: shares in proportion to weakness alone.",
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
        self.fields["dri_source_status"].help_text = f"Dialogues now: {dialogues_by_status()}."
        from training.targeting import RULES

        cast(forms.ChoiceField, self.fields["target_rule"]).choices = list(RULES.items())
        cast(forms.ChoiceField, self.fields["target_job"]).choices = [
            ("", "none: an even round")
        ] + [(job.pk, f"{job} on {job.release.name}") for job in evaluated_jobs()[:50]]
        self.plan: dict[str, Any] = {}

    @property
    def teacher_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in TEACHER_FIELDS]

    @property
    def selfchat_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in SELFCHAT_FIELDS]

    @property
    def dri_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in DRI_FIELDS]

    @property
    def target_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in ("target_job", "target_rule", "target_emphasis")]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("kind") == GenerationJob.Kind.SELFCHAT and not data.get("scenarios"):
            self.add_error("scenarios", "Pick at least one scenario.")
        if data.get("kind") == GenerationJob.Kind.SELFCHAT and data.get("target_job"):
            self._target(data)
        if data.get("kind") == GenerationJob.Kind.DRI and "dri_source_status" in data:
            self._check_dri_source(data["dri_source_status"], list(data.get("scenarios") or []))
        return data

    def _target(self, data: dict[str, Any]) -> None:
        """The targeted plan of the chosen scenarios, from the chosen evaluation."""
        from training.sendback import targeted_plan

        job = evaluated_jobs().filter(pk=data["target_job"]).first()
        if job is None:
            self.add_error("target_job", "That training job has no evaluation to plan from.")
            return
        scenarios = sorted(s.name for s in data.get("scenarios") or [])
        if not scenarios or data.get("per_scenario") is None:
            return
        emphasis = data.get("target_emphasis")
        self.plan = targeted_plan(
            job,
            data.get("target_rule") or "likelihood",
            scenarios,
            data["per_scenario"] * len(scenarios),
            0.5 if emphasis is None else emphasis,
        )
        if not any(row["replies"] for row in self.plan["scenarios"]):
            self.add_error(
                "scenarios",
                f"The evaluation of {job} scored no reply of these scenarios: pick some it "
                "scored, or plan an even round.",
            )

    def _check_dri_source(self, status: str, scenarios: list[Scenario]) -> None:
        """Refuse a DRI job with no dialogue to take now, rather than have it fail on a worker."""
        if dri_dialogues(scenarios, status).exists():
            return
        label = Dialogue.Status(status).label.lower()
        which = "dialogue of the chosen scenarios" if scenarios else "dialogue"
        if status == Dialogue.Status.NEEDS_ADJUDICATION:
            nothing = f"No {which} needs adjudication"
        else:
            nothing = f"No {which} is {label} yet"
        self.add_error(
            "dri_source_status",
            f"{nothing}, so DRI has nothing to fill. Dialogues by status: "
            f"{dialogues_by_status(scenarios)}. Review some first, or pick another status.",
        )

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
            return common | {k: data[k] for k in DRI_FIELDS} | {"dri_strategies": strategies}
        chosen = common | {k: data[k] for k in SELFCHAT_FIELDS}
        if self.plan:
            chosen |= {"plan": self.plan, "strategy_shares": self.plan["strategy_shares"]}
        return chosen
