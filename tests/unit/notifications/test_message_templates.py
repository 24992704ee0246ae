"""The template sandbox (notifications/message_templates.py): every known way out of a Jinja
sandbox, and every way to make a render cost minutes or gigabytes, is a TemplateProblem that
says what was refused, raised within a second; and what a template may do, it does right
(escaping, missing variables, syntax errors, locales, the variant chosen).

The escapes are the published ones (`''.__class__.__mro__`, the globals of cycler, joiner,
namespace and lipsum, `self._TemplateReference__context`, `str.format` with attribute
lookups) and the cost bounds one of each kind: a value built at once (`*`, `**`, `+`, `~`,
`%`, str.format widths, padding filters and str methods), a list holding one list many times
(short, but its text is not), repeated work (nested loops, recursive macros and loops),
written buffers (`{% set %}` blocks, macros), chains of filters that each grow a value, and
the CPU limit behind all of them.
"""

from __future__ import annotations

import re
import time

import pytest

from notifications import message_templates
from notifications.message_templates import (
    LOOP_BUDGET,
    OUTPUT_LIMIT,
    Rendered,
    TemplateProblem,
    check_variants,
    locale_chain,
    render,
    render_variant,
)

WITHIN_SECONDS = 1.0  # every refusal, on a shared 2-core machine; each takes milliseconds
ORDER = {"order": {"id": "A-1", "total": 12.5, "items": [{"name": "Tea", "qty": 2}, {"name": "Cup", "qty": 1}]},
         "name": "Ann <3"}


def short(value) -> str | None:
    """A test id: the template, cut (some repeat a character thousands of times)."""
    if not isinstance(value, str):
        return None
    value = re.sub(r"(.)\1{9,}", lambda m: f"{m.group(1)}*{len(m.group(0))}", value)
    return value if len(value) <= 70 else value[:67] + "..."


def refused(source: str, data: dict | None = None, *, field: str = "text") -> str:
    """Render `source` as one field of a variant: it must be refused, fast. The problem's message."""
    variant = {"text": "-", field: source}
    started = time.monotonic()
    with pytest.raises(TemplateProblem) as problem:
        render_variant(variant, ORDER if data is None else data, where="variants.email")
    elapsed = time.monotonic() - started
    assert elapsed < WITHIN_SECONDS, f"refused after {elapsed:.2f}s: {problem.value}"
    assert problem.value.where == f"variants.email.{field}"
    return problem.value.message


def rendered(source: str, data: dict | None = None, *, field: str = "text") -> str:
    return render_variant({"text": "-", field: source}, ORDER if data is None else data, where="variants.email")[field]


# --- ways out of the sandbox ----------------------------------------------------------------------


@pytest.mark.parametrize("source", [
    "{{ ''.__class__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ [].__class__.__base__.__subclasses__() }}",
    "{{ ()|attr('__class__') }}",
    "{{ ''['__class__'] }}",
    "{{ self.__init__.__globals__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ range.__self__ }}",
    "{{ range.__func__.__globals__ }}",
    "{% for x in [1] %}{{ loop.__init__.__globals__ }}{% endfor %}",
    "{% for x in [1] %}{{ loop.cycle.__globals__ }}{% endfor %}",
    "{% macro m() %}{% endmacro %}{{ m.__init__.__globals__ }}",
    "{{ order.__class__ }}",
    "{{ order.items.__self__ }}",
    "{{ order['__class__'] }}",
    "{{ order|attr('__class__') }}",
    "{{ order.id.__class__.__mro__ }}",
], ids=short)
def test_dunder_and_private_attributes_are_refused_when_rendered(source):
    message = refused(source)
    assert "refused by the sandbox" in message and "unsafe" in message


@pytest.mark.parametrize("name", ["cycler", "joiner", "namespace", "lipsum", "dict", "config", "request"], ids=short)
def test_jinjas_default_globals_are_absent(name):
    # cycler.__init__.__globals__, namespace.__init__.__globals__, lipsum.__globals__: the
    # classic ways to os; none of these names exists in our sandbox.
    assert "refused by the sandbox" in refused(f"{{{{ {name}.__init__.__globals__ }}}}")
    assert refused(f"{{{{ {name} }}}}") == f"'{name}' is undefined (give it in data)"


@pytest.mark.parametrize("source", [
    "{{ '{0.__class__.__mro__}'.format(order) }}",
    "{{ '{:>999999999}'.format(1) }}",
    "{{ '{x}'.format_map(order) }}",
    "{{ ('a'|safe).format(1) }}",
], ids=short)
def test_str_format_is_refused(source):
    # format's field names reach attributes ({0.__class__}) and its widths build anything.
    assert refused(source) == "refused by the sandbox: str.format is not allowed; write the values in the text"


@pytest.mark.parametrize("source", ["{{ '%999999999d' % 1 }}", "{{ '%s' % order }}", "{{ ('%s'|safe) % 1 }}"],
                         ids=short)
def test_percent_formatting_of_strings_is_refused(source):
    assert "string formatting with % is not allowed" in refused(source)


def test_percent_of_numbers_still_works():
    assert rendered("{{ 7 % 3 }} {{ 7.5 % 2 }}") == "1 1.5"


@pytest.mark.parametrize("source", [
    "{{ order._internal }}",
    "{{ order['_internal'] }}",
    "{{ order.items[0]._secret }}",
    "{{ ''.__class__ }}",
], ids=short)
def test_a_name_starting_with_underscore_is_refused_when_saved_naming_its_line(source):
    with pytest.raises(TemplateProblem) as problem:
        check_variants({"email": {"subject": "Hi", "text": f"Hello\n\n{source}"}})
    assert problem.value.where == "variants.email.text"
    assert problem.value.message.startswith("line 3: '_") and "is not allowed" in problem.value.message


def test_a_key_of_the_data_starting_with_underscore_is_the_datas_own():
    # Data are JSON: a "_key" of an object is a value the client sent, not a way out (the
    # save-time check refuses the name anyway); attributes of Python objects stay refused.
    assert rendered("{{ order['_note'] }}", {"order": {"_note": "gift"}}) == "gift"


@pytest.mark.parametrize("source", [
    "{% set x = [] %}{{ x.append(1) }}",
    "{% set d = {} %}{{ d.update({'a': 1}) }}",
    "{{ order.update({'id': 'hacked'}) }}",
    "{{ order.pop('id') }}",
    "{{ order.setdefault('x', 1) }}",
    "{{ order['items'].clear() }}",
    "{{ order['items'].append(1) }}",
    "{{ order['items'].sort() }}",
], ids=short)
def test_data_cannot_be_mutated(source):
    data = {"order": {"id": "A-1", "items": [3, 1, 2]}}
    assert "unsafe" in refused(source, data)
    assert data == {"order": {"id": "A-1", "items": [3, 1, 2]}}


def test_set_cannot_assign_into_data():
    data = {"order": {"id": "A-1"}}
    assert "namespace" in refused("{% set order.id = 'hacked' %}{{ order.id }}", data)
    assert rendered("{% set order = {'id': 'local'} %}{{ order.id }}", data) == "local"  # a local name only
    assert data == {"order": {"id": "A-1"}}


@pytest.mark.parametrize("source", ["{% include 'x' %}", "{% import 'x' as y %}", "{% extends 'x' %}",
                                    "{% from 'x' import y %}"], ids=short)
def test_other_templates_cannot_be_loaded(source):
    assert "no loader" in refused(source)


@pytest.mark.parametrize("source", ["{{ order|__written(-1000000000) }}", "{% for x in order|__counted %}{% endfor %}",
                                    "{{ order|_private }}", "{% filter __written(-1) %}x{% endfilter %}"], ids=short)
def test_the_sandboxs_own_hooks_are_not_filters_a_template_may_use(source):
    # x|__written(-10**9) would hand the template its write budget back.
    with pytest.raises(TemplateProblem, match=r"line 1: No filter named '_"):
        check_variants({"email": {"text": source}})


# --- values built at once -----------------------------------------------------------------------


@pytest.mark.parametrize("source, complaint", [
    ("{{ 'a' * 10**9 }}", "builds a value of more than 100,000 characters"),
    ("{{ 10**9 * 'a' }}", "builds a value of more than 100,000 characters"),
    ("{{ [1] * 10**9 }}", "builds a value of more than 100,000 characters or items"),
    ("{{ (1, 2) * 10**9 }}", "builds a value of more than 100,000 characters or items"),
    ("{{ 10 ** (10 ** 10) }}", "exponents over 64 are not allowed"),
    ("{{ 2 ** (10 ** 9) }}", "exponents over 64 are not allowed"),
    ("{{ 10.0 ** 400 }}", "exponents over 64 are not allowed"),
    # a chain of ** growing the base: each exponent is small, the number is not
    ("{{ ((2 ** 64) ** 64) ** 64 }}", "computes a number of more than 4,096 bits"),
    ("{% set a = 2 ** 64 %}{% set b = a ** 60 %}{{ b ** 60 }}", "computes a number of more than 4,096 bits"),
    # a chain of multiplications: 2**64 multiplied by itself 70 times
    ("{% set a = 2 ** 64 %}{{ a" + " * a" * 70 + " }}", "computes a number of more than 4,096 bits"),
    # squaring by recursion: 3 ** (2 ** 40)
    ("{% macro sq(x, n) %}{% if n %}{{ sq(x * x, n - 1) }}{% else %}{{ x }}{% endif %}{% endmacro %}{{ sq(3, 40) }}",
     "computes a number of more than 4,096 bits"),
    # + and ~ doubling a string: 20 doublings would be 100 GB
    ("{% set a = 'x' * 60000 %}{% set a = a + a %}{% set a = a + a %}{{ a|length }}", "more than 100,000"),
    ("{% set a = [1] * 60000 %}{{ (a + a)|length }}", "more than 100,000 characters or items"),
    ("{% set a = 'x' * 30000 %}{{ a ~ a ~ a ~ a }}", "builds a value of more than 100,000 characters"),
    ("{% set a = 'x' * 60000 %}{% set b = a ~ a %}ok", "builds a value of more than 100,000 characters"),
    ("{{ range(10**9) }}", "range() of more than 100,000 numbers is not allowed"),
    ("{{ range(10**30)|list }}", "range() of more than 100,000 numbers is not allowed"),
    ("{{ range(0, 10**9, 2)|sum }}", "range() of more than 100,000 numbers is not allowed"),
], ids=short)
def test_a_large_value_is_refused_before_it_is_built(source, complaint):
    assert complaint in refused(source)


def test_jinjas_power_is_left_associative_so_10_to_10_to_10_is_small():
    # In Jinja, 10 ** 10 ** 10 is (10 ** 10) ** 10 (not Python's 10 ** (10 ** 10)): 10**100.
    started = time.monotonic()
    assert rendered("{{ 10 ** 10 ** 10 }}") == "1" + "0" * 100
    assert time.monotonic() - started < WITHIN_SECONDS


@pytest.mark.parametrize("source, complaint", [
    ("{{ 'a'|center(999999999) }}", "the filter center would build"),
    ("{{ 'a\nb'|indent(999999999) }}", "the filter indent would build"),
    ("{{ ('a\n' * 1000)|indent('x' * 1000) }}", "the filter indent would build"),
    ("{{ ('a ' * 20000)|wordwrap(1, wrapstring='x' * 5000) }}", "the filter wordwrap would build"),
    ("{{ ('a' * 1000)|replace('a', 'b' * 100000) }}", "the filter replace would build"),
    ("{{ ('a' * 1000)|replace('', 'b' * 1000) }}", "the filter replace would build"),
    ("{{ range(1000)|join('x' * 100000) }}", "the filter join would build"),
    ("{{ [1]|batch(999999999, 0)|list }}", "the filter batch would build"),
    ("{{ [1]|slice(999999999)|list }}", "the filter slice would build"),
    ("{{ [1]|tojson(indent=999999999) }}", "the filter tojson takes an indent from 0 to 8"),
    ("{{ ['a']|map('center', 999999999)|list }}", "the filter center would build"),
    # sum(start=[]) concatenates lists, in quadratic time
    ("{{ range(20000)|batch(1)|sum(start=[]) }}", "the filter sum adds numbers only"),
], ids=short)
def test_filters_that_take_a_size_are_bounded(source, complaint):
    assert complaint in refused(source)


NESTED = ("{% set a = [rows, rows, rows, rows, rows, rows, rows, rows, rows, rows] %}"
          "{% set b = [a, a, a, a, a, a, a, a, a, a] %}{% set c = [b, b, b, b, b, b, b, b, b, b] %}")


@pytest.mark.parametrize("source, complaint", [
    # [rows] * 100000 is 100,000 references to one list (short); its text is 100,000 copies
    ("{{ [rows] * 100000 }}", "builds a value of more than 100,000 characters or items"),
    ("{{ ([rows] * 3) + ([rows] * 5) }}", "builds a value of more than 100,000 characters or items"),
    (NESTED + "{{ c }}", "uses a value whose text would pass 1,000,000 characters"),
    (NESTED + "{{ c|string }}", "uses a value whose text would pass 1,000,000 characters"),
    (NESTED + "{{ c|tojson }}", "uses a value whose text would pass 1,000,000 characters"),
    (NESTED + "{{ c ~ '' }}", "uses a value whose text would pass 1,000,000 characters"),
    (NESTED + "{{ c|join(',') }}", "uses a value whose text would pass 1,000,000 characters"),
    ("{{ {}.fromkeys(range(100000), rows) }}", "uses a value whose text would pass 1,000,000 characters"),
    ("{{ [2 ** 64] * 90000 }}", "builds a value of more than 100,000 characters or items"),
], ids=short)
def test_a_value_holding_one_list_many_times_is_weighed_before_it_becomes_text(source, complaint):
    # Without the weighing, each of these built gigabytes (MemoryError after half a minute).
    assert complaint in refused(source, {"rows": list(range(50_000))})


def test_a_long_list_of_data_is_fine_for_filters_that_do_not_print_it():
    assert rendered("{{ rows|length }} {{ rows|sort|first }} {{ rows|sum }} {{ rows|max }}",
                    {"rows": list(range(50_000))}) == "50000 0 1249975000 49999"


@pytest.mark.parametrize("method", ["ljust(999999999)", "rjust(999999999)", "center(999999999)", "zfill(999999999)",
                                    "expandtabs(999999999)", "replace('a', 'b' * 100000)", "join(['a'] * 100000)",
                                    "translate({97: 'b' * 100000})", "encode()"], ids=short)
def test_str_methods_that_pad_or_repeat_are_refused(method):
    source = f"{{{{ ('a' * 1000).{method} }}}}"
    name = method.split("(")[0]
    assert f"str.{name} is not allowed" in refused(source)


@pytest.mark.parametrize("chain", [
    "('&' * 90000)" + "|forceescape" * 8,  # & -> &amp;: five times larger each time
    "('&' * 90000)" + "|urlencode" * 8,  # & -> %26 -> %2526 ...
    "('a' * 90000)" + "|list|string" * 4,  # 'a' -> "['a', ...]": five times larger
    "(range(10000)|list)" + "|tojson|list" * 4,
    "('<' * 30000)|urlize|urlize",  # < -> &lt;
], ids=short)
def test_a_chain_of_filters_that_grow_a_value_stops_at_the_limit(chain):
    assert "builds a value of more than 100,000" in refused("{{ " + chain + " }}")


# --- work repeated --------------------------------------------------------------------------------


@pytest.mark.parametrize("source, data", [
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", None),
    ("{% for a in rows %}{% for b in rows %}{% endfor %}{% endfor %}", {"rows": list(range(50_000))}),
    ("{% for a in rows %}{% for b in rows if false %}{% endfor %}{% endfor %}", {"rows": list(range(50_000))}),
    ("{% for a in range(3) %}{% for x in rows %}{{ x }}{% endfor %}{% endfor %}", {"rows": list(range(5_000))}),
    # a macro calling itself twice: 2**40 calls, with no output and no loop
    ("{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}", None),
    # a recursive loop branching in two at each level
    ("{% for x in [1, 1] recursive %}{% if loop.depth < 40 %}{{ loop([1, 1]) }}{% endif %}{% endfor %}", None),
    # a recursive loop's inner lists are counted as a loop's
    ("{% for x in [1] recursive %}{% if loop.depth < 3 %}{{ loop(range(100000)) }}{% endif %}{% endfor %}", None),
    # blocks calling each other
    ("{% block a %}{% if true %}{{ self.b() }}{{ self.b() }}{% endif %}{% endblock %}"
     "{% block b %}{{ self.c() }}{{ self.c() }}{% endblock %}"
     "{% block c %}{% for i in range(3000) %}{% endfor %}{% endblock %}", None),
], ids=short)
def test_loops_and_calls_are_counted_against_one_budget(source, data):
    assert f"runs more than {LOOP_BUDGET:,} loop iterations and calls" in refused(source, data)


@pytest.mark.parametrize("source", [
    "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "{% block a %}{{ self.a() }}{% endblock %}",
    "{% macro f() %}{{ caller() }}{% endmacro %}"
    "{% macro g() %}{% call f() %}{{ g() }}{% endcall %}{% endmacro %}{{ g() }}",
], ids=short)
def test_endless_recursion_is_refused(source):
    assert "RecursionError" in refused(source)


def test_the_budget_is_of_a_whole_variant_not_of_each_field():
    half = "{% for i in range(" + str(LOOP_BUDGET * 6 // 10) + ") %}{% endfor %}ok"
    assert render_variant({"text": half}, {}, where="v")["text"] == "ok"
    with pytest.raises(TemplateProblem, match="loop iterations and calls") as problem:
        render_variant({"subject": half, "text": half}, {}, where="v")
    assert problem.value.where == "v.text"  # the field that ran out


def test_a_loop_of_exactly_the_budget_runs_and_each_render_has_its_own():
    full = "{% for i in range(" + str(LOOP_BUDGET) + ") %}{% endfor %}ok"
    for _ in range(3):
        assert render_variant({"text": full}, {}, where="v")["text"] == "ok"


def test_the_cpu_limit_stops_linear_work_repeated_in_a_loop(monkeypatch):
    # 10,000 sorts of a 100,000-item list fit the loop budget but would take a minute; the CPU
    # limit (0.5 s; lowered here to keep the test short) stops them.
    monkeypatch.setattr(message_templates, "CPU_LIMIT_SECONDS", 0.1)
    data = {"rows": list(range(100_000))}
    message = refused("{% for i in range(10000) %}{% set s = rows|sort %}{% endfor %}", data)
    assert message == "refused by the sandbox: the template takes more than 0.1 s of CPU to render"


def test_the_cpu_limit_stops_a_long_chain_of_filters(monkeypatch):
    monkeypatch.setattr(message_templates, "CPU_LIMIT_SECONDS", 0.1)
    data = {"rows": list(range(100_000))}
    assert "s of CPU to render" in refused("{{ rows" + "|sort|reverse" * 90 + " }}", data)


# --- what is written --------------------------------------------------------------------------------


@pytest.mark.parametrize("source", [
    "{% set x %}{% for i in range(10000) %}{{ 'y' * 99999 }}{% endfor %}{% endset %}{{ x|length }}",
    "{% macro m() %}{% for i in range(10000) %}{{ 'y' * 99999 }}{% endfor %}{% endmacro %}{{ m()|length }}",
    "{% filter upper %}{% for i in range(10000) %}{{ 'y' * 99999 }}{% endfor %}{% endfilter %}",
    "{% set x %}{% for i in range(10000) %}" + "y" * 19000 + "{% endfor %}{% endset %}{{ x|length }}",
    "{% macro m() %}{{ caller() }}{% endmacro %}{% call m() %}{% for i in range(10000) %}{{ 'y' * 99999 }}{% endfor %}"
    "{% endcall %}",
], ids=short)
def test_buffers_are_bounded_too_not_only_the_output(source):
    # Each would hold a gigabyte before its length is output.
    assert "writes more than 1,000,000 characters (buffers included)" in refused(source)


@pytest.mark.parametrize("source, data", [
    ("{% for i in range(2000) %}{{ 'x' * 100 }}{% endfor %}", None),
    ("{% for i in range(2000) %}" + "x" * 100 + "{% endfor %}", None),
    ("{{ big }}", {"big": "x" * (OUTPUT_LIMIT + 1)}),
], ids=short)
def test_output_over_the_limit_is_refused(source, data):
    assert refused(source, data) == f"renders more than {OUTPUT_LIMIT:,} characters"


def test_output_up_to_the_limit_is_fine():
    assert len(rendered("{{ big }}", {"big": "x" * OUTPUT_LIMIT})) == OUTPUT_LIMIT


def test_a_number_too_long_to_parse_is_a_problem_when_saved():
    with pytest.raises(TemplateProblem, match="cannot be compiled"):
        check_variants({"email": {"text": "{{ " + "9" * 5000 + " }}"}})


def test_python_errors_in_a_template_are_problems_not_crashes():
    assert refused("{{ 1 // 0 }}") == "ZeroDivisionError: integer division or modulo by zero"
    assert refused("{{ 'a'|dictsort }}").startswith("AttributeError:")
    assert refused("{{ [1, 2]|select('divisibleby', 0)|list }}").startswith("ZeroDivisionError")


# --- what templates do ------------------------------------------------------------------------------


def test_html_is_autoescaped_and_text_is_not():
    variant = {"subject": "For {{ name }}", "text": "Hello {{ name }}",
               "html": "<p>Hello {{ name }}</p>{% set b %}<b>{{ name }}</b>{% endset %}{{ b }}|{{ name|safe }}"}
    fields = render_variant(variant, {"name": "<i>&"}, where="v")
    assert fields == {"subject": "For <i>&", "text": "Hello <i>&",
                      "html": "<p>Hello &lt;i&gt;&amp;</p><b>&lt;i&gt;&amp;</b>|<i>&"}
    assert type(fields["html"]) is str  # not Markup


def test_a_missing_variable_is_named():
    assert refused("Hello {{ name }} {{ customer.first_name }}", {"name": "Ann"}) == \
        "'customer' is undefined (give it in data)"
    assert refused("{{ order.coupon }}") == "'dict object' has no attribute 'coupon' (give it in data)"


def test_a_syntax_error_names_its_line():
    with pytest.raises(TemplateProblem) as problem:
        check_variants({"email": {"subject": "Hi", "text": "Hello\n{{ name }}\n{% if name %}unclosed"}})
    assert problem.value.where == "variants.email.text"
    assert problem.value.message.startswith("line 3: Unexpected end of template")


@pytest.mark.parametrize("variants, complaint", [
    ({}, "must be an object of channel kinds or names"),
    ({"email": "text"}, "must be an object"),
    ({"email": {"subject": "Hi"}}, "needs a text"),
    ({"email": {"text": "x", "body": "y"}}, "unknown field(s) body"),
    ({"email": {"text": 3}}, "must be a string"),
    ({"email": {"text": "x" * (message_templates.SOURCE_LIMIT + 1)}}, "is longer than 20,000 characters"),
], ids=short)
def test_malformed_variants_are_problems(variants, complaint):
    with pytest.raises(TemplateProblem, match=complaint.replace("(", r"\(").replace(")", r"\)")):
        check_variants(variants)


def test_common_template_features_work():
    source = ("{% for item in order['items'] %}{{ loop.index }}/{{ loop.length }} {{ item.name|upper }}"
              "{{ loop.cycle(',', ';') }}{% else %}none{% endfor %} "
              "{{ order['items']|map(attribute='name')|join(', ') }} {{ order['items']|sum(attribute='qty') }} "
              "{{ [1, 2, 3]|slice(2)|list }} {{ '%.2f'|replace('%', '') }} {{ order.total|round }} "
              "{% macro tag(x) %}<{{ x }}>{% endmacro %}{{ tag('b') }}"
              "{% macro box() %}[{{ caller() }}]{% endmacro %}{% call box() %}{{ name }}{% endcall %} "
              "{{ 'a' + 'b' }} {{ [1] + [2] }} {{ 2 * 3 }} {{ 2 ** 10 }} {{ name ~ '!' }}")
    assert rendered(source) == ("1/2 TEA,2/2 CUP; Tea, Cup 3 [[1, 2], [3]] .2f 12.0 <b>[Ann <3] "
                                "ab [1, 2] 6 1024 Ann <3!")


def test_a_recursive_loop_over_a_tree_works():
    tree = [{"name": "a", "children": [{"name": "b", "children": []}, {"name": "c", "children": []}]}]
    assert rendered("{% for n in tree recursive %}{{ n.name }}{% if n.children %}({{ loop(n.children) }}){% endif %}"
                    "{% endfor %}", {"tree": tree}) == "a(bc)"


# --- choosing the variant ---------------------------------------------------------------------------


VARIANTS = {"email": {"subject": "Order {{ id }}", "text": "Your order {{ id }}", "html": "<p>Order {{ id }}</p>"},
            "email-marketing": {"subject": "Deals", "text": "Deals for order {{ id }}"},
            "sms": {"text": "Order {{ id }}"}}
TRANSLATIONS = {"de": {"email": {"subject": "Bestellung {{ id }}", "text": "Ihre Bestellung {{ id }}"}},
                "de-CH": {"sms": {"text": "Bstellig {{ id }}"}}}


def choose(locale: str | None, channel: str = "email", kind: str = "email") -> Rendered:
    return render(variants=VARIANTS, translations=TRANSLATIONS, default_locale="en", locale=locale,
                  channel=channel, kind=kind, data={"id": "A-1"})


def test_locales_fall_back_from_region_to_language_to_the_default():
    assert locale_chain("de-AT", "en") == ["de-AT", "de", "en"]
    assert locale_chain("de", "en") == ["de", "en"]
    assert locale_chain(None, "en") == ["en"]
    assert locale_chain("en-GB", "en") == ["en-GB", "en"]
    assert choose("de-AT") == Rendered(subject="Bestellung A-1", text="Ihre Bestellung A-1", html="", locale="de",
                                       variant="email")
    assert choose("fr").locale == "en" and choose(None).subject == "Order A-1"
    # a locale without a variant for this channel falls back like a missing locale
    assert (choose("de-CH", "email").locale, choose("de-CH", "sms", "sms").text) == ("de", "Bstellig A-1")


def test_the_channel_name_beats_its_kind_within_a_locale():
    assert choose(None, "email-marketing", "email").text == "Deals for order A-1"
    assert choose(None, "email-local", "email").text == "Your order A-1"
    # the locale comes first: German for the marketing channel is the German email variant
    assert choose("de", "email-marketing", "email").variant == "email"


def test_rendered_has_every_field_and_where_it_came_from():
    result = choose("en-US")
    assert result == Rendered(subject="Order A-1", text="Your order A-1", html="<p>Order A-1</p>", locale="en",
                              variant="email")
    assert choose(None, "sms", "sms").subject == "" and choose(None, "sms", "sms").html == ""


def test_no_variant_for_the_channel_is_a_problem():
    with pytest.raises(TemplateProblem, match="has no variant for channel 'slack-ops' or its kind 'slack'"):
        choose(None, "slack-ops", "slack")


def test_a_problem_names_the_translation_and_field_it_came_from():
    with pytest.raises(TemplateProblem) as problem:
        render(variants=VARIANTS, translations=TRANSLATIONS, default_locale="en", locale="de", channel="email",
               kind="email", data={})
    assert problem.value.where == "translations.de.email.subject" and "'id' is undefined" in problem.value.message
