from django.urls import path

from . import stats_views, suppression_views, template_views, views, webhook_views


def both(route: str, view, name: str) -> list:
    """The route with and without a trailing slash (clients send both)."""
    return [path(route, view, name=name), path(f"{route}/", view)]


urlpatterns = [
    *both("notifications", views.NotificationListView.as_view(), "notification-list"),
    *both("notifications/batch", views.NotificationBatchView.as_view(), "notification-batch"),
    *both("notifications/<uuid:pk>", views.NotificationDetailView.as_view(), "notification-detail"),
    *both("notifications/<uuid:pk>/cancel", views.NotificationCancelView.as_view(), "notification-cancel"),
    *both("notifications/<uuid:pk>/resend", views.NotificationResendView.as_view(), "notification-resend"),
    *both("channels", views.ChannelListView.as_view(), "channel-list"),
    *both("stats", stats_views.StatsView.as_view(), "stats"),
    *both("suppressions", suppression_views.SuppressionListView.as_view(), "suppression-list"),
    *both("suppressions/<str:kind>/<str:recipient>", suppression_views.SuppressionDetailView.as_view(),
          "suppression-detail"),
    *both("webhook-endpoints", webhook_views.WebhookEndpointListView.as_view(), "webhook-endpoint-list"),
    *both("webhook-endpoints/<uuid:pk>", webhook_views.WebhookEndpointDetailView.as_view(), "webhook-endpoint-detail"),
    *both("events", webhook_views.EventListView.as_view(), "event-list"),
    *both("templates", template_views.TemplateListView.as_view(), "template-list"),
    *both("templates/<str:name>", template_views.TemplateDetailView.as_view(), "template-detail"),
    *both("templates/<str:name>/versions", template_views.TemplateVersionListView.as_view(), "template-version-list"),
    *both("templates/<str:name>/versions/<int:version>", template_views.TemplateVersionDetailView.as_view(),
          "template-version-detail"),
    *both("templates/<str:name>/preview", template_views.TemplatePreviewView.as_view(), "template-preview"),
]
