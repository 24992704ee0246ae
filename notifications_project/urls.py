from django.contrib import admin
from django.http import JsonResponse
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from notifications.api_errors import error_response


def healthz(request):
    """The process is up (it answers without touching the database)."""
    return JsonResponse({"status": "ok"})


urlpatterns = [
    path("api/v1/", include("notifications.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("admin/", admin.site.urls),
    path("healthz", healthz),
]


def not_found(request, exception=None):
    return error_response("not_found", f"No such resource: {request.path}", 404)


def server_error(request):
    return error_response("internal_error", "Internal server error; the failure was logged.", 500)


handler404 = not_found
handler500 = server_error
