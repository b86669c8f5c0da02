from __future__ import annotations

from django.urls import path

from training import views

urlpatterns = [
    # /training/jobs/
    path("training/jobs/", views.job_list, name="training-job-list"),
    path("training/jobs/<int:pk>/", views.job_detail, name="training-job-detail"),
    path("training/jobs/<int:pk>/cancel/", views.job_cancel, name="training-job-cancel"),
    path("training/jobs/<int:pk>/resume/", views.job_resume, name="training-job-resume"),
    path("training/jobs/<int:pk>/send-back/", views.job_send_back, name="training-job-send-back"),
    # /training/jobs/<id>/ downloads
    path("training/jobs/<int:pk>/adapter.zip", views.adapter_zip, name="training-job-adapter"),
    path("training/jobs/<int:pk>/model-card.md", views.model_card, name="training-job-card"),
    path("training/jobs/<int:pk>/report.html", views.evaluation_report, name="training-job-report"),
    # /training/experiments/
    path("training/experiments/", views.experiment_list, name="training-experiment-list"),
    path("training/experiments/new/", views.experiment_new, name="training-experiment-new"),
    path(
        "training/experiments/<int:pk>/send-back/",
        views.experiment_send_back,
        name="training-experiment-send-back",
    ),
    path(
        "training/experiments/<int:pk>/", views.experiment_detail, name="training-experiment-detail"
    ),
    path(
        "training/experiments/<int:pk>/cancel/",
        views.experiment_cancel,
        name="training-experiment-cancel",
    ),
    # /training/experiments/<id>/ downloads
    path(
        "training/experiments/<int:pk>/<str:name>",
        views.experiment_file,
        name="training-experiment-file",
    ),
]
