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
whatever the template and the data, by a budget per render (all fields of a variant):
- LOOP_BUDGET steps: every loop iteration (loops are rewritten to go through a counter, and so
  are a recursive loop's `loop(...)` calls) and every call of the template's own code (a macro,
  `caller()`, a block: a macro calling itself twice cannot run 2**40 times);
- WRITE_LIMIT characters written, wherever they go: the output, and the buffers of `{% set %}`
  blocks, macros and filter blocks (a loop in a macro cannot build a gigabyte);
- CPU_LIMIT_SECONDS of this thread's CPU, checked every few steps, filters and operators: the
  backstop for work that is linear but repeated (a filter over a long list in a loop);
- what would build a large value at once is checked before it is built: `*`, `**` and `+`,
  `~` concatenation, `range`, the `center`, `indent`, `wordwrap`, `replace`, `join`, `batch`,
  `slice` and `tojson` filters; `sum` adds numbers only; string `%` formatting, `str.format`
  and the str methods that pad or repeat (`ljust`, `zfill`, `replace`, `join`, ...) are
  refused (their sizes are unbounded; the filters do the same, bounded);
- every filter's result is checked too, so that chains of filters that each make a value a
  few times larger (`|forceescape|forceescape...`, `|list|string|list|string...`) stop at
  the limit;
- a list, tuple or dict is weighed (what its text would be, nested lists included) before it
  is turned into text, written, concatenated or given to a filter: `[rows] * 100000` is
  100,000 references to one list, but its text is 100,000 copies;
- the output of each field is cut off at OUTPUT_LIMIT characters (an error, not a truncation).
Templates themselves are at most SOURCE_LIMIT characters per field.

Errors are `TemplateProblem`s naming the variant, the field and, for syntax errors, the line.
"""

from __future__ import annotations

import contextvars
import functools
import operator
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping

from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError, UndefinedError, nodes
from jinja2.filters import (
    do_batch,
    do_center,
    do_indent,
    do_replace,
    do_tojson,
    do_wordwrap,
    sync_do_join,
    sync_do_slice,
    sync_do_sum,
)
from jinja2.runtime import BlockReference, LoopContext, Macro
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.utils import pass_context, pass_environment, pass_eval_context
from jinja2.visitor import NodeTransformer
from markupsafe import Markup

FIELDS = ("subject", "text", "html")
SOURCE_LIMIT = 20_000  # characters of one field's template
OUTPUT_LIMIT = 100_000  # characters of one rendered field (and of any value a template builds)
LOOP_BUDGET = 10_000  # loop iterations and calls of one render (all fields of a variant)
WRITE_LIMIT = 10 * OUTPUT_LIMIT  # characters written by one render, buffers included
CPU_LIMIT_SECONDS = 0.5  # CPU time of one render; a notification's takes well under a millisecond
EXPONENT_LIMIT = 64  # the largest exponent `**` may take
NUMBER_BITS_LIMIT = 4096  # the largest integer `*` and `**` may compute
_SIZED = (str, bytes, list, tuple)  # the values whose size the checks below bound
# str (and bytes) methods whose result's size is set by an argument, not by the string: the
# bounded filters (center, replace, join, ...) do what they do. `encode` is refused with them:
# bytes have their own ljust, center, ... and a template has no use for them.
_UNBOUNDED_STR_METHODS = frozenset({"ljust", "rjust", "center", "zfill", "expandtabs", "replace", "join",
                                    "translate", "encode"})


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


class _Budget:
    """What one render may still spend: steps (loop iterations and calls), characters
    written, and CPU time (checked after each filter, and every CPU_CHECK_EVERY cheaper ticks:
    reading the clock costs half a microsecond)."""

    CPU_CHECK_EVERY = 16
    __slots__ = ("steps", "chars", "cpu_seconds", "deadline", "ticks")

    def __init__(self, cpu_seconds: float = CPU_LIMIT_SECONDS) -> None:
        self.steps = LOOP_BUDGET
        self.chars = WRITE_LIMIT
        self.cpu_seconds = cpu_seconds
        self.deadline = time.thread_time() + cpu_seconds
        self.ticks = 0

    def tick(self) -> None:
        """A little work done (an operator, a method call, a write): the CPU limit, now and then."""
        self.ticks += 1
        if self.ticks % self.CPU_CHECK_EVERY == 0:
            self.check_time()

    def check_time(self) -> None:
        """The CPU limit, now: after each filter (one may take milliseconds, on 100,000 items)."""
        if time.thread_time() > self.deadline:
            raise SecurityError(f"the template takes more than {self.cpu_seconds:g} s of CPU to render")

    def step(self) -> None:
        """A loop iteration or a call."""
        self.steps -= 1
        if self.steps < 0:
            raise SecurityError(f"the template runs more than {LOOP_BUDGET:,} loop iterations and calls")
        self.tick()

    def write(self, size: int) -> None:
        self.chars -= size
        if self.chars < 0:
            raise SecurityError(f"the template writes more than {WRITE_LIMIT:,} characters (buffers included)")
        self.tick()


# Set by render_variant for each render. Outside a render (Jinja folding constants when it
# compiles a template) it is unset: every filter then raises LookupError, which Jinja takes as
# "not a constant", so that no filter of a template runs at compile time, unbounded.
_budget: contextvars.ContextVar[_Budget] = contextvars.ContextVar("template_budget")


@pass_context  # as every hook: never folded into a constant when Jinja compiles (see _Bounded)
def _counted(context, iterable: Iterable) -> Iterator:
    """A loop's iterable, each iteration taken from this render's budget."""
    budget = _budget.get()
    for item in iterable:
        budget.step()
        yield item


@pass_context
def _written(context, value: Any, static: int = 0) -> Any:
    """An `{{ expression }}` about to be written (to the output or a buffer), charged to the
    budget with the `static` characters of the literal text around it. Returns the value as
    text for Jinja to escape (html) or not, as it would have."""
    _weight_check(value)
    text = value if hasattr(value, "__html__") else str(value)
    _budget.get().write(len(text) + static)
    return text


def _size_check(value: Any) -> Any:
    if isinstance(value, _SIZED) and len(value) > OUTPUT_LIMIT:
        raise SecurityError(f"the template builds a value of more than {OUTPUT_LIMIT:,} characters or items")
    return value


def _weight(value: Any, limit: int = WRITE_LIMIT) -> int:
    """About how many characters str(value) makes, counted until it passes `limit`. A list may
    hold the same large list many times (`[rows] * 100000`, `[a, a, a]` nested): it is short,
    its text is not."""
    total, stack = 0, [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, (str, bytes)):
            total += len(item) + 2
        elif isinstance(item, (list, tuple)):
            total += 2 * len(item) + 2
            stack.extend(item)
        elif isinstance(item, dict):
            total += 4 * len(item) + 2
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 1  # its digits, about
        else:
            total += 1
    return total


def _weight_check(value: Any) -> None:
    """Before a list, tuple or dict is turned into text (written, `~`, a filter)."""
    if isinstance(value, (list, tuple, dict)) and _weight(value) > WRITE_LIMIT:
        raise SecurityError(f"the template uses a value whose text would pass {WRITE_LIMIT:,} characters "
                            "(counting what its lists hold)")


@pass_context
def _concat(context, *parts: Any) -> str:
    """`a ~ b`: refused past the output limit (checked before joining)."""
    for part in parts:
        _weight_check(part)
    texts = [str(part) for part in parts]
    if sum(map(len, texts)) > OUTPUT_LIMIT:
        raise SecurityError(f"the template builds a value of more than {OUTPUT_LIMIT:,} characters")
    _budget.get().tick()
    return "".join(texts)


class _Bounded(NodeTransformer):
    """Rewrites a parsed template so that its cost goes through the budget:
    `{% for x in it %}` iterates `it|__counted`, `a ~ b` is `a|__concat(b)`, and every
    `{{ expression }}` is written through `|__written` (with the literal text beside it).

    The hooks are filters, not functions: Jinja calls a filter directly, while a call in a
    sandboxed template goes through the sandbox's checks (three times slower). They take the
    context (pass_context), which keeps Jinja from evaluating them once at compile time
    (`{{ 'literal' }}` would be charged once, not at each render). A template's own filters
    may not start with "_" (`x|__written(-10**9)` would give it budget back)."""

    def visit_Filter(self, node: nodes.Filter) -> nodes.Filter:
        if node.name.startswith("_"):
            raise TemplateSyntaxError(f"No filter named {node.name!r}.", node.lineno)
        self.generic_visit(node)
        return node

    def visit_For(self, node: nodes.For) -> nodes.For:
        self.generic_visit(node)
        node.iter = _hook(node.iter, "__counted")
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Filter:
        self.generic_visit(node)
        return _hook(node.nodes[0], "__concat", *node.nodes[1:])

    def visit_Output(self, node: nodes.Output) -> nodes.Output:
        self.generic_visit(node)
        static = sum(len(child.data) for child in node.nodes if isinstance(child, nodes.TemplateData))
        children = []
        for child in node.nodes:
            if isinstance(child, nodes.TemplateData):  # left as it is: literal HTML is not escaped
                children.append(child)
                continue
            children.append(_hook(child, "__written", nodes.Const(static)))
            static = 0
        if static:  # only literal text: charged by writing an empty string
            children.insert(0, _hook(nodes.Const(""), "__written", nodes.Const(static)))
        node.nodes = children
        return node


def _hook(node: nodes.Expr, name: str, *args: nodes.Expr) -> nodes.Filter:
    return nodes.Filter(node, name, list(args), [], None, None, lineno=node.lineno)


def _checked_filter(filter_):
    """Every filter: its arguments' weight checked before it runs; its result's size, and the
    CPU limit, after (a filter
    may make its input a few times larger: escaping, `list|string`; chained, without this
    check, they would grow it exponentially)."""

    @functools.wraps(filter_)  # keeps Jinja's pass_eval_context / pass_environment marks
    def checked(*args, **kwargs):
        budget = _budget.get()
        for arg in (*args, *kwargs.values()):  # many filters turn their input into text
            _weight_check(arg)
        result = _size_check(filter_(*args, **kwargs))
        budget.check_time()
        return result

    return checked


def _bounded_filter(filter_, *, size):
    """A filter refused when `size(args)` says its output would pass the output limit."""

    @functools.wraps(filter_)
    def bounded(*args, **kwargs):
        if size(*args, **kwargs) > OUTPUT_LIMIT:
            name = filter_.__name__.removeprefix("do_").removeprefix("sync_do_")
            raise SecurityError(f"the filter {name} would build more than {OUTPUT_LIMIT:,} characters")
        return filter_(*args, **kwargs)

    return bounded


def _width(value, width=80, *args, **kwargs) -> int:
    return len(str(value)) + (width if isinstance(width, int) else 0)


def _indented(value, width=4, first=False, blank=False) -> int:
    lines = str(value).count("\n") + 1
    return len(str(value)) + lines * (width if isinstance(width, int) else len(str(width)))


def _wrapped(environment, s, width=79, break_long_words=True, wrapstring=None, *args, **kwargs) -> int:
    """Lines wrapped greedily: two consecutive lines hold at least `width` characters, so a
    paragraph has at most 2 * len / width + 1 lines; each gets a `wrapstring`."""
    text = str(s)
    joiner = environment.newline_sequence if wrapstring is None else str(wrapstring)
    lines = 2 * len(text) // max(width, 1) + text.count("\n") + 1 if isinstance(width, int) else len(text) + 1
    return len(text) + lines * len(joiner)


def _replaced(eval_ctx, value, old, new, count=None) -> int:
    text, old, new = str(value), str(old), str(new)
    hits = len(text) + 1 if old == "" else text.count(old)
    return len(text) + hits * max(0, len(new) - len(old))


@pass_eval_context
def _join(eval_ctx, value, d="", attribute=None):
    """The join filter, bounded: its items are listed once, measured, then joined (measuring a
    generator, `items|map(...)|join`, must not spend it)."""
    items = list(value)
    size = sum(len(item) if isinstance(item, str) else _weight(item, OUTPUT_LIMIT) for item in items)
    if size + len(str(d)) * len(items) > OUTPUT_LIMIT:
        raise SecurityError(f"the filter join would build more than {OUTPUT_LIMIT:,} characters")
    return sync_do_join(eval_ctx, items, d, attribute)


@pass_environment
def _sum(environment, iterable, attribute=None, start=0):
    """The sum filter, of numbers only: `lists|sum(start=[])` concatenates, in quadratic time."""
    if isinstance(start, bool) or not isinstance(start, (int, float)):
        raise SecurityError("the filter sum adds numbers only (start must be a number)")
    return sync_do_sum(environment, iterable, attribute, start)


@pass_eval_context
def _tojson(eval_ctx, value, indent=None):
    """The tojson filter, with an indent of at most 8: each line is indented by its depth
    times `indent` (tojson(indent=999999999) would build a gigabyte per line)."""
    if indent is not None and (isinstance(indent, bool) or not isinstance(indent, int) or not 0 <= indent <= 8):
        raise SecurityError("the filter tojson takes an indent from 0 to 8")
    return do_tojson(eval_ctx, value, indent)


class TemplateSandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox with a bounded cost (see the module docstring)."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self, *, html: bool):
        # optimized=False: Jinja's constant folding tries every node's subtree again at each
        # level (cubic in the nesting: 190 chained filters took 3 s to compile, at save time).
        super().__init__(autoescape=html, undefined=StrictUndefined, keep_trailing_newline=True, optimized=False)
        self.globals = {"range": self._range}
        self.filters["center"] = _bounded_filter(do_center, size=_width)
        self.filters["indent"] = _bounded_filter(do_indent, size=_indented)
        self.filters["wordwrap"] = _bounded_filter(do_wordwrap, size=_wrapped)
        self.filters["replace"] = _bounded_filter(do_replace, size=_replaced)
        self.filters["join"] = _join
        self.filters["sum"] = _sum
        self.filters["tojson"] = _tojson
        # batch(n, fill) pads to n items, slice(n) makes n lists, whatever the input.
        self.filters["batch"] = _bounded_filter(do_batch, size=lambda value, count, *a, **k: count if a or k else 0)
        self.filters["slice"] = _bounded_filter(sync_do_slice, size=lambda value, count, *a, **k: count)
        del self.filters["format"]  # printf-style: its widths are unbounded
        self.filters = {name: _checked_filter(filter_) for name, filter_ in self.filters.items()}
        self.filters.update(__counted=_counted, __concat=_concat, __written=_written)  # see _Bounded

    def _parse(self, source, name, filename):
        return _Bounded().visit(super()._parse(source, name, filename))

    def _range(self, *args: int) -> range:
        numbers = range(*args)
        try:
            too_long = len(numbers) > OUTPUT_LIMIT
        except OverflowError:  # more items than a C long counts
            too_long = True
        if too_long:
            raise SecurityError(f"range() of more than {OUTPUT_LIMIT:,} numbers is not allowed")
        return numbers

    def wrap_str_format(self, value: Any):
        # str.format and format_map take widths ("{:>999999999}") that build anything.
        if super().wrap_str_format(value) is None:
            return None

        def refused(*args, **kwargs):
            raise SecurityError("str.format is not allowed; write the values in the text")

        return refused

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - Jinja's own signature
        """A call of the template's own code (a macro, `caller()`, `self.block()`, a recursive
        loop's `loop(items)`) is a step: a macro calling itself twice cannot run 2**40 times.
        A recursive loop's items are counted as a loop's are. Other calls (methods, range) tick."""
        budget = _budget.get()
        if isinstance(__obj, (Macro, LoopContext, BlockReference)):
            budget.step()
        else:
            budget.tick()
        if isinstance(__obj, LoopContext) and args:
            args = (_counted(__context, args[0]), *args[1:])
        method = getattr(__obj, "__name__", None)
        if isinstance(getattr(__obj, "__self__", None), (str, bytes)) and method in _UNBOUNDED_STR_METHODS:
            raise SecurityError(f"str.{method} is not allowed (its size is unbounded); use the filters")
        return super().call(__context, __obj, *args, **kwargs)

    def call_binop(self, context, operator_: str, left: Any, right: Any) -> Any:
        _budget.get().tick()
        if operator_ == "%" and isinstance(left, (str, bytes)):
            raise SecurityError("string formatting with % is not allowed; write the value in the text")
        if operator_ == "**" and isinstance(right, (int, float)) and abs(right) > EXPONENT_LIMIT:
            raise SecurityError(f"exponents over {EXPONENT_LIMIT} are not allowed")
        if operator_ in ("*", "**") and isinstance(left, int) and isinstance(right, int):
            bits = left.bit_length() * abs(right) if operator_ == "**" else left.bit_length() + right.bit_length()
            if bits > NUMBER_BITS_LIMIT:
                raise SecurityError(f"the template computes a number of more than {NUMBER_BITS_LIMIT:,} bits")
        if operator_ == "*":
            for sequence, times in ((left, right), (right, left)):
                if isinstance(sequence, _SIZED) and isinstance(times, int) and (
                        len(sequence) * times > OUTPUT_LIMIT
                        or isinstance(sequence, (list, tuple)) and _weight(sequence) * times > WRITE_LIMIT):
                    raise SecurityError(f"the template builds a value of more than {OUTPUT_LIMIT:,} characters or items")
        if operator_ == "+" and isinstance(left, _SIZED) and isinstance(right, _SIZED) and (
                len(left) + len(right) > OUTPUT_LIMIT  # doubling a string 20 times: a billion characters
                or isinstance(left, (list, tuple)) and _weight(left) + _weight(right) > WRITE_LIMIT):
            raise SecurityError(f"the template builds a value of more than {OUTPUT_LIMIT:,} characters or items")
        return {"*": operator.mul, "**": operator.pow, "%": operator.mod, "+": operator.add}[operator_](left, right)


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
    except ValueError as exc:  # e.g. a number literal of more than 4,300 digits (int() refuses it)
        raise TemplateProblem(where, f"cannot be compiled: {exc}") from None


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


def render_variant(variant: Mapping[str, str], data: Mapping[str, Any], *, where: str,
                   cpu_seconds: float = CPU_LIMIT_SECONDS) -> dict[str, str]:
    """Each field of a variant rendered with `data`, within the budgets (`cpu_seconds` at
    most); TemplateProblem naming the field (and the variable, for one that is missing)."""
    # Compiled before the budget is set: with a budget, Jinja's compile-time folding of
    # constant filters would run (and be charged) once, in whichever render compiled it.
    templates = {field: compile_field(f"{where}.{field}", field, variant[field])
                 for field in FIELDS if variant.get(field) is not None}
    token = _budget.set(_Budget(min(cpu_seconds, CPU_LIMIT_SECONDS)))
    try:
        rendered = {}
        for field in FIELDS:
            template = templates.get(field)
            rendered[field] = "" if template is None else _render_bounded(template, data, where=f"{where}.{field}")
        return rendered
    finally:
        _budget.reset(token)


def _render_bounded(template, data: Mapping[str, Any], *, where: str) -> str:
    parts: list[str] = []
    size = 0
    try:
        for chunk in template.generate(data):
            size += len(chunk)
            if size > OUTPUT_LIMIT:
                raise TemplateProblem(where, f"renders more than {OUTPUT_LIMIT:,} characters")
            parts.append(chunk)
    except TemplateProblem:
        raise  # the output limit, above (a ValueError: not to be wrapped again below)
    except UndefinedError as exc:
        raise TemplateProblem(where, f"{exc.message} (give it in data)") from None
    except SecurityError as exc:
        raise TemplateProblem(where, f"refused by the sandbox: {exc}") from None
    except TemplateError as exc:
        raise TemplateProblem(where, str(exc)) from None
    except (ArithmeticError, AttributeError, TypeError, ValueError, LookupError, RecursionError) as exc:
        # What Python raises inside a filter or an operator ('a'|dictsort: AttributeError).
        raise TemplateProblem(where, f"{type(exc).__name__}: {exc}") from None
    text = "".join(parts)
    return str(text) if isinstance(text, Markup) else text


def render(*, variants: Mapping[str, Any], translations: Mapping[str, Any], default_locale: str,
           locale: str | None, channel: str, kind: str, data: Mapping[str, Any],
           cpu_seconds: float = CPU_LIMIT_SECONDS) -> Rendered:
    """The variant of a template version for `channel` (of `kind`) in `locale`, rendered."""
    chosen_locale, key, variant = choose_variant(variants=variants, translations=translations,
                                                 default_locale=default_locale, locale=locale,
                                                 channel=channel, kind=kind)
    where = "variants" if chosen_locale == default_locale else f"translations.{chosen_locale}"
    fields = render_variant(variant, data, where=f"{where}.{key}", cpu_seconds=cpu_seconds)
    return Rendered(subject=fields["subject"], text=fields["text"], html=fields["html"], locale=chosen_locale, variant=key)
