"""Message templates: rendering a client's named template for one channel, safely.

A template version holds its variants: `{"email": {"subject", "text", "html"}, "sms": {"text"}}`,
keyed by channel kind (email, sms, slack, webhook, any added kind) or by a channel's name to
override one channel, for its default locale, and `translations` (`{"de": {...variants...}}`)
for others. The variant for a notification is found by locale, then key:

    the requested locale ("de-AT"), its language ("de"), the template's default locale;
    in each, the channel's name, then its kind.

Rendering is Jinja2 in a sandbox (ImmutableSandboxedEnvironment: no attribute starting with
an underscore, no mutation of data, no unsafe callables), with StrictUndefined (a missing
variable is an error naming it), autoescaping for HTML and never for text. Its cost is bounded
whatever the template and the data:
- every loop iteration is counted against LOOP_BUDGET per render (loops are rewritten to go
  through a counter: nested loops over a large list cannot run for minutes);
- what would build a large value at once is checked before it is built: `*` and `**`, string
  `%` formatting and `str.format` (refused: their widths are unbounded), the `center`,
  `indent`, `wordwrap`, `replace`, `join` and `format` filters, `~` concatenation;
- the output of each field is cut off at OUTPUT_LIMIT characters (an error, not a truncation).
Templates themselves are at most SOURCE_LIMIT characters per field.

Errors are `TemplateProblem`s naming the variant, the field and, for syntax errors, the line.
"""

from __future__ import annotations

import contextvars
import functools
import operator
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping

from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError, UndefinedError, nodes
from jinja2.filters import do_batch, do_center, do_indent, do_join, do_replace, do_slice, do_wordwrap
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.visitor import NodeTransformer
from markupsafe import Markup

FIELDS = ("subject", "text", "html")
SOURCE_LIMIT = 20_000  # characters of one field's template
OUTPUT_LIMIT = 100_000  # characters of one rendered field
LOOP_BUDGET = 10_000  # loop iterations of one render (all fields of a variant)
EXPONENT_LIMIT = 64  # the largest exponent `**` may take
NUMBER_BITS_LIMIT = 4096  # the largest integer `*` and `**` may compute


class TemplateProblem(ValueError):
    """A template that cannot be saved or rendered; `where` names the variant and field
    (e.g. "variants.email.subject"), `message` says what and, where known, on which line."""

    def __init__(self, where: str, message: str):
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message


@dataclass(frozen=True)
class Rendered:
    """A variant rendered for one notification: what will be sent, exactly."""

    subject: str
    text: str
    html: str
    locale: str  # the locale of the variant used
    variant: str  # its key: a channel name or kind


# --- the sandbox --------------------------------------------------------------------------------

_loops_left: contextvars.ContextVar[list[int]] = contextvars.ContextVar("template_loops_left")


def _counted(iterable: Iterable) -> Iterator:
    """A loop's iterable, each iteration taken from this render's budget."""
    budget = _loops_left.get()
    for item in iterable:
        budget[0] -= 1
        if budget[0] < 0:
            raise SecurityError(f"the template loops more than {LOOP_BUDGET:,} times")
        yield item


def _checked_size(value: Any) -> Any:
    if isinstance(value, (str, list, tuple)) and len(value) > OUTPUT_LIMIT:
        raise SecurityError(f"the template builds a value of more than {OUTPUT_LIMIT:,} characters or items")
    return value


def _concat(*parts: Any) -> str:
    """`a ~ b`: refused past the output limit (checked before joining)."""
    texts = [str(part) for part in parts]
    if sum(map(len, texts)) > OUTPUT_LIMIT:
        raise SecurityError(f"the template builds a value of more than {OUTPUT_LIMIT:,} characters")
    return "".join(texts)


class _CountedLoops(NodeTransformer):
    """Rewrites `{% for x in it %}` to iterate `_counted(it)`, and `a ~ b` to `_concat(a, b)`."""

    def visit_For(self, node: nodes.For) -> nodes.For:
        self.generic_visit(node)
        node.iter = nodes.Call(nodes.Name("__counted", "load"), [node.iter], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Call:
        self.generic_visit(node)
        return nodes.Call(nodes.Name("__concat", "load"), list(node.nodes), [], None, None, lineno=node.lineno)


def _bounded_filter(filter_, *, size):
    """A filter refused when `size(args)` says its output would pass the output limit."""

    @functools.wraps(filter_)  # keeps Jinja's pass_eval_context / pass_environment marks
    def bounded(*args, **kwargs):
        if size(*args, **kwargs) > OUTPUT_LIMIT:
            raise SecurityError(f"the filter {filter_.__name__.removeprefix('do_')} would build more than "
                                f"{OUTPUT_LIMIT:,} characters")
        return filter_(*args, **kwargs)

    return bounded


def _width(value, width=80, *args, **kwargs) -> int:
    return len(str(value)) + (width if isinstance(width, int) else 0)


def _indented(value, width=4, first=False, blank=False) -> int:
    lines = str(value).count("\n") + 1
    return len(str(value)) + lines * (width if isinstance(width, int) else len(str(width)))


def _replaced(eval_ctx, value, old, new, count=None) -> int:
    text, old, new = str(value), str(old), str(new)
    hits = len(text) + 1 if old == "" else text.count(old)
    return len(text) + hits * max(0, len(new) - len(old))


def _joined(eval_ctx, value, d="", attribute=None) -> int:
    items = list(value) if not isinstance(value, (list, tuple)) else value
    return sum(len(str(item)) for item in items) + len(str(d)) * len(items)


class TemplateSandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox with a bounded cost (see the module docstring)."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def __init__(self, *, html: bool):
        super().__init__(autoescape=html, undefined=StrictUndefined, keep_trailing_newline=True)
        self.globals = {"__counted": _counted, "__concat": _concat, "range": self._range}
        self.filters["center"] = _bounded_filter(do_center, size=_width)
        self.filters["indent"] = _bounded_filter(do_indent, size=_indented)
        self.filters["wordwrap"] = _bounded_filter(do_wordwrap, size=lambda env, s, width=79, *a, **k: 2 * len(str(s)))
        self.filters["replace"] = _bounded_filter(do_replace, size=_replaced)
        self.filters["join"] = _bounded_filter(do_join, size=_joined)
        # batch(n, fill) pads to n items, slice(n) makes n lists, whatever the input.
        self.filters["batch"] = _bounded_filter(do_batch, size=lambda value, count, *a, **k: count if a or k else 0)
        self.filters["slice"] = _bounded_filter(do_slice, size=lambda value, count, *a, **k: count)
        del self.filters["format"]  # printf-style: its widths are unbounded

    def _parse(self, source, name, filename):
        return _CountedLoops().visit(super()._parse(source, name, filename))

    def _range(self, *args: int) -> range:
        return _checked_size(range(*args))

    def wrap_str_format(self, value: Any):
        # str.format and format_map take widths ("{:>999999999}") that build anything.
        if super().wrap_str_format(value) is None:
            return None

        def refused(*args, **kwargs):
            raise SecurityError("str.format is not allowed; write the values in the text")

        return refused

    def call_binop(self, context, operator_: str, left: Any, right: Any) -> Any:
        if operator_ == "%" and isinstance(left, str):
            raise SecurityError("string formatting with % is not allowed; write the value in the text")
        if operator_ == "**" and isinstance(right, (int, float)) and abs(right) > EXPONENT_LIMIT:
            raise SecurityError(f"exponents over {EXPONENT_LIMIT} are not allowed")
        if operator_ in ("*", "**") and isinstance(left, int) and isinstance(right, int):
            bits = left.bit_length() * abs(right) if operator_ == "**" else left.bit_length() + right.bit_length()
            if bits > NUMBER_BITS_LIMIT:
                raise SecurityError(f"the template computes a number of more than {NUMBER_BITS_LIMIT:,} bits")
        if operator_ == "*":
            for sequence, times in ((left, right), (right, left)):
                if isinstance(sequence, (str, list, tuple)) and isinstance(times, int) \
                        and len(sequence) * times > OUTPUT_LIMIT:
                    raise SecurityError(f"the template builds a value of more than {OUTPUT_LIMIT:,} characters or items")
        return {"*": operator.mul, "**": operator.pow, "%": operator.mod}[operator_](left, right)


_TEXT = TemplateSandbox(html=False)
_HTML = TemplateSandbox(html=True)


# --- checking and rendering -----------------------------------------------------------------------


def compile_field(where: str, field: str, source: Any):
    """A field's template, compiled; TemplateProblem if it is not a string, too long, or not
    valid Jinja (naming the line)."""
    if not isinstance(source, str):
        raise TemplateProblem(where, "must be a string")
    if len(source) > SOURCE_LIMIT:
        raise TemplateProblem(where, f"is longer than {SOURCE_LIMIT:,} characters")
    try:
        return _compiled(field == "html", source)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(where, f"line {exc.lineno}: {exc.message}") from None
    except (RecursionError, SyntaxError):  # Jinja's parser or Python's compiler, on deep nesting
        raise TemplateProblem(where, "is nested too deeply") from None


@functools.lru_cache(maxsize=1024)
def _compiled(html: bool, source: str):
    """Compiling costs a millisecond or more; a version's sources never change, so each is
    compiled once per process (a failure is not cached: it raises)."""
    return (_HTML if html else _TEXT).from_string(source)


def check_variants(variants: Any, where: str = "variants") -> dict[str, dict[str, str]]:
    """The variants of one locale, checked: an object of keys (channel kinds or names) to
    objects with `text` (required), `subject` and `html`, each a valid template."""
    if not isinstance(variants, dict) or not variants:
        raise TemplateProblem(where, "must be an object of channel kinds or names to their variants")
    for key, variant in variants.items():
        place = f"{where}.{key}"
        if not isinstance(variant, dict):
            raise TemplateProblem(place, 'must be an object: {"subject", "text", "html"}')
        unknown = sorted(set(variant) - set(FIELDS))
        if unknown:
            raise TemplateProblem(place, f"unknown field(s) {', '.join(unknown)}; expected subject, text, html")
        if "text" not in variant:
            raise TemplateProblem(place, "needs a text")
        for field, source in variant.items():
            compile_field(f"{place}.{field}", field, source)
            _refuse_private_names(f"{place}.{field}", field, source)
    return variants


def _refuse_private_names(where: str, field: str, source: str) -> None:
    """At save time, a template that names an attribute starting with an underscore (the way
    out of every Jinja sandbox escape, `''.__class__`) is refused outright; the sandbox
    refuses it again at render time."""
    tree = (_HTML if field == "html" else _TEXT).parse(source)
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        name = node.attr if isinstance(node, nodes.Getattr) else getattr(node.arg, "value", None)
        if isinstance(name, str) and name.startswith("_"):
            raise TemplateProblem(where, f"line {node.lineno}: {name!r} is not allowed (names starting with _ "
                                         "are outside the template's data)")


def locale_chain(requested: str | None, default: str) -> list[str]:
    """The locales to try, in order: "de-AT" -> "de-AT", "de", then the default."""
    chain = []
    if requested:
        chain.append(requested)
        language = requested.split("-", 1)[0]
        if language != requested:
            chain.append(language)
    if default not in chain:
        chain.append(default)
    return chain


def choose_variant(*, variants: Mapping[str, Any], translations: Mapping[str, Any], default_locale: str,
                   locale: str | None, channel: str, kind: str) -> tuple[str, str, dict[str, str]]:
    """(locale, key, variant) for a channel: by locale, then by channel name, then kind.
    TemplateProblem if no locale has a variant for the channel or its kind."""
    by_locale = {default_locale: variants, **translations}
    for candidate in locale_chain(locale, default_locale):
        entries = by_locale.get(candidate) or {}
        for key in (channel, kind):
            if key in entries:
                return candidate, key, entries[key]
    raise TemplateProblem("template", f"has no variant for channel {channel!r} or its kind {kind!r}")


def render_variant(variant: Mapping[str, str], data: Mapping[str, Any], *, where: str) -> dict[str, str]:
    """Each field of a variant rendered with `data`, within the budgets; TemplateProblem
    naming the field (and the variable, for one that is missing)."""
    token = _loops_left.set([LOOP_BUDGET])
    try:
        rendered = {}
        for field in FIELDS:
            source = variant.get(field)
            if source is None:
                rendered[field] = ""
                continue
            template = compile_field(f"{where}.{field}", field, source)
            rendered[field] = _render_bounded(template, data, where=f"{where}.{field}")
        return rendered
    finally:
        _loops_left.reset(token)


def _render_bounded(template, data: Mapping[str, Any], *, where: str) -> str:
    parts: list[str] = []
    size = 0
    try:
        for chunk in template.generate(data):
            size += len(chunk)
            if size > OUTPUT_LIMIT:
                raise TemplateProblem(where, f"renders more than {OUTPUT_LIMIT:,} characters")
            parts.append(chunk)
    except UndefinedError as exc:
        raise TemplateProblem(where, f"{exc.message} (give it in data)") from None
    except SecurityError as exc:
        raise TemplateProblem(where, f"refused by the sandbox: {exc}") from None
    except TemplateError as exc:
        raise TemplateProblem(where, str(exc)) from None
    except (ArithmeticError, TypeError, ValueError, LookupError, RecursionError) as exc:
        raise TemplateProblem(where, f"{type(exc).__name__}: {exc}") from None
    text = "".join(parts)
    return str(text) if isinstance(text, Markup) else text


def render(*, variants: Mapping[str, Any], translations: Mapping[str, Any], default_locale: str,
           locale: str | None, channel: str, kind: str, data: Mapping[str, Any]) -> Rendered:
    """The variant of a template version for `channel` (of `kind`) in `locale`, rendered."""
    chosen_locale, key, variant = choose_variant(variants=variants, translations=translations,
                                                 default_locale=default_locale, locale=locale,
                                                 channel=channel, kind=kind)
    where = "variants" if chosen_locale == default_locale else f"translations.{chosen_locale}"
    fields = render_variant(variant, data, where=f"{where}.{key}")
    return Rendered(subject=fields["subject"], text=fields["text"], html=fields["html"], locale=chosen_locale, variant=key)
