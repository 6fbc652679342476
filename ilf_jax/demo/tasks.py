"""A generated MBPP-shaped task family: short filter/map/reduce functions with text, code and asserts.

Every task is one *template* (domain, reduction, map, filter) filled with *constants*. The
*corpus idiom* of a spec (`reference_code`) is a single `return` line with a comprehension over
`x` or `s`: the base model is pretrained on it (with bugs) and the annotator edits towards it. The
task's `code`, its "MBPP gold" (`gold_code`), is written independently in another idiom (a loop
with an accumulator, or filter/map with lambdas, other names) and computes the same values, as
MBPP's gold was written by other people than the model's corpus. Expected values come from
running our own generated code in-process (never model output).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import random
from collections.abc import Callable

from ilf_jax.data.task import Task
from ilf_jax.demo.bugs import applicable_bugs

FIRST_TASK_ID = 11  # ids 1-10 are the paper's unused prompt split

_WORDS = (
    "apple", "banana", "cherry", "date", "lemon", "mango", "olive", "pear", "plum", "kiwi",
    "grape", "melon", "peach", "onion", "tomato", "carrot", "bean", "corn", "rice", "bread",
    "table", "chair", "lamp", "door", "window", "house", "tree", "river", "stone", "cloud",
    "rain", "snow", "wind", "fire", "sun", "moon", "star", "sky", "sea", "road",
)
_LETTERS = "abcdelmnoprst"

# name -> (code, text, name token, constants); `{k}` is the constant, `{v}` the loop variable.
_INT_FILTERS: dict[str, tuple[str, str, str, tuple]] = {
    "none": ("", "", "", ()),
    "gt": ("{v} > {k}", "greater than {k}", "greater", tuple(range(1, 10))),
    "lt": ("{v} < {k}", "less than {k}", "less", tuple(range(2, 11))),
    "ge": ("{v} >= {k}", "at least {k}", "atleast", tuple(range(1, 10))),
    "le": ("{v} <= {k}", "at most {k}", "atmost", tuple(range(2, 11))),
    "div": ("{v} % {k} == 0", "divisible by {k}", "divisible", (3, 4, 5)),
    "even": ("{v} % 2 == 0", "even", "even", ()),
    "odd": ("{v} % 2 == 1", "odd", "odd", ()),
}
_INT_MAPS: dict[str, tuple[str, str, str, tuple]] = {
    "id": ("{v}", "{items}", "", ()),
    "sq": ("{v} ** 2", "the squares of {items}", "squares", ()),
    "abs": ("abs({v})", "the absolute values of {items}", "abs", ()),
    "mul": ("{v} * {k}", "{items}, each multiplied by {k}", "times", (2, 3, 4, 5)),
    "add": ("{v} + {k}", "{items}, each increased by {k}", "plus", tuple(range(1, 10))),
    "sub": ("{v} - {k}", "{items}, each decreased by {k}", "minus", tuple(range(1, 10))),
}
_STR_FILTERS: dict[str, tuple[str, str, str, tuple]] = {
    "none": ("", "", "", ()),
    "starts": ("{v}.startswith({k!r})", "start with {k!r}", "starting", tuple(_LETTERS)),
    "ends": ("{v}.endswith({k!r})", "end with {k!r}", "ending", tuple(_LETTERS)),
    "long": ("len({v}) > {k}", "longer than {k} characters", "long", (3, 4, 5)),
    "short": ("len({v}) < {k}", "shorter than {k} characters", "short", (4, 5, 6)),
}
_STR_MAPS: dict[str, tuple[str, str, str, tuple]] = {
    "id": ("{v}", "{items}", "", ()),
    "upper": ("{v}.upper()", "the uppercase forms of {items}", "upper", ()),
    "rev": ("{v}[::-1]", "the reverses of {items}", "reversed", ()),
    "first": ("{v}[0]", "the first letters of {items}", "initials", ()),
    "len": ("len({v})", "the lengths of {items}", "lengths", ()),
}
# reduction -> (code around the generator/list, text around the mapped items, name token)
_REDUCES: dict[str, tuple[str, str, str]] = {
    "sum": ("sum({gen})", "find the sum of {x}", "sum"),
    "max": ("max({gen})", "find the largest value among {x}", "max"),
    "min": ("min({gen})", "find the smallest value among {x}", "min"),
    "count": ("len([{gen}])", "count {x}", "count"),
    "list": ("[{gen}]", "return a list of {x}", "list"),
    "join": ("''.join({gen})", "join {x} into one string", "join"),
}
_DOMAINS: dict[str, tuple[str, str, str]] = {  # domain -> (argument, iterable, items text)
    "ints": ("nums", "nums", "the numbers in a list"),
    "range": ("n", "range(1, n + 1)", "the numbers from 1 to n"),
    "strs": ("words", "words", "the strings in a list"),
}
_DOMAIN_WEIGHTS = {"ints": 0.5, "range": 0.2, "strs": 0.3}


@dataclasses.dataclass(frozen=True)
class Template:
    """The structure of a task: domain, reduction, map and filter names."""

    domain: str
    reduce: str
    map: str
    filter: str


@dataclasses.dataclass(frozen=True)
class Spec:
    """A template instance: the template plus its map and filter constants."""

    template: Template
    map_k: object = None
    filter_k: object = None


def _tables(domain: str) -> tuple[dict, dict]:
    """The (maps, filters) tables of a domain."""
    return (_STR_MAPS, _STR_FILTERS) if domain == "strs" else (_INT_MAPS, _INT_FILTERS)


def _valid(t: Template) -> bool:
    """Whether a template makes a sensible, non-trivial task (so it always has a map or a filter)."""
    if t.map == "id" and t.filter == "none":
        return False
    if t.reduce == "count":
        return t.map == "id"
    if t.domain == "strs":
        return {"sum": t.map == "len", "join": t.map != "len", "list": True}.get(t.reduce, False)
    if t.domain == "range":
        return t.reduce in ("sum", "list") and t.map != "abs"
    return t.reduce != "join"


@functools.cache
def all_templates() -> tuple[Template, ...]:
    """Every valid template, in a fixed order."""
    out = []
    for domain in _DOMAINS:
        maps, filters = _tables(domain)
        for red in _REDUCES:
            for m in maps:
                for f in filters:
                    t = Template(domain, red, m, f)
                    if _valid(t):
                        out.append(t)
    return tuple(out)


def _draw_spec(template: Template, rng: random.Random) -> Spec:
    """Fill a template with random constants."""
    maps, filters = _tables(template.domain)
    mk, fk = maps[template.map][3], filters[template.filter][3]
    return Spec(template, rng.choice(mk) if mk else None, rng.choice(fk) if fk else None)


def _has_constants(t: Template) -> bool:
    """Whether a template has more than one instance."""
    maps, filters = _tables(t.domain)
    return bool(maps[t.map][3] or filters[t.filter][3])


def function_name(spec: Spec) -> str:
    """An MBPP-like function name, e.g. `sum_squares_greater`; one name per template."""
    t = spec.template
    maps, filters = _tables(t.domain)
    parts = [_REDUCES[t.reduce][2], maps[t.map][2], filters[t.filter][2]]
    if t.domain == "range":
        parts.append("upto")
    return "_".join(p for p in parts if p)


def task_text(spec: Spec, python: bool = False) -> str:
    """The natural-language description, e.g. 'Write a function to find the sum of ...'."""
    t = spec.template
    maps, filters = _tables(t.domain)
    items = _DOMAINS[t.domain][2]
    ftext = filters[t.filter][1].format(k=spec.filter_k)
    if ftext:
        items += f" that {'are ' if t.domain != 'strs' or t.filter in ('long', 'short') else ''}{ftext}"
    mapped = maps[t.map][1].format(items=items, k=spec.map_k)
    lead = "Write a python function to " if python else "Write a function to "
    return lead + _REDUCES[t.reduce][1].format(x=mapped) + "."


def _parts(spec: Spec, var: str) -> tuple[str, str, str]:
    """(iterable, filter condition or "", mapped expression) of a spec, with loop variable `var`."""
    t = spec.template
    maps, filters = _tables(t.domain)
    cond = filters[t.filter][0].format(k=spec.filter_k, v=var)
    return _DOMAINS[t.domain][1], cond, maps[t.map][0].format(k=spec.map_k, v=var)


def reference_body(spec: Spec) -> str:
    """The corpus idiom's one-line body (indented, newline-terminated): what the base model learns."""
    var = "s" if spec.template.domain == "strs" else "x"
    iterable, cond, mapped = _parts(spec, var)
    gen = f"{mapped} for {var} in {iterable}" + (f" if {cond}" if cond else "")
    return f"    return {_REDUCES[spec.template.reduce][0].format(gen=gen)}\n"


def _def_line(spec: Spec) -> str:
    """The `def` line every program of the spec shares (the task prompt ends with it)."""
    return f"def {function_name(spec)}({_DOMAINS[spec.template.domain][0]}):\n"


def reference_code(spec: Spec) -> str:
    """The corpus idiom's full program: the `def` line and the one-line body."""
    return _def_line(spec) + reference_body(spec)


GOLD_STYLES = ("loop", "functional")
# reduction -> (accumulator, its start, update with {a} the accumulator and {m} the mapped value, final value)
_LOOP_REDUCES: dict[str, tuple[str, str, str, str]] = {
    "sum": ("total", "0", "{a} += {m}", "{a}"),
    "max": ("found", "[]", "{a}.append({m})", "max({a})"),
    "min": ("found", "[]", "{a}.append({m})", "min({a})"),
    "count": ("count", "0", "{a} += 1", "{a}"),
    "list": ("result", "[]", "{a}.append({m})", "{a}"),
    "join": ("text", "''", "{a} += {m}", "{a}"),
}
# reduction -> the return expression around the (filtered, mapped) iterator {it}
_FUNCTIONAL_REDUCES = {"sum": "sum({it})", "max": "max({it})", "min": "min({it})", "count": "len(list({it}))",
                       "list": "list({it})", "join": "''.join({it})"}


def gold_style(spec: Spec) -> str:
    """Which of GOLD_STYLES the spec's gold is written in (a fixed hash of the spec, so seed-independent)."""
    digest = hashlib.sha256(reference_code(spec).encode()).digest()
    return GOLD_STYLES[digest[0] % len(GOLD_STYLES)]


def gold_body(spec: Spec) -> str:
    """The gold body in the spec's gold style (an accumulator loop, a while loop over 1..n, or filter/map
    with lambdas): never the corpus's comprehension nor its names x / s."""
    t = spec.template
    if gold_style(spec) == "loop":
        var = {"ints": "num", "range": "i", "strs": "word"}[t.domain]
        iterable, cond, mapped = _parts(spec, var)
        acc, start, update, final = _LOOP_REDUCES[t.reduce]
        counting = t.domain == "range"  # 1 to n as a while loop, not the corpus's range(1, n + 1)
        lines = [f"    {acc} = {start}"] + ([f"    {var} = 1", f"    while {var} < n + 1:"] if counting
                                            else [f"    for {var} in {iterable}:"])
        indent = "        "
        if cond:
            lines.append(f"{indent}if {cond}:")
            indent += "    "
        lines.append(indent + update.format(a=acc, m=mapped))
        lines += [f"        {var} += 1"] if counting else []
        return "\n".join(lines + [f"    return {final.format(a=acc)}"]) + "\n"
    var = {"ints": "v", "range": "k", "strs": "w"}[t.domain]
    iterable, cond, mapped = _parts(spec, var)
    lines, it = [], iterable
    if cond:
        lines.append(f"    kept = filter(lambda {var}: {cond}, {it})")
        it = "kept"
    if mapped != var:
        lines.append(f"    values = map(lambda {var}: {mapped}, {it})")
        it = "values"
    lines.append(f"    return {_FUNCTIONAL_REDUCES[t.reduce].format(it=it)}")
    return "\n".join(lines) + "\n"


def gold_code(spec: Spec) -> str:
    """The task's gold program (its `code`): the shared `def` line and the independently written body."""
    return _def_line(spec) + gold_body(spec)


@functools.cache
def _templates_by_name() -> dict[str, Template]:
    """Function name -> template (one name per template)."""
    out = {function_name(Spec(t)): t for t in all_templates()}
    if len(out) != len(all_templates()):
        raise AssertionError("two templates share a function name")
    return out


@functools.lru_cache(maxsize=8192)
def corpus_reference(gold: str) -> str:
    """The corpus-idiom program of the spec whose gold program is `gold` (what the annotator edits towards)."""
    name = gold.split("(", 1)[0].removeprefix("def ")
    template = _templates_by_name().get(name)
    if template is not None:
        maps, filters = _tables(template.domain)
        for mk in maps[template.map][3] or (None,):
            for fk in filters[template.filter][3] or (None,):
                spec = Spec(template, mk, fk)
                if gold_code(spec) == gold:
                    return reference_code(spec)
    raise ValueError(f"not the gold program of a demo task: {gold[:80]!r}")


@functools.lru_cache(maxsize=8192)
def _compile(code: str, name: str) -> Callable:
    """The function `name` defined by our own generated `code` (cached: instances repeat)."""
    env: dict = {}
    exec(code, env)  # noqa: S102 - generated here from the grammar above, never model output
    return env[name]


def _call(fn: Callable, arg: object) -> object:
    """Call a generated function on a copy of one argument; an exception comes back as its type."""
    try:
        return fn(list(arg) if isinstance(arg, list) else arg)
    except Exception as e:  # noqa: BLE001 - a crash is a distinguishable outcome
        return type(e)


def _draw_input(spec: Spec, rng: random.Random) -> object:
    """A random argument, biased to contain the constants so that boundary bugs show."""
    t = spec.template
    if t.domain == "range":
        return rng.randint(3, 15)
    if t.domain == "strs":
        words = rng.sample(_WORDS, rng.randint(3, 6))
        if t.filter in ("starts", "ends") and rng.random() < 0.8:
            stem = rng.choice(("ab", "ot", "en", "ar", "il"))
            words[rng.randrange(len(words))] = spec.filter_k + stem if t.filter == "starts" else stem + spec.filter_k
        return words
    low = -6 if t.map in ("abs", "sub") else 0
    nums = [rng.randint(low, 12) for _ in range(rng.randint(4, 7))]
    if isinstance(spec.filter_k, int):
        for i in range(len(nums)):
            if rng.random() < 0.25:
                nums[i] = spec.filter_k
    return nums


def _mutants(spec: Spec) -> list[str]:
    """Wrong programs the asserts must reject: any mix of applicable bugs, and the spec minus its map or filter."""
    code = reference_code(spec)
    bugs = applicable_bugs(code)
    out = [functools.reduce(lambda c, b: b.apply(c), subset, code)
           for r in range(1, len(bugs) + 1) for subset in itertools.combinations(bugs, r)]
    t, head = spec.template, code.split("\n", 1)[0] + "\n"
    if t.map != "id":
        out.append(head + reference_body(dataclasses.replace(spec, template=dataclasses.replace(t, map="id"))))
    if t.filter != "none":
        out.append(head + reference_body(dataclasses.replace(spec, template=dataclasses.replace(t, filter="none"))))
    return out


def make_task(spec: Spec, task_id: int, rng: random.Random, python: bool = False) -> Task | None:
    """Build the task of a spec: gold code and three asserts that pass on it and on the corpus idiom
    and catch each bug applied to the corpus idiom.

    Returns None when no inputs were found that make every applicable bug (and dropping the map
    or the filter) fail a test.
    """
    code, name = reference_code(spec), function_name(spec)
    fn, mutants = _compile(code, name), [_compile(m, name) for m in _mutants(spec)]
    for _ in range(50):
        args = [_draw_input(spec, rng) for _ in range(3)]
        if len({repr(a) for a in args}) < 3:
            continue
        outs = [_call(fn, a) for a in args]
        if any(isinstance(o, type) for o in outs) or len({repr(o) for o in outs}) < 2:
            continue
        if all(any(_call(m, a) != o for a, o in zip(args, outs)) for m in mutants):
            gold, gold_fn = gold_code(spec), _compile(gold_code(spec), name)
            if [_call(gold_fn, a) for a in args] != outs:
                raise AssertionError(f"gold and corpus idiom disagree on {name}: {gold!r}")
            tests = tuple(f"assert {name}({a!r}) == {o!r}" for a, o in zip(args, outs))
            return Task(task_id, task_text(spec, python), gold, tests)
    return None


@functools.cache
def _templates_of(domain: str) -> tuple[Template, ...]:
    """The valid templates of one domain."""
    return tuple(t for t in all_templates() if t.domain == domain)


def _random_template(rng: random.Random) -> Template:
    """Draw a domain by weight, then a template of that domain uniformly."""
    domain = rng.choices(list(_DOMAIN_WEIGHTS), weights=list(_DOMAIN_WEIGHTS.values()))[0]
    return rng.choice(_templates_of(domain))


def draw_task(rng: random.Random, task_id: int, exclude: set[str],
              templates: tuple[Template, ...] | None = None) -> tuple[Spec, Task]:
    """A random (spec, task) whose gold code is not in `exclude` (from `templates`, default all)."""
    for _ in range(10_000):
        template = rng.choice(templates) if templates else _random_template(rng)
        spec = _draw_spec(template, rng)
        if gold_code(spec) in exclude:
            continue
        task = make_task(spec, task_id, rng, python=rng.random() < 0.2)
        if task is not None:
            return spec, task
    raise ValueError("could not draw a new task: the template space is exhausted")


def split_ranges(n_refine: int, n_train: int, n_test: int) -> dict[str, range]:
    """Task-id ranges in the paper's order: test first (from id 11), then refine, then train."""
    test = range(FIRST_TASK_ID, FIRST_TASK_ID + n_test)
    refine = range(test.stop, test.stop + n_refine)
    return {"test": test, "refine": refine, "train": range(refine.stop, refine.stop + n_train)}


def generate_tasks(seed: int, n_refine: int = 60, n_train: int = 150, n_test: int = 100) -> dict[str, list[Task]]:
    """The demo splits {'refine', 'train', 'test'}; test tasks reuse train templates with new constants."""
    rng = random.Random(seed)
    ids = split_ranges(n_refine, n_train, n_test)
    used: set[str] = set()
    out: dict[str, list[Task]] = {}
    train_templates: set[Template] = set()
    for split in ("refine", "train"):
        out[split] = []
        for tid in ids[split]:
            spec, task = draw_task(rng, tid, used)
            used.add(task.code)
            out[split].append(task)
            if split == "train":
                train_templates.add(spec.template)
    eligible = tuple(t for t in all_templates() if t in train_templates and _has_constants(t))
    out["test"] = []
    for tid in ids["test"]:
        _, task = draw_task(rng, tid, used, eligible)
        used.add(task.code)
        out["test"].append(task)
    return {k: out[k] for k in ("refine", "train", "test")}
