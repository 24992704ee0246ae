"""Request parsers of the API (the only content type accepted is JSON)."""

from rest_framework import parsers
from rest_framework.exceptions import ParseError


class JSONParser(parsers.JSONParser):
    """DRF's JSONParser, but JSON nested deeper than Python's decoder recursion answers 400
    (DRF catches only ValueError, so the decoder's RecursionError would be a 500)."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply") from None
