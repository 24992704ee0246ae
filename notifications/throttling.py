"""Request rate limits per API client (DRF throttling; 429 with Retry-After)."""

from rest_framework.throttling import SimpleRateThrottle


class ApiClientRateThrottle(SimpleRateThrottle):
    """NOTIFY_THROTTLE_RATE requests per client (e.g. "6000/minute"), counted in Django's
    cache: per API process with the default local-memory cache, across processes with a
    shared cache (CACHES)."""

    scope = "api_client"

    def get_cache_key(self, request, view):
        if request.user is None or not getattr(request.user, "pk", None):
            return None
        return self.cache_format % {"scope": self.scope, "ident": request.user.pk}
