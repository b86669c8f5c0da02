from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from curation import views as curation_views

admin.site.site_header = "ExTES Studio administration"
admin.site.site_title = "ExTES Studio"

urlpatterns = [
    path("", curation_views.home, name="home"),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("", include("curation.urls")),
    path("", include("generation.urls")),
    path("", include("training.urls")),
]
