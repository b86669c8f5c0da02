from __future__ import annotations

from django.urls import path

from generation import views

urlpatterns = [
    # /generation/jobs/
    path("generation/jobs/", views.job_list, name="generation-job-list"),
    path("generation/jobs/new/", views.job_new, name="generation-job-new"),
    path("generation/jobs/<int:pk>/", views.job_detail, name="generation-job-detail"),
    path("generation/jobs/<int:pk>/cancel/", views.job_cancel, name="generation-job-cancel"),
]
