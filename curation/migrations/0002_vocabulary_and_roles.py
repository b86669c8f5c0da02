"""Load the strategy and scenario vocabulary, and create the three roles as groups."""

from __future__ import annotations

from django.db import migrations

from curation.vocabulary import ESCONV_STRATEGIES, EXTES_STRATEGIES, SCENARIOS, normalize

ROLES = ("annotator", "lead", "admin")


def load(apps, schema_editor):
    Strategy = apps.get_model("curation", "Strategy")
    Scenario = apps.get_model("curation", "Scenario")
    Group = apps.get_model("auth", "Group")

    esconv = {}
    for spec in ESCONV_STRATEGIES:
        esconv[spec.name] = Strategy.objects.create(
            name=spec.name, key=normalize(spec.name), taxonomy="esconv",
            definition=spec.definition, aliases=list(spec.aliases),
        )
    for spec in EXTES_STRATEGIES:
        Strategy.objects.create(
            name=spec.name, key=normalize(spec.name), taxonomy="extes", definition=spec.definition,
            aliases=list(spec.aliases), esconv_equivalent=esconv[spec.esconv],
            extes_share=spec.extes_share,
        )
    for spec in SCENARIOS:
        Scenario.objects.create(
            name=spec.name, key=normalize(spec.name), aliases=list(spec.aliases),
            is_official=True, extes_count=spec.extes_count,
        )
    for role in ROLES:
        Group.objects.get_or_create(name=role)


def unload(apps, schema_editor):
    apps.get_model("curation", "Strategy").objects.all().delete()
    apps.get_model("curation", "Scenario").objects.filter(is_official=True).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("curation", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]

    operations = [migrations.RunPython(load, unload)]
