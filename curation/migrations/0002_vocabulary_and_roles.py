"""Load the strategy and scenario vocabulary, and create the three roles as groups."""

from __future__ import annotations

from django.db import migrations

from curation import vocabulary


def load(apps, schema_editor):
    vocabulary.install(
        apps.get_model("curation", "Strategy"),
        apps.get_model("curation", "Scenario"),
        apps.get_model("auth", "Group"),
    )


class Migration(migrations.Migration):
    dependencies = [
        ("curation", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]

    # Going back drops the tables (0001), rows and all: nothing to undo here.
    operations = [migrations.RunPython(load, migrations.RunPython.noop)]
