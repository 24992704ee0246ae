from django.urls import path, re_path

from . import views

urlpatterns = [
    re_path(r"^notifications/?$", views.NotificationListView.as_view(), name="notification-list"),
    path("notifications/<uuid:pk>", views.NotificationDetailView.as_view(), name="notification-detail"),
    path("notifications/<uuid:pk>/", views.NotificationDetailView.as_view()),
    re_path(r"^channels/?$", views.ChannelListView.as_view(), name="channel-list"),
]
