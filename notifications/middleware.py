"""Refuse oversized API requests before anything reads them."""

from django.conf import settings

from .api_errors import error_response


class RequestBodyLimitMiddleware:
    """Answer 413 to an API request whose declared body exceeds NOTIFY_MAX_REQUEST_BYTES
    (NOTIFY_MAX_BATCH_REQUEST_BYTES for the batch endpoint, whose 1,000 items need more).

    Django's own DATA_UPLOAD_MAX_MEMORY_SIZE check applies to request.body only, and DRF's
    parsers read the stream directly, so the limit is enforced here, from Content-Length.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path.startswith("/api/"):
            batch = request.path.rstrip("/").endswith("/notifications/batch")
            limit = settings.NOTIFY_MAX_BATCH_REQUEST_BYTES if batch else settings.NOTIFY_MAX_REQUEST_BYTES
            try:
                length = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                return error_response("bad_request", "Content-Length is not a number", 400)
            if length > limit:
                return error_response(
                    "request_too_large", f"Request body is {length} bytes; the limit is {limit} bytes", 413
                )
        return self.get_response(request)
