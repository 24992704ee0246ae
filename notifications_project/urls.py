from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from notifications import receipts
from notifications.api_errors import error_response

from . import views

urlpatterns = [
    path("api/v1/", include("notifications.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("admin/", admin.site.urls),
    # Providers' delivery receipts: no API key; each provider's own proof (notifications/receipts.py).
    path("receipts/", include(receipts.urlpatterns)),
    # Probes and metrics: plain Django views, no API key (see views.py).
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("metrics", views.metrics, name="metrics"),
]


def not_found(request, exception=None):
    return error_response("not_found", f"No such resource: {request.path}", 404)


def server_error(request):
    return error_response("internal_error", "Internal server error; the failure was logged.", 500)


handler404 = not_found
handler500 = server_error
