from __future__ import annotations

import re
from typing import Any

from django import forms

from curation.models import Release
from training import jobs
from training.data import has_lines
from training.experiment import ARMS, TRAINED, Decoding
from training.models import TrainingJob
from training.sft import TrainConfig

DEFAULTS = TrainConfig()
DECODING = Decoding()
MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


class BaseModelField(forms.CharField):
    """The base model a worker trains or scores: refused unless the worker could load it
    offline."""

    def __init__(self) -> None:
        super().__init__(
            required=False,
            max_length=500,
            widget=forms.TextInput(attrs={"size": 60}),
            label="Base model",
            help_text="A model folder on the worker, or a name in its offline cache. "
            "Empty: the local SmolLM2-135M-Instruct.",
        )

    def clean(self, value: Any) -> str:
        value = str(super().clean(value) or "").strip()
        problem = jobs.check_base(value)
        if problem:
            raise forms.ValidationError(problem)
        return value


class TrainForm(forms.Form):
    token = forms.CharField(widget=forms.HiddenInput)
    release = forms.ModelChoiceField(
        queryset=Release.objects.filter(status=Release.Status.READY).order_by("-id"),
        empty_label=None,
    )
    variant = forms.ChoiceField(
        choices=TrainingJob.Variant.choices,
        initial=TrainingJob.Variant.SFT,
        widget=forms.RadioSelect,
        label="Data",
    )
    base_model = BaseModelField()
    skip_evaluation = forms.BooleanField(
        required=False,
        label="Train without evaluation",
        help_text="The student is trained and its card written, but it is not scored: for a "
        "release without test dialogues.",
    )

    # LoRA
    lora_r = forms.IntegerField(initial=DEFAULTS.lora_r, min_value=1, max_value=256, label="Rank")
    lora_alpha = forms.IntegerField(
        initial=DEFAULTS.lora_alpha,
        min_value=1,
        max_value=1024,
        label="Alpha",
        help_text="The update is scaled by alpha / rank.",
    )
    lora_dropout = forms.FloatField(
        initial=DEFAULTS.lora_dropout, min_value=0, max_value=0.9, label="Dropout"
    )
    target_modules = forms.CharField(
        initial=",".join(DEFAULTS.target_modules),
        max_length=500,
        widget=forms.TextInput(attrs={"size": 60}),
        label="Target modules",
        help_text="Comma-separated names of the layers that get adapters.",
    )

    # Optimisation
    lr = forms.FloatField(
        initial=DEFAULTS.lr, min_value=1e-7, max_value=1, label="Learning rate (peak)"
    )
    epochs = forms.FloatField(initial=DEFAULTS.epochs, min_value=0.01, max_value=100)
    max_steps = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=1_000_000,
        label="Max steps",
        help_text="When set, the run stops after this many optimizer steps, whatever the epochs.",
    )
    batch_size = forms.IntegerField(
        initial=DEFAULTS.batch_size, min_value=1, max_value=512, label="Batch size (chats)"
    )
    max_length = forms.IntegerField(
        required=False,
        min_value=16,
        max_value=131_072,
        label="Max length (tokens)",
        help_text="Longer chats are cut. Empty: chosen from the data when the run starts.",
    )
    seed = forms.IntegerField(initial=DEFAULTS.seed, min_value=0, max_value=2**31 - 1)
    save_every = forms.IntegerField(
        initial=DEFAULTS.save_every,
        min_value=0,
        max_value=1_000_000,
        label="Checkpoint every (steps)",
        help_text="A stopped or interrupted run continues from its last checkpoint; 0: never.",
    )

    # Preference training (the sft_dpo data only; training.dpo's defaults).
    dpo_beta = forms.FloatField(
        required=False,
        initial=0.1,
        min_value=0.001,
        max_value=10,
        label="DPO beta",
        help_text="How strongly the student is held near its SFT self while it learns the "
        "preferences (DPO's beta). Empty: 0.1.",
    )
    dpo_lr = forms.FloatField(
        required=False,
        initial=5e-5,
        min_value=1e-7,
        max_value=1,
        label="DPO learning rate",
        help_text="Empty: 5e-5.",
    )
    dpo_max_steps = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=1_000_000,
        label="DPO steps",
        help_text="Empty: one pass over the release's preference pairs.",
    )

    LORA = ("lora_r", "lora_alpha", "lora_dropout", "target_modules")
    DPO = ("dpo_beta", "dpo_lr", "dpo_max_steps")
    OPTIMISATION = ("lr", "epochs", "max_steps", "batch_size", "max_length", "seed", "save_every")

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        release = data.get("release")
        if release is None:
            return data
        problem = cannot_train(release)
        if problem:
            raise forms.ValidationError(problem)
        problem = cannot_evaluate(release)
        if problem and not data.get("skip_evaluation"):
            raise forms.ValidationError(problem)
        if data.get("variant") == TrainingJob.Variant.SFT_DPO:
            problem = cannot_prefer(release)
            if problem:
                raise forms.ValidationError(problem)
        return data

    def clean_target_modules(self) -> list[str]:
        names = [n.strip() for n in str(self.cleaned_data["target_modules"]).split(",")]
        names = [n for n in names if n]
        if not names:
            raise forms.ValidationError("Name at least one module.")
        wrong = [n for n in names if not MODULE_NAME.match(n)]
        if wrong:
            raise forms.ValidationError(f"Not a module name: {', '.join(wrong)}")
        return names

    def hyperparameters(self) -> dict[str, Any]:
        """The TrainConfig fields this form sets, besides base, variant and seed."""
        data = self.cleaned_data
        return {
            "lora_r": data["lora_r"],
            "lora_alpha": data["lora_alpha"],
            "lora_dropout": data["lora_dropout"],
            "target_modules": data["target_modules"],
            "lr": data["lr"],
            "epochs": data["epochs"],
            "max_steps": data["max_steps"],
            "batch_size": data["batch_size"],
            "max_length": data["max_length"],
            "save_every": data["save_every"],
        } | (
            {name: data[name] for name in self.DPO if data.get(name) is not None}
            if data.get("variant") == TrainingJob.Variant.SFT_DPO
            else {}
        )

    def fields_of(self, names: tuple[str, ...]) -> list[forms.BoundField]:
        return [self[name] for name in names]


def _split(release: Release) -> str:
    return "/".join(str(release.counts.get(split, 0)) for split in ("train", "valid", "test"))


def cannot_train(release: Release) -> str | None:
    if release.counts.get("train"):
        return None
    return (
        f"Release {release.name} has no training dialogues (split {_split(release)}): there is "
        "nothing to train the student on. Cut a release with a training share."
    )


def cannot_prefer(release: Release) -> str | None:
    """Why DPO could not train on `release` (no preference pairs in its training split), or
    None when it could or its files are not written yet (the job then says so itself)."""
    pairs = release.folder / "dpo" / "train.jsonl"
    if not pairs.is_file() or has_lines(pairs):
        return None
    return (
        f"Release {release.name} has no preference pairs in its training split: DPO needs "
        "ranked DRI candidates (or edited replies). Rank some, cut a new release, or train "
        "with SFT only."
    )


def cannot_evaluate(release: Release) -> str | None:
    """Why a student trained on `release` could not be scored, or None when it could."""
    if release.counts.get("test"):
        return None
    return (
        f"Release {release.name} has no test dialogues (split {_split(release)}): the student "
        "could be trained but not evaluated. Cut a release with a test share, or tick "
        "'Train without evaluation'."
    )


ARM_CHOICES = [
    ("base", "base: the base model as it is"),
    ("teacher", "teacher: the configured teacher answers the same contexts"),
    ("sft", "sft: LoRA on the release's whole dialogues"),
    ("sft_dri", "sft_dri: the same plus the release's DRI replies"),
    ("sft_dpo", "sft_dpo: sft, then DPO on the release's preference pairs"),
]


class ReleaseChoice(forms.ModelChoiceField):
    """Every release, a release not ready marked so: the form says why it cannot be used."""

    def label_from_instance(self, obj: Any) -> str:
        if obj.status == Release.Status.READY:
            return str(obj.name)
        return f"{obj.name} ({obj.get_status_display().lower()})"


class ExperimentForm(forms.Form):
    token = forms.CharField(widget=forms.HiddenInput)
    release = ReleaseChoice(queryset=Release.objects.order_by("-id"), empty_label=None)
    arms = forms.MultipleChoiceField(
        choices=ARM_CHOICES,
        initial=["base", "sft", "sft_dri"],
        widget=forms.CheckboxSelectMultiple,
        error_messages={"required": "Pick at least one arm."},
        help_text="Every arm answers the same test turns; trained arms start from the same base "
        "with the same hyperparameters and get the same optimizer steps.",
    )
    seeds = forms.IntegerField(
        initial=1,
        min_value=1,
        max_value=5,
        help_text="Seeds per trained arm (1 to 5); an arm's figures are the mean over its seeds.",
    )
    max_steps = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=1_000_000,
        label="Max steps",
        help_text="The optimizer steps of every trained arm. Empty: the steps the epochs make "
        "over the sft chats.",
    )
    epochs = forms.FloatField(
        initial=1.0,
        min_value=0.01,
        max_value=100,
        help_text="Passes over the sft chats, when max steps is empty.",
    )
    limit = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=1_000_000,
        label="Test turns",
        help_text="Score only the first N supporter turns of the test split. Empty: all of them.",
    )
    base_model = BaseModelField()
    decoding = forms.ChoiceField(
        choices=[("greedy", "Greedy"), ("sampling", "Sampling")],
        initial="greedy",
        widget=forms.RadioSelect,
        help_text="Greedy writes the same replies every run; sampling uses the seed below.",
    )
    temperature = forms.FloatField(
        initial=DECODING.temperature, min_value=0.01, max_value=2, help_text="Sampling only."
    )
    top_p = forms.FloatField(
        initial=DECODING.top_p,
        min_value=0.01,
        max_value=1,
        label="Top p",
        help_text="Sampling only.",
    )
    decoding_seed = forms.IntegerField(
        initial=DECODING.seed, min_value=0, max_value=2**31 - 1, label="Sampling seed"
    )
    max_new_tokens = forms.IntegerField(
        initial=DECODING.max_new_tokens, min_value=1, max_value=2048, label="Max new tokens"
    )

    RUN = ("arms", "seeds", "max_steps", "epochs", "limit", "base_model")
    DECODING_FIELDS = ("decoding", "temperature", "top_p", "decoding_seed", "max_new_tokens")

    def clean(self) -> dict[str, Any]:
        super().clean()
        data = self.cleaned_data
        release, arms = data.get("release"), data.get("arms")
        if release is None or not arms:
            return data
        problem = cannot_experiment(release, arms)
        if problem:
            raise forms.ValidationError(problem)
        return data

    def decoding_settings(self) -> Decoding:
        data = self.cleaned_data
        if data["decoding"] == "greedy":
            return Decoding(max_new_tokens=data["max_new_tokens"])
        return Decoding(
            kind="sampling",
            temperature=data["temperature"],
            top_p=data["top_p"],
            seed=data["decoding_seed"],
            max_new_tokens=data["max_new_tokens"],
        )

    def arms_in_order(self) -> list[str]:
        return [arm for arm in ARMS if arm in self.cleaned_data["arms"]]

    def fields_of(self, names: tuple[str, ...]) -> list[forms.BoundField]:
        return [self[name] for name in names]


def cannot_experiment(release: Release, arms: list[str]) -> str | None:
    """Why an experiment with `arms` cannot run on `release`, or None when it can."""
    if release.status != Release.Status.READY:
        return (
            f"Release {release.name} is {release.get_status_display().lower()}: an experiment "
            "runs on a ready release only."
        )
    if not release.counts.get("test"):
        return (
            f"Release {release.name} has no test dialogues (split {_split(release)}): every arm "
            "is scored on the test split. Cut a release with a test share."
        )
    if any(arm in TRAINED for arm in arms) and (problem := cannot_train(release)):
        return problem
    if "sft_dri" in arms and not dri_train_examples(release):
        return (
            f"Release {release.name} has no DRI examples in its training split (DRI policy: "
            f"{release.dri_policy}): sft_dri would train on the same chats as sft. Rank DRI "
            "replies and cut a new release, or leave sft_dri out."
        )
    if "sft_dpo" in arms and not dpo_train_pairs(release):
        return (
            f"Release {release.name} has no preference pairs in its training split: sft_dpo "
            "would have nothing to learn after SFT. Rank DRI replies and cut a new release, "
            "or leave sft_dpo out."
        )
    return None


def dpo_train_pairs(release: Release) -> int:
    """The pairs dpo/train.jsonl holds (or will hold): counted from the frozen snapshots with
    the release writer's own rule."""
    from curation.releases.build import FileOptions, dpo_pairs

    options = FileOptions.from_dict(release.file_options)
    snapshots = release.items.filter(split="train").values_list("snapshot", flat=True)
    return sum(len(list(dpo_pairs(snap, options))) for snap in snapshots.iterator())


def dri_train_examples(release: Release) -> int:
    """The examples sft_dri/train.jsonl holds (or will hold) beside sft/: counted from the
    frozen snapshots with the release writer's own rule."""
    from curation.releases.build import dri_candidates

    snapshots = release.items.filter(split="train").values_list("snapshot", flat=True)
    return sum(len(dri_candidates(snap, release.dri_policy)) for snap in snapshots.iterator())
