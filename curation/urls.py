from __future__ import annotations

from django.urls import path

from curation import views
from curation.lead import views as lead_views
from curation.releases import views as release_views
from curation.review import views as review_views

urlpatterns = [
    # /dialogues/
    path("dialogues/", views.dialogue_list, name="curation-dialogue-list"),
    path("dialogues/<int:pk>/", views.dialogue_detail, name="curation-dialogue-detail"),
    path("dialogues/<int:pk>/reopen/", views.dialogue_reopen, name="curation-dialogue-reopen"),
    # /review/
    path("review/", review_views.review_home, name="curation-review-home"),
    path("review/next/", review_views.review_next, name="curation-review-next"),
    path("review/continue/", review_views.review_continue, name="curation-review-next-get"),
    path("review/<int:pk>/", review_views.review, name="curation-review"),
    path("review/<int:pk>/label/", review_views.review_label, name="curation-review-label"),
    path("review/<int:pk>/edit/", review_views.review_edit, name="curation-review-edit"),
    path("review/<int:pk>/draft/", review_views.review_draft, name="curation-review-draft"),
    path("review/<int:pk>/submit/", review_views.review_submit, name="curation-review-submit"),
    path("review/<int:pk>/skip/", review_views.review_skip, name="curation-review-skip"),
    path("review/<int:pk>/renew/", review_views.review_renew, name="curation-review-renew"),
    # /releases/
    path("releases/", release_views.release_list, name="curation-release-list"),
    path("releases/new/", release_views.release_new, name="curation-release-new"),
    path("releases/<str:name>/", release_views.release_detail, name="curation-release"),
    path("releases/<str:name>/retry/", release_views.release_retry, name="curation-release-retry"),
    path(
        "releases/<str:name>/files/<path:path>",
        release_views.release_download,
        name="curation-release-download",
    ),
    # /lead/: dashboard, agreement, adjudication, safety
    path("lead/", lead_views.dashboard, name="curation-dashboard"),
    path("lead/dashboard/<str:name>.csv", lead_views.dashboard_csv, name="curation-dashboard-csv"),
    path("lead/agreement/", lead_views.agreement_page, name="curation-agreement"),
    path("lead/agreement/state/", lead_views.agreement_state, name="curation-agreement-state"),
    path("lead/agreement/<str:name>.csv", lead_views.agreement_csv, name="curation-agreement-csv"),
    path("lead/adjudication/", lead_views.adjudication_list, name="curation-adjudication-list"),
    path("lead/adjudication/<int:pk>/", lead_views.adjudication_page, name="curation-adjudication"),
    path("lead/safety/", lead_views.safety_queue, name="curation-safety"),
    path("lead/safety/<int:pk>/", lead_views.safety_decide, name="curation-safety-decide"),
    path("lead/safety/screen/", lead_views.safety_screen_now, name="curation-safety-screen"),
    # /rank/
    path("rank/", review_views.rank_next, name="curation-rank-next"),
    path("rank/<int:pk>/", review_views.rank, name="curation-rank"),
]
