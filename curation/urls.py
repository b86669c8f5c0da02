from __future__ import annotations

from django.urls import path

from curation import views

urlpatterns = [
    # /dialogues/
    path("dialogues/", views.dialogue_list, name="curation-dialogue-list"),
    path("dialogues/<int:pk>/", views.dialogue_detail, name="curation-dialogue-detail"),
]
