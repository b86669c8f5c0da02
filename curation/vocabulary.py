"""The fixed vocabulary: the 16 ExTES strategies, the 8 ESConv strategies, the 36 ExTES scenarios.

Definitions are our own wording. Names are as they appear in the data. Matching of any name goes
through `normalize`, so case, spacing, "&" and punctuation never matter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_NON_WORD = re.compile(r"[^0-9a-z+]+")


def normalize(name: str) -> str:
    """The matching key of a name: case-folded, '&' read as 'and', punctuation and spacing dropped."""
    folded = name.casefold().replace("&", " and ")
    return " ".join(_NON_WORD.sub(" ", folded).split())


@dataclass(frozen=True)
class StrategySpec:
    name: str
    taxonomy: str  # "extes" | "esconv"
    definition: str
    aliases: tuple[str, ...] = ()
    esconv: str = ""  # for ExTES strategies: the ESConv strategy it maps to
    extes_share: float = 0.0  # share of labelled supporter turns in ExTES, in percent


@dataclass(frozen=True)
class ScenarioSpec:
    name: str
    extes_count: int
    aliases: tuple[str, ...] = field(default=())


EXTES_STRATEGIES: tuple[StrategySpec, ...] = (
    StrategySpec(
        "Reflective Statements",
        "extes",
        "Say back, in fresh words, what the seeker has told you and how it seems to feel to them, "
        "so they can hear that they were understood.",
        ("Reflection", "Reflective Statement", "Reflecting"),
        "Reflection of feelings",
        14.8,
    ),
    StrategySpec(
        "Clarification",
        "extes",
        "Ask an open question that helps you understand the situation or the feeling more precisely.",
        ("Clarifying Question", "Clarifying Questions", "Question"),
        "Question",
        2.9,
    ),
    StrategySpec(
        "Emotional Validation",
        "extes",
        "Tell the seeker their feeling makes sense given what happened; accept it without trying to "
        "fix or shrink it.",
        ("Validation", "Validating Emotions"),
        "Affirmation and Reassurance",
        19.8,
    ),
    StrategySpec(
        "Empathetic Statements",
        "extes",
        "Show warmth and that you are with the seeker in what they are living through.",
        ("Empathy", "Empathetic Statement", "Empathic Statements"),
        "Affirmation and Reassurance",
        8.7,
    ),
    StrategySpec(
        "Affirmation",
        "extes",
        "Name a strength, effort or good step of the seeker's and encourage it.",
        ("Affirmations", "Encouragement"),
        "Affirmation and Reassurance",
        16.9,
    ),
    StrategySpec(
        "Offer Hope",
        "extes",
        "Point to a realistic way things can get better, without promising outcomes.",
        ("Hope", "Offering Hope", "Instilling Hope"),
        "Affirmation and Reassurance",
        4.8,
    ),
    StrategySpec(
        "Avoid Judgment And Criticism",
        "extes",
        "Make it clear the seeker is not being judged or blamed, so they can speak freely.",
        ("Avoid Judgement And Criticism", "Non-judgment", "Non-judgmental"),
        "Affirmation and Reassurance",
        1.8,
    ),
    StrategySpec(
        "Suggest Options",
        "extes",
        "Put forward one or more concrete things the seeker could try, leaving the choice to them.",
        ("Suggestion", "Suggestions", "Suggesting Options", "Offer Suggestions"),
        "Providing Suggestions",
        6.2,
    ),
    StrategySpec(
        "Collaborative Planning",
        "extes",
        "Work out next steps together with the seeker, building on their own ideas.",
        ("Planning", "Collaborative Plan"),
        "Providing Suggestions",
        3.6,
    ),
    StrategySpec(
        "Provide Different Perspectives",
        "extes",
        "Offer another way of looking at the situation that the seeker may not have considered.",
        ("Different Perspectives", "Perspective", "Providing Different Perspectives"),
        "Providing Suggestions",
        3.4,
    ),
    StrategySpec(
        "Reframe Negative Thoughts",
        "extes",
        "Help turn a harsh or distorted thought into a fairer, more balanced one.",
        ("Reframing", "Reframe", "Reframing Negative Thoughts", "Cognitive Reframing"),
        "Providing Suggestions",
        2.1,
    ),
    StrategySpec(
        "Share Information",
        "extes",
        "Give accurate, useful facts about emotions, conditions, services or ways of coping.",
        ("Information", "Sharing Information", "Psychoeducation"),
        "Information",
        3.3,
    ),
    StrategySpec(
        "Normalize Experiences",
        "extes",
        "Let the seeker know that many people react the same way in such a situation.",
        ("Normalization", "Normalise Experiences", "Normalizing"),
        "Providing Suggestions",
        2.6,
    ),
    StrategySpec(
        "Promote Self-Care Practices",
        "extes",
        "Encourage looking after body and mind: rest, food, movement, people, small pleasures.",
        ("Self-Care", "Self Care", "Promote Self Care", "Self-Care Practices"),
        "Providing Suggestions",
        2.7,
    ),
    StrategySpec(
        "Stress Management",
        "extes",
        "Teach or suggest a specific technique for lowering stress in the moment or over time.",
        ("Stress Management Techniques", "Stress Relief", "Coping Techniques"),
        "Providing Suggestions",
        2.5,
    ),
    StrategySpec(
        "Others",
        "extes",
        "Anything that fits none of the above: greetings, closings, small talk, thanks.",
        ("Other", "Greeting", "Closing"),
        "Others",
        3.9,
    ),
)

ESCONV_STRATEGIES: tuple[StrategySpec, ...] = (
    StrategySpec(
        "Question",
        "esconv",
        "Ask for information about the problem or the feelings around it.",
        ("Questions",),
    ),
    StrategySpec(
        "Restatement or Paraphrasing",
        "esconv",
        "Repeat the seeker's point in other words to check it was heard right.",
        ("Restatement", "Paraphrasing"),
    ),
    StrategySpec(
        "Reflection of feelings",
        "esconv",
        "Put into words the emotion the seeker seems to be feeling.",
        ("Reflection of feeling",),
    ),
    StrategySpec(
        "Self-disclosure",
        "esconv",
        "Share a similar experience of one's own to show the seeker they are not alone.",
        ("Self disclosure",),
    ),
    StrategySpec(
        "Affirmation and Reassurance",
        "esconv",
        "Support the seeker's strengths and reassure them.",
        ("Affirmation & Reassurance", "Reassurance"),
    ),
    StrategySpec(
        "Providing Suggestions",
        "esconv",
        "Propose ways forward, without telling the seeker what they must do.",
        ("Providing Suggestion", "Suggestions"),
    ),
    StrategySpec(
        "Information",
        "esconv",
        "Give useful facts, figures or resources.",
        ("Providing Information",),
    ),
    StrategySpec(
        "Others",
        "esconv",
        "Greetings, small talk and anything the other labels do not cover.",
        ("Other",),
    ),
)

STRATEGIES: tuple[StrategySpec, ...] = EXTES_STRATEGIES + ESCONV_STRATEGIES

# Other forms of the 8 ESConv names met in files of the ESConv family: shortened, reworded, or as
# the paper and later releases write them. Kept here, not in the Strategy rows (`install` never
# changes a row): `Vocabulary.build` merges them in. Plurals, "&", "/" and case need no entry,
# `Vocabulary.match_strategy` matches those forms itself.
ESCONV_FORM_ALIASES: dict[str, tuple[str, ...]] = {
    "Question": ("Asking Questions", "Ask Questions", "Questioning", "Open Question"),
    "Restatement or Paraphrasing": (
        "Restatement",
        "Paraphrasing",
        "Paraphrase",
        "Restatement or Paraphrase",
        "Restating",
    ),
    "Reflection of feelings": ("Reflection", "Reflecting Feelings", "Reflection of Emotions"),
    "Self-disclosure": ("Disclosure", "Selfdisclosure", "Personal Disclosure"),
    "Affirmation and Reassurance": ("Affirmation", "Reassurance", "Affirming", "Reassuring"),
    "Providing Suggestions": (
        "Suggestion",
        "Provide Suggestions",
        "Giving Suggestions",
        "Offering Suggestions",
        "Suggest",
    ),
    "Information": ("Info", "Providing Information", "Provide Information", "Giving Information"),
    "Others": ("Other",),
}

# Aliases include ESConv's problem types where an ExTES scenario clearly covers them.
SCENARIOS: tuple[ScenarioSpec, ...] = (
    ScenarioSpec(
        "Breakups or Divorce",
        710,
        ("Breakup or Divorce", "Breakup", "Divorce", "breakup with partner"),
    ),
    ScenarioSpec(
        "Conflicts or Communication Problems",
        1109,
        ("Conflict or Communication Problems", "problems with friends"),
    ),
    ScenarioSpec("Communication Challenges", 1008, ("Communication Challenge",)),
    ScenarioSpec(
        "Coping with the Death of a Loved One",
        593,
        ("Death of a Loved One", "Grief", "Bereavement"),
    ),
    ScenarioSpec("Dealing with the Loss of a Pet", 601, ("Loss of a Pet", "Pet Loss")),
    ScenarioSpec(
        "Work-related Stress and Burnout", 403, ("Work Stress", "Burnout", "Work-Related Stress")
    ),
    ScenarioSpec(
        "Financial Worries and Uncertainty", 403, ("Financial Worries", "Financial Stress")
    ),
    ScenarioSpec("Unemployment-related Stress", 403, ("Unemployment", "Unemployment Stress")),
    ScenarioSpec("Academic Stress", 403, ("academic pressure",)),
    ScenarioSpec("Spirituality and Faith", 202, ("Spirituality", "Faith")),
    ScenarioSpec("Managing Bipolar Disorder", 202, ("Bipolar Disorder",)),
    ScenarioSpec("Anxiety and Panic", 202, ("Anxiety", "Panic Attacks")),
    ScenarioSpec("Depression and Low Mood", 403, ("Depression", "ongoing depression")),
    ScenarioSpec("Adjusting to a New Job or Role", 302, ("New Job", "Adjusting to a New Job")),
    ScenarioSpec("Chronic Illness or Pain Management", 302, ("Chronic Illness", "Chronic Pain")),
    ScenarioSpec(
        "Coping with a Diagnosis or Medical Treatment",
        202,
        ("Medical Diagnosis", "Coping with a Diagnosis"),
    ),
    ScenarioSpec("Caregiver Support", 202, ("Caregiving", "Caregiver Stress")),
    ScenarioSpec(
        "Finding Meaning and Purpose in Life", 202, ("Meaning and Purpose", "Purpose in Life")
    ),
    ScenarioSpec(
        "Navigating Gender Identity and Transitioning", 202, ("Gender Identity", "Transitioning")
    ),
    ScenarioSpec("Moving to a New City or Country", 202, ("Relocation", "Moving to a New City")),
    ScenarioSpec("Career Transitions", 202, ("Career Transition", "Career Change")),
    ScenarioSpec("Parenthood and Parenting Challenges", 202, ("Parenthood",)),
    ScenarioSpec(
        "Low Self-Esteem or Lack of Confidence",
        302,
        ("Low Self-Esteem", "Lack of Confidence", "Self-Esteem"),
    ),
    ScenarioSpec(
        "Body Image Concerns and Eating Disorders",
        101,
        ("Body Image", "Eating Disorders", "appearance anxiety"),
    ),
    ScenarioSpec("LGBTQ+ Identity", 101, ("LGBTQ Identity", "LGBTQIA+ Identity")),
    ScenarioSpec("Cultural Identity and Belonging", 101, ("Cultural Identity",)),
    ScenarioSpec("Academic Stress or Pressure", 202, ("Academic Pressure or Stress",)),
    ScenarioSpec("Job Loss or Career Setbacks", 202, ("Job Loss", "Career Setbacks", "job crisis")),
    ScenarioSpec(
        "Parenting Challenges and Parental Guilt",
        202,
        ("Parental Guilt", "Parenting Challenges", "issues with children"),
    ),
    ScenarioSpec(
        "Sibling Rivalry or Family Conflict",
        403,
        ("Sibling Rivalry", "Family Conflict", "issues with parents", "conflict with parents"),
    ),
    ScenarioSpec(
        "Surviving and Recovering from Physical or Emotional Abuse", 101, ("Recovering from Abuse",)
    ),
    ScenarioSpec(
        "Healing from Sexual Assault or Domestic Violence",
        101,
        ("Sexual Assault", "Domestic Violence"),
    ),
    ScenarioSpec(
        "Post-Traumatic Stress Disorder (PTSD)", 101, ("PTSD", "Post-Traumatic Stress Disorder")
    ),
    ScenarioSpec("Healing from Abuse", 202, ()),
    ScenarioSpec("Addiction and Recovery", 202, ("Addiction", "alcohol abuse", "Substance Abuse")),
    ScenarioSpec(
        "Support for Loved Ones or Friends", 202, ("Supporting Loved Ones", "Supporting a Friend")
    ),
)


ROLES = ("annotator", "lead", "admin")


def install(strategy_model: Any, scenario_model: Any, group_model: Any) -> None:
    """Create whatever part of the vocabulary and roles is missing; never changes existing rows.

    Takes the model classes so the data migration can pass its historical models.
    """
    esconv = {}
    for spec in ESCONV_STRATEGIES:
        esconv[spec.name], _ = strategy_model.objects.get_or_create(
            taxonomy="esconv",
            name=spec.name,
            defaults={
                "key": normalize(spec.name),
                "definition": spec.definition,
                "aliases": list(spec.aliases),
            },
        )
    for spec in EXTES_STRATEGIES:
        strategy_model.objects.get_or_create(
            taxonomy="extes",
            name=spec.name,
            defaults={
                "key": normalize(spec.name),
                "definition": spec.definition,
                "aliases": list(spec.aliases),
                "esconv_equivalent": esconv[spec.esconv],
                "extes_share": spec.extes_share,
            },
        )
    for scenario in SCENARIOS:
        scenario_model.objects.get_or_create(
            name=scenario.name,
            defaults={
                "key": normalize(scenario.name),
                "aliases": list(scenario.aliases),
                "is_official": True,
                "extes_count": scenario.extes_count,
            },
        )
    for role in ROLES:
        group_model.objects.get_or_create(name=role)
