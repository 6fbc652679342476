"""The scripted annotator that plays the human: feedback on a failing program and a minimal refinement.

It diffs the failing body against the task's corpus-idiom body (the model's own style; the task's
gold is written in another) token by token, finds the smallest set of diff hunks whose application
passes the tests (checked in a separate, time-limited process, since the program may come from a
model), and explains exactly those hunks in varied wording. A program
that is too far from any fix gets the corpus-idiom body and feedback that says it was rewritten.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import hashlib
import itertools
import json
import random
import re
import subprocess
import sys
from typing import NamedTuple

from ilf_jax.data.formats import EOS, task_prompt, truncate_completion
from ilf_jax.data.task import Task
from ilf_jax.demo.tasks import corpus_reference

MAX_HUNKS = 3  # beyond this the program counts as too broken for a minimal edit
MIN_SIMILARITY = 0.6  # similarity of non-space tokens to the reference below which the body is rewritten

_TOKEN = re.compile(r"\s+|\w+|\*\*|//|[<>=!]=|'[^'\n]*'|\"[^\"\n]*\"|.")


class Annotation(NamedTuple):
    """Feedback on a failing program and its refinement (full program and body alone)."""

    feedback: str
    refinement: str
    completion: str
    rewrote: bool


@dataclasses.dataclass(frozen=True)
class _Hunk:
    """One difference between the failing and the reference token lists."""

    i1: int
    i2: int
    j1: int
    j2: int


def _split(program: str, task: Task) -> tuple[str, str]:
    """Header (through the tested `def` line) and body, cut as the evaluation cuts a completion."""
    program = program.split(EOS, 1)[0]
    m = None
    for m in re.finditer(rf"^def\s+{re.escape(task.entry_point)}\s*\(.*\n", program, flags=re.M):
        pass
    if m is None:
        return task_prompt(task), ""
    rest = program[m.end():]
    return program[: m.end()], truncate_completion(rest) if rest.strip() else ""


def _reference_body(task: Task) -> str:
    """The body the annotator edits towards: the corpus idiom of the task (the model's own style), not its gold."""
    return corpus_reference(task.code).split("\n", 1)[1]


def _hunks(a: list[str], b: list[str]) -> list[_Hunk]:
    """Non-equal opcodes of a token diff."""
    ops = difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes()
    return [_Hunk(i1, i2, j1, j2) for tag, i1, i2, j1, j2 in ops if tag != "equal"]


def _apply(a: list[str], b: list[str], hunks: tuple[_Hunk, ...]) -> str:
    """The failing tokens with the chosen hunks replaced by their reference tokens."""
    out, pos = [], 0
    for h in sorted(hunks, key=lambda h: h.i1):
        out += a[pos:h.i1] + b[h.j1:h.j2]
        pos = h.i2
    return "".join(out + a[pos:])


_CHILD = r"""
import io, json, resource, signal, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
job = json.loads(sys.stdin.read())
out, real = [], sys.stdout
def alarm(*_):
    raise TimeoutError("timed out")
signal.signal(signal.SIGALRM, alarm)
def run(src, every):
    env, seen = {}, []
    signal.setitimer(signal.ITIMER_REAL, 1.0)
    try:
        exec(job["setup"] + "\n" + src, env)
        for call, expected in job["calls"]:
            try:
                got = eval(call, env)
                seen.append([call, expected, repr(got)[:200], bool(got == eval(expected, env)), False])
            except Exception as e:
                seen.append([call, expected, type(e).__name__ + ": " + str(e)[:200], False, True])
                if isinstance(e, TimeoutError):
                    break
            if not (seen[-1][3] or every):
                break
    except BaseException as e:
        seen.append([None, None, type(e).__name__ + ": " + str(e)[:200], False, True])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return seen
for idx, src in enumerate(job["programs"]):
    sys.stdout = io.StringIO()
    seen = run(src, idx == 0)
    sys.stdout = real
    out.append({"passed": len(seen) == len(job["calls"]) and all(s[3] for s in seen), "seen": seen})
    if out[-1]["passed"]:
        break
real.write(json.dumps(out))
"""


def _calls(task: Task) -> list[tuple[str, str]]:
    """(call, expected) source pairs of the task's `assert call == expected` tests."""
    out = []
    for test in task.test_list:
        node = ast.parse(test).body[0]
        if not (isinstance(node, ast.Assert) and isinstance(node.test, ast.Compare)
                and len(node.test.ops) == 1 and isinstance(node.test.ops[0], ast.Eq)):
            raise ValueError(f"task {task.task_id}: unsupported test {test!r}")
        out.append((ast.get_source_segment(test, node.test.left), ast.get_source_segment(test, node.test.comparators[0])))
    return out


def _check(task: Task, programs: list[str]) -> list[dict]:
    """Run programs in order in a child process, up to the first passing one; [] when the child fails."""
    job = json.dumps({"setup": task.test_setup_code, "calls": _calls(task), "programs": programs})
    try:
        proc = subprocess.run([sys.executable, "-I", "-c", _CHILD], input=job, capture_output=True,
                              text=True, timeout=10 + len(programs))
        return json.loads(proc.stdout)
    except (subprocess.TimeoutExpired, json.JSONDecodeError):
        return []


def _snippet(tokens: list[str], i1: int, i2: int) -> str:
    """Tokens [i1, i2) widened by one non-space token each side, or to a short enclosing call, as text."""
    lo, hi = i1, i2
    while lo > 0 and tokens[lo - 1].isspace():
        lo -= 1
    lo = max(lo - 1, 0)
    while hi < len(tokens) and tokens[hi].isspace():
        hi += 1
    hi = min(hi + 1, len(tokens))
    opener = _unmatched_open(tokens, lo)
    if opener is not None and opener > 0 and re.fullmatch(r"[A-Za-z_]\w*", tokens[opener - 1]):
        close = _matching_close(tokens, opener)
        if close is not None and close - opener <= 12 and close >= hi - 1:
            lo, hi = opener - 1, close + 1
    return " ".join("".join(tokens[lo:hi]).split())


def _unmatched_open(tokens: list[str], lo: int) -> int | None:
    """Index of an unclosed `(` at most 6 tokens left of `lo`."""
    depth = 0
    for k in range(lo - 1, max(lo - 7, -1), -1):
        depth += {")": 1, "(": -1}.get(tokens[k], 0)
        if depth < 0:
            return k
    return None


def _matching_close(tokens: list[str], opener: int) -> int | None:
    """Index of the `)` that closes the `(` at `opener`."""
    depth = 0
    for k in range(opener, len(tokens)):
        depth += {"(": 1, ")": -1}.get(tokens[k], 0)
        if depth == 0:
            return k
    return None


_KNOWN = {  # (old, new) -> phrasings; {old}/{new} are code snippets, {k} the neighbouring constant
    (">=", ">"): (
        "`{old}` also keeps the numbers equal to {k}, but the task asks for numbers strictly greater than {k}: use `{new}`.",
        "The comparison is not strict. \"Greater than {k}\" excludes {k} itself, so write `{new}` instead of `{old}`.",
        "Numbers equal to {k} should not pass the filter; change `{old}` to `{new}`.",
    ),
    ("<=", "<"): (
        "`{old}` also keeps the numbers equal to {k}, but the task asks for numbers strictly less than {k}: use `{new}`.",
        "The comparison is not strict. \"Less than {k}\" excludes {k} itself, so write `{new}` instead of `{old}`.",
        "Numbers equal to {k} should not pass the filter; change `{old}` to `{new}`.",
    ),
    ("", "+ 1"): (
        "`range` excludes its end, so `{old}` stops at n - 1 and misses n. Use `{new}` to include n.",
        "The loop never reaches n: the upper bound of `range` is exclusive. Write `{new}` instead of `{old}`.",
        "Off by one: the numbers should go from 1 up to and including n, which needs `{new}` rather than `{old}`.",
    ),
    ("", "** 2"): (
        "The numbers are never squared. Apply the square before combining them: `{new}` instead of `{old}`.",
        "The task asks for the squares, but the code uses the numbers themselves; write `{new}` instead of `{old}`.",
        "It forgets to square each number. Change `{old}` to `{new}`.",
    ),
    ("startswith", "endswith"): (
        "The filter checks how each string starts, but the task is about how it ends: use `endswith` instead of `startswith`.",
        "`{old}` tests the first letter; the task wants strings that end with that letter, so write `{new}`.",
        "Wrong end of the string: replace `startswith` with `endswith`.",
    ),
}
_GENERIC = {
    "replace": (
        "`{old}` is wrong here; it should be `{new}`.",
        "Replace `{old}` with `{new}`.",
        "The part `{old}` does not match the task description: write `{new}` instead.",
    ),
    "insert": (
        "Something is missing: `{old}` should read `{new}`.",
        "Add the missing piece so that `{old}` becomes `{new}`.",
        "`{old}` is incomplete; it needs to be `{new}`.",
    ),
    "delete": (
        "`{old}` has something extra; it should be just `{new}`.",
        "Remove the extra part so that `{old}` becomes `{new}`.",
        "The task does not ask for what `{old}` adds: write `{new}`.",
    ),
}
_INTROS = (
    "The code is close, but it has {n}.", "There {is_are} {n} in this function.", "Almost right, except for {n}.",
    "This implementation has {n}.",
)
_OBSERVED = (
    "For example, `{call}` returns {got}, but it should return {expected}.",
    "On `{call}` it gives {got} instead of {expected}.",
    "The test with `{call}` expects {expected} and gets {got}.",
)
_CRASHED = (
    "Running it on the tests fails with `{error}`.", "The tests do not even run: `{error}`.",
    "It raises `{error}` on the tests.",
)
_REWRITE = (
    "The function does not do what the task asks, and fixing it piece by piece would change most of it. "
    "It should {goal} in one line: `{code}`.",
    "This code is too far from a working solution to patch. Rewrite the body so that it will {goal}, for instance `{code}`.",
    "The approach is wrong overall. To {goal}, the body can simply be `{code}`.",
)


def _describe(hunk: _Hunk, a: list[str], b: list[str], rng: random.Random) -> str:
    """One sentence that names what a hunk fixes and how."""
    old_part, new_part = "".join(a[hunk.i1:hunk.i2]).strip(), "".join(b[hunk.j1:hunk.j2]).strip()
    old, new = _snippet(a, hunk.i1, hunk.i2), _snippet(b, hunk.j1, hunk.j2)
    k = next((t for t in b[hunk.j2:] if not t.isspace()), "")
    phrasings = _KNOWN.get((old_part, new_part))
    if phrasings is None:
        kind = "replace" if old_part and new_part else ("insert" if new_part else "delete")
        phrasings = _GENERIC[kind]
    return rng.choice(phrasings).format(old=old, new=new, k=k)


def _observation(seen: list, error: str, rng: random.Random) -> str:
    """A sentence about how the original program fails, from its run or else the given error text."""
    for call, expected, got, ok, raised in seen:
        if not ok:
            return rng.choice(_CRASHED if raised else _OBSERVED).format(call=call, got=got, expected=expected, error=got)
    lines = [ln.strip() for ln in error.strip().splitlines() if ln.strip()]
    return rng.choice(_CRASHED).format(error=lines[-1][:200]) if lines else ""


def _goal(task: Task) -> str:
    """The task text as an infinitive phrase ("find the sum of ...")."""
    text = re.sub(r"^Write a (?:python )?function to ", "", task.text.strip()).rstrip(".")
    return text[0].lower() + text[1:] if text else "solve the task"


def annotate(task: Task, program: str, error: str = "", seed: int = 0) -> Annotation | None:
    """Feedback and a minimally edited refinement for a failing `program` (task prompt + completion).

    Returns None when the program already passes or no passing refinement could be verified.
    """
    rng = random.Random(hashlib.sha256(f"{seed}|{task.task_id}|{program}".encode()).digest())
    header, failing = _split(program, task)
    ref = _reference_body(task)
    a, b = _TOKEN.findall(failing), _TOKEN.findall(ref)
    hunks = _hunks(a, b)
    words = [[t for t in toks if not t.isspace()] for toks in (a, b)]
    similarity = difflib.SequenceMatcher(None, *words, autojunk=False).ratio()
    rewrite = len(hunks) > MAX_HUNKS or similarity < MIN_SIMILARITY
    subsets = [] if rewrite else sorted(
        (s for r in range(1, len(hunks)) for s in itertools.combinations(hunks, r)),
        key=lambda s: (sum(h.i2 - h.i1 + h.j2 - h.j1 for h in s), len(s)))
    results = _check(task, [header + failing] + [header + _apply(a, b, s) for s in subsets] + [header + ref])
    if not results or results[0]["passed"] or not results[-1]["passed"]:
        return None
    chosen = tuple(hunks)
    for s, res in zip(subsets, results[1:]):
        if res["passed"]:
            chosen = s
            break
    observed = _observation(results[0]["seen"], error, rng)
    if rewrite:
        line = " ".join(ref.split())
        feedback = " ".join(p for p in (observed, rng.choice(_REWRITE).format(goal=_goal(task), code=line)) if p)
        return Annotation(feedback, header + ref, ref, True)
    fixes = [_describe(h, a, b, rng) for h in sorted(chosen, key=lambda h: h.i1)]
    n = "one mistake" if len(fixes) == 1 else f"{len(fixes)} mistakes"
    intro = rng.choice(_INTROS).format(n=n, is_are="is" if len(fixes) == 1 else "are")
    completion = _apply(a, b, chosen)
    return Annotation(" ".join(p for p in (intro, observed, *fixes) if p), header + completion, completion, False)
