from __future__ import annotations

import re
from typing import Any

from django import forms

from curation.models import Release
from training import jobs
from training.models import TrainingJob
from training.sft import TrainConfig

DEFAULTS = TrainConfig()
MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


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
    base_model = forms.CharField(
        required=False,
        max_length=500,
        widget=forms.TextInput(attrs={"size": 60}),
        label="Base model",
        help_text="A model folder on the worker, or a name in its offline cache. "
        "Empty: the local SmolLM2-135M-Instruct.",
    )
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

    LORA = ("lora_r", "lora_alpha", "lora_dropout", "target_modules")
    OPTIMISATION = ("lr", "epochs", "max_steps", "batch_size", "max_length", "seed", "save_every")

    def clean_base_model(self) -> str:
        value = str(self.cleaned_data.get("base_model") or "").strip()
        problem = jobs.check_base(value)
        if problem:
            raise forms.ValidationError(problem)
        return value

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
        }

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


def cannot_evaluate(release: Release) -> str | None:
    """Why a student trained on `release` could not be scored, or None when it could."""
    if release.counts.get("test"):
        return None
    return (
        f"Release {release.name} has no test dialogues (split {_split(release)}): the student "
        "could be trained but not evaluated. Cut a release with a test share, or tick "
        "'Train without evaluation'."
    )
