from __future__ import annotations

import pytest

from curation.models import Scenario, Strategy
from curation.parsing import Vocabulary
from curation.vocabulary import EXTES_STRATEGIES, normalize


def test_normalize_ignores_case_spacing_and_punctuation():
    assert normalize("  Avoid judgment and   criticism ") == normalize(
        "Avoid Judgment And Criticism"
    )
    assert normalize("Breakups & Divorce") == normalize("breakups and divorce")
    assert normalize("LGBTQ+ Identity") != normalize("LGBTQ Identity")


def test_extes_shares_sum_to_one_hundred():
    assert round(sum(s.extes_share for s in EXTES_STRATEGIES), 1) == 100.0


@pytest.mark.django_db
def test_migration_loads_the_vocabulary():
    assert Strategy.objects.filter(taxonomy="extes").count() == 16
    assert Strategy.objects.filter(taxonomy="esconv").count() == 8
    assert Scenario.objects.filter(is_official=True).count() == 36
    assert sum(Scenario.objects.values_list("extes_count", flat=True)) > 11_000


@pytest.mark.django_db
def test_every_extes_strategy_maps_to_the_published_esconv_strategy():
    mapping = dict(
        Strategy.objects.filter(taxonomy="extes").values_list("name", "esconv_equivalent__name")
    )
    assert mapping["Reflective Statements"] == "Reflection of feelings"
    assert mapping["Clarification"] == "Question"
    assert mapping["Offer Hope"] == "Affirmation and Reassurance"
    assert mapping["Stress Management"] == "Providing Suggestions"
    assert mapping["Share Information"] == "Information"
    assert mapping["Others"] == "Others"
    assert None not in mapping.values()


def test_strategy_matching_is_case_and_whitespace_insensitive():
    vocab = Vocabulary.from_specs()
    assert vocab.match_strategy("Emotional Validation", "extes") == ("Emotional Validation", None)
    assert vocab.match_strategy("avoid  judgment and criticism", "extes") == (
        "Avoid Judgment And Criticism",
        "strategy_case",
    )
    assert vocab.match_strategy("Validation", "extes") == ("Emotional Validation", "strategy_alias")
    assert vocab.match_strategy("question", "esconv") == ("Question", "strategy_case")
    assert vocab.match_strategy("Question", "extes") == ("Clarification", "strategy_alias")
    assert vocab.match_strategy("a hug", "extes") == (None, "strategy_unknown")


def test_scenario_matching_uses_aliases_and_flags_the_unknown():
    vocab = Vocabulary.from_specs()
    assert vocab.match_scenario("Anxiety and Panic") == ("Anxiety and Panic", None)
    assert vocab.match_scenario("breakup with partner") == ("Breakups or Divorce", "scene_alias")
    assert vocab.match_scenario("Breakup or Divorce") == ("Breakups or Divorce", "scene_alias")
    assert vocab.match_scenario("PTSD") == ("Post-Traumatic Stress Disorder (PTSD)", "scene_alias")
    assert vocab.match_scenario("Knitting  Club drama") == ("Knitting Club drama", "scene_unknown")
