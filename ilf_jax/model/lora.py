"""LoRA adapters on any model whose kernels carry logical axis names: sites, init, merge.

A projection's role is read from its kernel's logical axis names, not from family-specific code:
input `embed` -> output `mlp` is the MLP's input projection (`mlp_in`), `mlp` -> `embed` its output
(`mlp_out`), `*heads*` -> `embed` attention's output (`out`), `embed` -> `*heads*` a query, key or
value projection: by the fused axis of size 3 of a q/k/v kernel (CodeGen's [E, 3, H, D], index
0/1/2), or else by the kernel's module name (`q`/`q_proj`/`query`, ...). An adapter on a site is
`a` [*in, r] and `b` [r, *out] (logical names: the kernel's input names, then None for the rank;
None, then the output names), so it is sharded like its base kernel; the kernel becomes
`W + (alpha / r) * a @ b`. Applying adapters as merged weights keeps the model code untouched
(every family gets LoRA), gives the merged model's logits by construction, and trains only
`a`, `b`; the price is that there is no per-token adapter input, so no LoRA dropout.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from ilf_jax.errors import IlfError

ROLES = ("q", "k", "v", "out", "mlp_in", "mlp_out")
_QKV_NAMES = {"q": "q", "query": "q", "k": "k", "key": "k", "v": "v", "value": "v"}


@dataclasses.dataclass(frozen=True)
class Site:
    """One adapted projection: kernel `path`, its `role`, and how its axes split into input and
    output features (`slot`: index along the fused q/k/v axis that follows the input axes)."""

    path: tuple[str, ...]
    role: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    in_names: tuple[str | None, ...]
    out_names: tuple[str | None, ...]
    slot: int | None = None

    @property
    def n_in(self) -> int:
        return math.prod(self.in_shape)

    @property
    def n_out(self) -> int:
        return math.prod(self.out_shape)


def _is_heads(name: str | None) -> bool:
    return name is not None and "heads" in name


def _module_role(path: tuple[str, ...]) -> str | None:
    for part in reversed(path[-2:]):
        m = re.fullmatch(r"(q|k|v|query|key|value)(_proj)?", part)
        if m:
            return _QKV_NAMES[m.group(1)]
    return None


def _sites_of(path: tuple[str, ...], names: tuple[str | None, ...], shape: tuple[int, ...]) -> list[Site]:
    if len(shape) < 2 or len(names) != len(shape) or "vocab" in names:
        return []

    def site(role: str, n_in: int, slot: int | None = None) -> Site:
        skip = n_in + (slot is not None)
        return Site(path, role, shape[:n_in], shape[skip:], names[:n_in], names[skip:], slot)

    if names[0] == "embed" and "mlp" in names[1:]:
        return [site("mlp_in", 1)]
    if names[0] == "mlp" and names[-1] == "embed":
        return [site("mlp_out", len(shape) - 1)]
    if _is_heads(names[0]) and names[-1] == "embed":
        return [site("out", len(shape) - 1)]
    if names[0] == "embed" and any(_is_heads(n) for n in names[1:]):
        if len(shape) > 2 and names[1] is None and shape[1] == 3:
            return [site(r, 1, i) for i, r in enumerate(("q", "k", "v"))]
        role = _module_role(path)
        return [site(role, 1)] if role else []
    return []


def _path_names(path: Any) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def projection_sites(specs: Any, shapes: Any) -> list[Site]:
    """Every LoRA-able projection of a model, from its logical param specs and abstract params."""
    out = []
    spec_leaves = dict(jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda x: isinstance(x, PartitionSpec)))
    for path, leaf in jax.tree_util.tree_leaves_with_path(shapes):
        spec = spec_leaves.get(path)
        if spec is not None:
            out += _sites_of(_path_names(path), tuple(spec), tuple(leaf.shape))
    return out


@dataclasses.dataclass(frozen=True)
class Lora:
    """The adapters of one run: which sites, rank and scale (alpha / rank)."""

    sites: tuple[Site, ...]
    rank: int
    alpha: float

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @classmethod
    def for_model(cls, specs: Any, shapes: Any, targets: Sequence[str], rank: int, alpha: float) -> Lora:
        """Sites of `targets` (roles) in a model; refuses roles that name no parameter and bad ranks."""
        found = projection_sites(specs, shapes)
        if not isinstance(rank, int) or rank <= 0:
            raise IlfError(f"train config: lora.rank={rank!r} must be a positive integer")
        sites = []
        for role in targets:
            mine = [s for s in found if s.role == role]
            if not mine:
                have = sorted({s.role for s in found}, key=ROLES.index)
                raise IlfError(f"train config: lora target {role!r} names no parameter of this model (it has: {', '.join(have)})")
            sites += mine
        for s in sites:
            if rank > min(s.n_in, s.n_out):
                raise IlfError(f"train config: lora.rank={rank} is larger than the {s.role} projection "
                               f"{'/'.join(s.path)} ({s.n_in} x {s.n_out})")
        order = {r: i for i, r in enumerate(ROLES)}
        sites.sort(key=lambda s: (s.path, order[s.role]))
        return cls(tuple(sites), rank, float(alpha))

    def _tree(self, leaf) -> dict:
        tree: dict = {}
        for s in self.sites:
            node = tree
            for k in s.path:
                node = node.setdefault(k, {})
            node[s.role] = leaf(s)
        return tree

    def abstract(self) -> Any:
        """ShapeDtypeStructs of the adapters (fp32), nested like the params plus a role level."""
        f32 = jnp.float32
        return self._tree(lambda s: {"a": jax.ShapeDtypeStruct((*s.in_shape, self.rank), f32),
                                     "b": jax.ShapeDtypeStruct((self.rank, *s.out_shape), f32)})

    def specs(self) -> Any:
        """Logical names of every adapter leaf (`PartitionSpec`s), following the base kernel's."""
        return self._tree(lambda s: {"a": PartitionSpec(*s.in_names, None), "b": PartitionSpec(None, *s.out_names)})

    def init(self, key: jax.Array) -> Any:
        """`a` uniform in +-1/sqrt(fan_in) (PEFT's kaiming-uniform), `b` zero: the base model exactly."""
        keys = iter(jax.random.split(key, len(self.sites)))
        return self._tree(lambda s: {
            "a": jax.random.uniform(next(keys), (*s.in_shape, self.rank), jnp.float32, -1.0, 1.0) / math.sqrt(s.n_in),
            "b": jnp.zeros((self.rank, *s.out_shape), jnp.float32)})

    def delta(self, site: Site, adapters: Any) -> jax.Array:
        """(alpha / r) * a @ b of one site, fp32, shaped [*in, *out]."""
        ad = adapters
        for k in site.path:
            ad = ad[k]
        ad = ad[site.role]
        a = ad["a"].astype(jnp.float32).reshape(site.n_in, self.rank)
        b = ad["b"].astype(jnp.float32).reshape(self.rank, site.n_out)
        return (self.scale * (a @ b)).reshape(*site.in_shape, *site.out_shape)

    def merge(self, params: Any, adapters: Any, dtype: Any = None) -> Any:
        """`params` with every adapted kernel replaced by W + delta (in `dtype`, default W's)."""
        out = _copy_along(params, [s.path for s in self.sites])
        for path in dict.fromkeys(s.path for s in self.sites):
            w = _get(params, path)
            merged = w.astype(jnp.float32)
            for s in (s for s in self.sites if s.path == path):
                d = self.delta(s, adapters)
                if s.slot is None:
                    merged = merged + d
                else:
                    merged = merged.at[(slice(None),) * len(s.in_shape) + (s.slot,)].add(d)
            _set(out, path, merged.astype(dtype or w.dtype))
        return out


def _get(tree: Any, path: tuple[str, ...]) -> Any:
    for k in path:
        tree = tree[k]
    return tree


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for k in path[:-1]:
        tree = tree[k]
    tree[path[-1]] = value


def _copy_along(tree: Any, paths: Sequence[tuple[str, ...]]) -> Any:
    """A copy of the nested dicts on `paths` (other subtrees shared): safe to `_set` into."""
    out = dict(tree)
    heads = {p[0] for p in paths if len(p) > 1}
    for h in heads:
        out[h] = _copy_along(tree[h], [p[1:] for p in paths if p[0] == h and len(p) > 1])
    return out


def _hf_permutations(entry: Any, shape: tuple[int, ...], n_in: int) -> tuple:
    """For a kernel whose HF form is a permutation: (ours-input index of each HF column, ours-output
    index of each HF row), found by pushing an index-coded kernel through `entry.to_hf`."""
    n_out = math.prod(shape) // n_in
    code = np.arange(n_in * n_out, dtype=np.int64).reshape(shape)
    hf = entry.to_hf(code)
    if hf.ndim != 2:
        raise IlfError(f"PEFT export: {entry.hf_name} is not a 2-D linear weight")
    return hf[0] // n_out, hf[:, 0] % n_out


def peft_tensors(lora: Lora, adapters: Any, entries: Sequence[Any]) -> tuple[dict[str, np.ndarray], list[str], int]:
    """PEFT LoRA weights of the adapters, for the HF modules named by `entries` (the family's
    weight map): {name: array}, target modules, rank. Each HF module gets one rank-R adapter
    whose `B @ A` is exactly its summed delta: the sites of a fused kernel (CodeGen's q, k, v in
    `qkv_proj`) stack their `a` along the rank and place their `b` in their rows, every module is
    zero-padded to the largest R, and the scale alpha / r is folded into B (lora_alpha = R)."""
    by_path = {tuple(e.path): e for e in entries}
    groups: dict[tuple[str, ...], list[Site]] = {}
    for s in lora.sites:
        groups.setdefault(s.path, []).append(s)
    rank = max(len(g) for g in groups.values()) * lora.rank
    tensors, modules = {}, []
    for path, sites in groups.items():
        entry = by_path.get(path)
        if entry is None:
            raise IlfError(f"PEFT export: no HF tensor for parameter {'/'.join(path)}")
        s0 = sites[0]
        shape = (*s0.in_shape, *(() if s0.slot is None else (3,)), *s0.out_shape)
        cols, rows = _hf_permutations(entry, shape, s0.n_in)
        n_out = math.prod(shape) // s0.n_in
        a = np.zeros((s0.n_in, rank), np.float32)
        b = np.zeros((rank, n_out), np.float32)
        for j, s in enumerate(sites):
            node = adapters
            for k in s.path:
                node = node[k]
            node = node[s.role]
            r = slice(j * lora.rank, (j + 1) * lora.rank)
            a[:, r] = np.asarray(node["a"], np.float32).reshape(s.n_in, lora.rank)
            bs = lora.scale * np.asarray(node["b"], np.float32).reshape(lora.rank, -1)
            if s.slot is None:
                b[r] = bs
            else:
                full = np.zeros((lora.rank, 3, s.n_out), np.float32)
                full[:, s.slot] = bs
                b[r] = full.reshape(lora.rank, -1)
        module = entry.hf_name.removesuffix(".weight")
        tensors[f"base_model.model.{module}.lora_A.weight"] = np.ascontiguousarray(a[cols].T)
        tensors[f"base_model.model.{module}.lora_B.weight"] = np.ascontiguousarray(b[:, rows].T)
        modules.append(module)
    return tensors, modules, rank


def export_peft(lora: Lora, adapters: Any, entries: Sequence[Any], out_dir: Any, base_model: str | None = None) -> Any:
    """Write `adapter_config.json` + `adapter_model.safetensors`, which
    `peft.PeftModel.from_pretrained(base, out_dir)` loads (host arrays in, process 0 writes)."""
    import json
    import pathlib

    from ilf_jax.model.safetensors_io import write_safetensors

    out_dir = pathlib.Path(out_dir)
    tensors, modules, rank = peft_tensors(lora, adapters, entries)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_safetensors(out_dir / "adapter_model.safetensors",
                      [(k, v.shape, v.dtype, v) for k, v in tensors.items()], metadata={"format": "pt"})
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": rank, "lora_dropout": 0.0,
              "target_modules": sorted({m.rsplit(".", 1)[-1] for m in modules}), "bias": "none",
              "fan_in_fan_out": False, "inference_mode": True, "base_model_name_or_path": base_model,
              "modules_to_save": None, "init_lora_weights": True, "use_rslora": False, "use_dora": False}
    (out_dir / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out_dir
