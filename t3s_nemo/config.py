"""One typed config tree for every stage: dataclasses, YAML files, dotted `key=value` overrides.

OmegaConf structured configs give type checking and unknown-key detection against the dataclasses
(as NeMo and Megatron-Bridge do); this module turns its exceptions into one-line errors that name the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from t3s_nemo.errors import T3SError
from t3s_nemo.io import atomic_write_text, read_text


@dataclass
class DataConfig:
    """The packed dataset, and how a run packs data.input into run_dir/data when data.path is empty."""

    path: str = ""  # packed dataset directory (`t3s data pack --output`)
    shuffle: bool = True  # shuffle packed bins each epoch (seeded by train.seed)
    # Packing inputs (`t3s sft`, `t3s train`, `t3s pipeline`, `t3s demo`) when data.path is empty.
    input: str = ""  # JSONL file, directory of *.jsonl, or saved HF dataset packed into run_dir/data
    tokenizer: str = ""  # the student's tokenizer directory, for packing data.input
    seq_length: int = 2048  # packs data.input; a run's config.yaml records its dataset's
    on_overflow: str = "error"  # error | drop | truncate
    template: str = "auto"  # auto | chat | plain
    prompt_field: str = "prompt"
    response_field: str = "response"
    answer_field: str = "answer"
    messages_field: str = "messages"
    id_field: str = "id"
    system_prompt: str = ""  # a system message prepended in chat format (`t3s data pack --system-prompt`)


@dataclass
class ModelConfig:
    """The student: a preset (dense Qwen3 or MoE), optionally with shape overrides, and its starting weights."""

    # tiny | qwen3_0_6b | qwen3_1_7b | qwen3_4b | qwen3_8b | qwen3_14b | qwen3_32b; MoE: llada2_mini | tiny_moe
    preset: str = "tiny"
    init: str = ""  # "" = random init; a t3s checkpoint/snapshot dir; or a Hugging Face model dir
    spec: str = "auto"  # auto (te when Transformer Engine imports, else sdpa) | te | sdpa | local
    objective: str = "ar"  # ar (next-token) | dllm (masked diffusion, docs/dllm.md)
    recompute: str = "none"  # none | selective | full activation recomputation
    # dllm only: the mask token (null = the tokenizer's mask token, else len(tokenizer), an extra id;
    # the chosen id is written back to config.yaml)
    mask_token_id: Optional[int] = None
    noise_eps: float = 1e-3  # dllm only: the lowest noise level, t ~ U(noise_eps, 1)
    # Shape overrides (null = the preset's value).
    num_layers: Optional[int] = None
    hidden_size: Optional[int] = None
    ffn_hidden_size: Optional[int] = None
    num_attention_heads: Optional[int] = None
    num_query_groups: Optional[int] = None
    head_dim: Optional[int] = None
    rope_theta: Optional[float] = None
    tie_embeddings: Optional[bool] = None
    norm_eps: Optional[float] = None  # RMSNorm epsilon (rms_norm_eps)
    max_position_embeddings: Optional[int] = None  # the context length an export declares (and RoPE's table)
    rotary_percent: Optional[float] = None  # fraction of head_dim RoPE rotates (partial_rotary_factor)
    # MoE shape overrides (null = the preset's; num_experts=0 makes an MoE preset dense)
    num_experts: Optional[int] = None
    moe_ffn_hidden_size: Optional[int] = None
    moe_topk: Optional[int] = None
    moe_shared_expert_size: Optional[int] = None
    first_k_dense: Optional[int] = None
    # MoE: coefficient of megatron-core's load-balancing aux loss, added to the training loss (0 = off)
    moe_aux_loss_coeff: float = 1e-3


@dataclass
class ParallelConfig:
    """Megatron parallelism: data parallel size is world size / (tp * pp * cp)."""

    tp: int = 1
    pp: int = 1
    vpp: Optional[int] = None  # virtual pipeline stages per rank (interleaved 1F1B); GPU recipes
    cp: int = 1  # context parallel: examples split over cp ranks (sdpa or te attention)
    ep: int = 1  # expert parallel (MoE presets): experts split over ep ranks of the data-parallel ranks
    sequence_parallel: bool = False
    distributed_optimizer: bool = True
    overlap_grad_reduce: bool = False


@dataclass
class TrainConfig:
    """Optimisation: AdamW, warmup + cosine decay, gradient clipping."""

    steps: int = 100  # optimizer steps
    micro_batch_size: int = 1  # packed bins per micro-batch per data-parallel rank
    global_batch_size: int = 8  # packed bins per optimizer step, over all data-parallel ranks
    lr: float = 1e-5
    min_lr: float = 0.0
    warmup_steps: int = 0
    lr_decay: str = "cosine"  # cosine | linear | constant
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    seed: int = 1234
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp32
    log_interval: int = 1
    tensorboard: bool = True
    wandb_project: str = ""  # empty = no Weights & Biases
    # end this launch after this step with a full checkpoint; the schedule still spans train.steps
    # (online T3S trains in chunks: `resume=auto` continues bit-exactly)
    stop_at: Optional[int] = None


@dataclass
class CheckpointConfig:
    """Full checkpoints for resume, weights-only snapshots for the trajectory."""

    save_interval: int = 0  # full checkpoint every N steps (0 = only at the end)
    snapshot_interval: int = 0  # weights-only snapshot every N steps (1 in the trajectory run)
    snapshot_step0: bool = True  # also snapshot theta_0 (step 0) when snapshots are on
    keep_last: int = 2  # full checkpoints kept (older ones deleted once a newer one is complete)
    snapshot_keep_every: int = 1  # keep every k-th snapshot (1 = all)
    snapshot_window: Optional[list[int]] = None  # [first_step, last_step] to keep snapshots in
    async_save: bool = True  # write in the background; training waits only for the copy to host


@dataclass
class MaskConfig:
    """Which tokens the loss sees, on top of the response-only loss_mask."""

    channel: str = ""  # a uint8 mask channel of the dataset (1 = train on this token)
    rule: str = ""  # or build one at load time from the delta channel: ar | reverse | dllm
    tau: float = 0.2  # dllm threshold: targets are delta < -tau
    delta_channel: str = "delta"


@dataclass
class GenerationConfig:
    """Sampling for the bottleneck search and evaluation."""

    # auto: vllm on GPU if it imports, else transformers at tp=1 and megatron at tp > 1 (a dLLM: megatron)
    backend: str = "auto"  # auto | transformers | vllm | megatron
    n: int = 4  # samples per prompt
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 1024
    batch_size: int = 64  # prompts per generation batch (transformers and megatron backends)
    seed: int = 0
    tp: int = 1  # tensor parallel size of the vllm and megatron backends


@dataclass
class BottleneckConfig:
    """Finding theta_b: the snapshot with the lowest training accuracy."""

    rule: str = "argmin"  # argmin | moving_average | first_recovery
    window: int = 3  # moving-average window (snapshots)
    recovery: float = 0.05  # first_recovery: accuracy must climb this much above the minimum
    margin: float = 0.02  # the minimum must be this far below theta_0's accuracy to count as a dip
    tolerance: float = 0.0  # argmin / moving_average: the earliest snapshot within this of the minimum
    every: int = 1  # evaluate every k-th snapshot
    start: Optional[int] = None  # first step to evaluate
    end: Optional[int] = None  # last step to evaluate
    num_prompts: Optional[int] = None  # training prompts to sample (null = all)
    force: bool = False  # pick theta_b even when no dip was found


@dataclass
class ProfileConfig:
    """Per-token confidence at theta_0 and theta_b."""

    selector_base: str = ""  # selector checkpoint at theta_0 ("" = the run's own model.init/step 0)
    selector_bottleneck: str = ""  # selector at theta_b ("" = the run's bottleneck snapshot)
    micro_batch_size: int = 4


@dataclass
class PipelineConfig:
    """What `t3s pipeline` runs after the trajectory."""

    mask_rule: str = "ar"  # the T3S mask for the retraining run
    baselines: list[str] = field(default_factory=list)  # reverse | static-confidence | static-confidence-low | random
    rrt: bool = False
    sft_steps: Optional[int] = None  # steps of the trajectory run (null = train.steps)
    online: bool = False
    curves: bool = False  # train accuracy of every run along its snapshots: curves.json, accuracy_curves.png, results.md
    curves_every: int = 1  # evaluate every k-th snapshot of the retraining runs (the last always)


@dataclass
class OnlineConfig:
    """`t3s pipeline CONFIG pipeline.online=true`: find theta_b while the SFT run trains (docs/online.md)."""

    eval_every: int = 10  # m: checkpoint and evaluate training accuracy every m steps
    num_prompts: Optional[int] = 64  # the fixed subset of training prompts evaluated (null = all)
    patience: int = 2  # evaluations after the rule's minimum that must not go below it before detection
    restart: str = "theta0"  # masked training from theta0 (the paper) | current (the weights at detection)
    force_step: Optional[int] = None  # detect at this step whatever the curve (tests; a multiple of eval_every)


@dataclass
class Config:
    run_dir: str = ""
    resume: str = "auto"  # auto (continue from the latest complete checkpoint) | never
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    bottleneck: BottleneckConfig = field(default_factory=BottleneckConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    online: OnlineConfig = field(default_factory=OnlineConfig)


CHOICES: dict[str, tuple[str, ...]] = {
    "resume": ("auto", "never"),
    "data.on_overflow": ("error", "drop", "truncate"),
    "data.template": ("auto", "chat", "plain"),
    "model.spec": ("auto", "te", "sdpa", "local"),
    "model.objective": ("ar", "dllm"),
    "model.recompute": ("none", "selective", "full"),
    "train.lr_decay": ("cosine", "linear", "constant"),
    "train.precision": ("auto", "bf16", "fp32"),
    "mask.rule": ("", "ar", "reverse", "dllm"),
    "generation.backend": ("auto", "transformers", "vllm", "megatron"),
    "bottleneck.rule": ("argmin", "moving_average", "first_recovery"),
    "online.restart": ("theta0", "current"),
}

MASK_RULES = ("ar", "reverse", "static-confidence", "static-confidence-low", "random")

POSITIVE: tuple[str, ...] = (
    "parallel.tp", "parallel.pp", "parallel.cp", "parallel.ep", "train.steps", "train.micro_batch_size",
    "train.global_batch_size", "train.log_interval", "checkpoint.keep_last",
    "checkpoint.snapshot_keep_every", "generation.n", "generation.max_new_tokens",
    "generation.batch_size", "generation.tp", "bottleneck.window", "bottleneck.every",
    "profile.micro_batch_size", "data.seq_length", "online.eval_every",
)
# shape overrides: null keeps the preset's value; a value set must be > 0, or >= 0 for the MoE fields (0 in
# every dense shape: num_experts=0 makes an MoE preset dense; an MoE shape's own check wants experts > 0)
POSITIVE_IF_SET: tuple[str, ...] = (
    "model.num_layers", "model.hidden_size", "model.ffn_hidden_size", "model.num_attention_heads",
    "model.num_query_groups", "model.head_dim", "model.rope_theta", "model.norm_eps",
    "model.max_position_embeddings", "model.rotary_percent",
)
NON_NEGATIVE_IF_SET: tuple[str, ...] = ("model.num_experts", "model.moe_ffn_hidden_size", "model.moe_topk",
                                        "model.moe_shared_expert_size", "model.first_k_dense")
NON_NEGATIVE: tuple[str, ...] = (
    "train.lr", "train.min_lr", "train.warmup_steps", "train.weight_decay", "train.clip_grad",
    "checkpoint.save_interval", "checkpoint.snapshot_interval", "generation.temperature",
    "mask.tau", "bottleneck.recovery", "bottleneck.margin", "bottleneck.tolerance", "online.patience", "model.moe_aux_loss_coeff",
)


def _all_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(node):
        full = f"{prefix}{f.name}"
        keys.append(full)
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            keys.extend(_all_keys(value, full + "."))
    return keys


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, _all_keys(Config()), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _explain(err: OmegaConfBaseException, source: str, section: str = "") -> T3SError:
    # a merge error on a whole section (e.g. `train: 3`) carries no full_key; the caller knows it
    key = getattr(err, "full_key", None) or section
    if isinstance(err, ConfigKeyError):
        # full_key can be the parent node when a whole unknown section is given
        missing = str(err).split("'")[1] if "'" in str(err) else key
        name = f"{key}.{missing}" if key and not key.endswith(missing) else (key or missing)
        return T3SError(f"{source}: unknown config key '{name}'{_suggest(name)}")
    if isinstance(err, ValidationError):
        msg = str(err).splitlines()[0]
        if "is not a ListConfig" in msg:  # OmegaConf's words for a scalar given to a list key
            got = msg.split("assigned: ")[-1].split(" is not")[0]
            msg = f"expected a list such as [a, b] (or [] for none), got a {got}"
        return T3SError(f"{source}: wrong type for config key '{key}': {msg}")
    return T3SError(f"{source}: invalid config at '{key}': {str(err).splitlines()[0]}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last silently,
    so a second `train:` block would drop the first one's keys without a word)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key '{key}'", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> dict:
    text = read_text(path, "config file", f"give a config file (e.g. {path}/sft.yaml)")
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no Python objects
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise T3SError(f"{path}{where}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise T3SError(f"{path}: expected a mapping of config keys at the top level")
    return data


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise T3SError(f"override '{item}': expected key=value (e.g. train.lr=1e-5)")
    key, _, raw = item.partition("=")
    key = key.strip()
    if not key:
        raise T3SError(f"override '{item}': empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def load_config(path: Optional[str | Path] = None, overrides: Optional[list[str]] = None) -> Config:
    """YAML file (optional) + dotted overrides -> validated Config. Raises T3SError naming the key."""
    cfg = OmegaConf.structured(Config)
    if path is not None:
        path = Path(path)
        for section, value in _read_yaml(path).items():
            try:
                cfg = OmegaConf.merge(cfg, OmegaConf.create({section: value}))
            except OmegaConfBaseException as e:
                raise _explain(e, str(path), str(section)) from None
    for item in overrides or []:
        key, value = _parse_override(item)
        # before the update: OmegaConf's own unknown-key errors differ by depth and suggest no full key
        _check_key_exists(key, item)
        raw = item.partition("=")[2]
        if isinstance(get(Config(), key), str) and raw.strip()[:1] not in ("'", '"'):
            # a string key takes the text as typed: YAML would read 'Think: step by step' as a mapping
            # and drop ' #1' as a comment (quote it for YAML's reading, e.g. data.path='')
            value = raw.strip()
        try:
            OmegaConf.update(cfg, key, value, merge=False, force_add=False)
        except OmegaConfBaseException as e:
            raise _explain(e, f"override '{item}'") from None
    try:
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        raise _explain(e, str(path) if path else "config") from None
    validate(obj)
    return obj


def _check_key_exists(key: str, item: str) -> None:
    node: Any = Config()
    for part in key.split("."):
        if not dataclasses.is_dataclass(node) or part not in {f.name for f in dataclasses.fields(node)}:
            raise T3SError(f"override '{item}': unknown config key '{key}'{_suggest(key)}")
        node = getattr(node, part)


def get(cfg: Config, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def validate(cfg: Config) -> None:
    """Semantic checks the type system cannot express; each error names the key."""
    for key, allowed in CHOICES.items():
        value = get(cfg, key)
        if value not in allowed:
            shown = " | ".join(repr(a) if a == "" else a for a in allowed)
            raise T3SError(f"config key '{key}': '{value}' is not one of {shown}")
    for key in POSITIVE:
        if get(cfg, key) <= 0:
            raise T3SError(f"config key '{key}': must be > 0, got {get(cfg, key)}")
    for key in NON_NEGATIVE:
        if get(cfg, key) < 0:
            raise T3SError(f"config key '{key}': must be >= 0, got {get(cfg, key)}")
    for key in POSITIVE_IF_SET:
        if get(cfg, key) is not None and not get(cfg, key) > 0:  # `not > 0`: NaN too
            raise T3SError(f"config key '{key}': must be > 0 (or null for the preset's), got {get(cfg, key)}")
    for key in NON_NEGATIVE_IF_SET:
        if get(cfg, key) is not None and get(cfg, key) < 0:
            raise T3SError(f"config key '{key}': must be >= 0 (or null for the preset's), got {get(cfg, key)}")
    if cfg.model.rotary_percent is not None and cfg.model.rotary_percent > 1:
        raise T3SError(f"config key 'model.rotary_percent': the fraction of each head RoPE rotates, in (0, 1]; "
                       f"got {cfg.model.rotary_percent}")
    t = cfg.train
    if t.global_batch_size % t.micro_batch_size:
        raise T3SError(
            f"config key 'train.global_batch_size': {t.global_batch_size} is not a multiple of "
            f"train.micro_batch_size={t.micro_batch_size}"
        )
    if not 0 < cfg.generation.top_p <= 1:
        raise T3SError(f"config key 'generation.top_p': must be in (0, 1], got {cfg.generation.top_p}")
    w = cfg.checkpoint.snapshot_window
    if w is not None and (len(w) != 2 or w[0] > w[1]):
        raise T3SError(f"config key 'checkpoint.snapshot_window': expected [first_step, last_step], got {w}")
    for b in cfg.pipeline.baselines:
        if b not in MASK_RULES:
            raise T3SError(f"config key 'pipeline.baselines': '{b}' is not one of {' | '.join(MASK_RULES)}")
    if cfg.pipeline.mask_rule not in MASK_RULES:
        raise T3SError(f"config key 'pipeline.mask_rule': '{cfg.pipeline.mask_rule}' is not one of {' | '.join(MASK_RULES)}")
    if cfg.train.stop_at is not None and cfg.train.stop_at < 1:
        raise T3SError(f"config key 'train.stop_at': must be >= 1 (or null), got {cfg.train.stop_at}")
    o = cfg.online
    if o.num_prompts is not None and o.num_prompts < 1:
        raise T3SError(f"config key 'online.num_prompts': must be >= 1 (or null for all), got {o.num_prompts}")
    if o.force_step is not None and (o.force_step < 1 or o.force_step % o.eval_every):
        raise T3SError(f"config key 'online.force_step': must be a positive multiple of online.eval_every="
                       f"{o.eval_every} (detection happens at evaluations), got {o.force_step}")
    if cfg.mask.channel and cfg.mask.rule:
        raise T3SError("config keys 'mask.channel' and 'mask.rule': set one, not both")
    if cfg.mask.rule == "dllm" and cfg.model.objective != "dllm":
        raise T3SError("config key 'mask.rule': dllm marks masked-diffusion targets, for model.objective=dllm; "
                       "an AR run's loss masks are ar | reverse (or mask.channel from `t3s mask`)")


def check_parallel(cfg: Config, world_size: int) -> int:
    """Data-parallel size for this world size; errors name the keys that do not fit."""
    p = cfg.parallel
    model_parallel = p.tp * p.pp * p.cp
    if world_size % model_parallel:
        raise T3SError(
            f"config keys 'parallel.tp/pp/cp': tp*pp*cp = {model_parallel} does not divide the "
            f"world size {world_size}: start {model_parallel} processes or a multiple "
            f"(--nproc-per-node, or srun tasks)"
        )
    dp = world_size // model_parallel
    if p.cp > 1:  # t3s_nemo/training/context_parallel.py
        from t3s_nemo.model.qwen3 import attention_kind

        if attention_kind(cfg.model.spec) == "local":
            raise T3SError("config key 'parallel.cp': context parallelism needs model.spec auto, sdpa or te "
                           "(megatron-core's local attention has none)")
    # megatron-core's expert grid: tp (expert TP = TP) x ep x pp ranks per expert-data-parallel replica
    if p.ep > 1 and world_size % (p.tp * p.ep * p.pp):
        raise T3SError(
            f"config key 'parallel.ep': tp*ep*pp = {p.tp * p.ep * p.pp} does not divide the world size {world_size} "
            f"(expert parallelism splits the data-parallel ranks; launch ep x tp x pp processes or more)"
        )
    if cfg.train.global_batch_size % (cfg.train.micro_batch_size * dp):
        raise T3SError(
            f"config key 'train.global_batch_size': {cfg.train.global_batch_size} is not a multiple "
            f"of micro_batch_size * data-parallel size = {cfg.train.micro_batch_size} * {dp}"
        )
    check_model_layout(cfg)  # `t3s sft --nproc-per-node N` refuses before N processes start
    return dp


def check_model_layout(cfg: Config):
    """The model's shape (preset + overrides) against the parallel layout; returns the shape."""
    from t3s_nemo.model import qwen3

    p = cfg.parallel
    shape = qwen3.resolve_shape(cfg.model)
    qwen3.check_shape(shape, p.tp, p.pp, p.vpp, p.ep)
    if shape.is_moe and p.cp > 1:
        raise T3SError("config key 'parallel.cp': context parallelism is not supported yet for MoE presets")
    if shape.is_moe and p.tp > 1 and not p.sequence_parallel:
        raise T3SError("config key 'parallel.sequence_parallel': megatron-core trains MoE layers at tp>1 only with "
                       "sequence parallelism (which needs Transformer Engine); set it true on GPU, or use tp=1 "
                       "(parallel.ep splits the experts instead)")
    return shape


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def key_comments() -> dict[str, str]:
    """The comment of every config key, read from this file's dataclasses: the one on the field's line,
    else the comment lines right above it ({"train.lr_decay": "cosine | linear | constant", ...}).
    Written here rather than kept as a second copy in the docs, which would drift from the code."""
    import ast
    import inspect
    import io
    import tokenize

    source = inspect.getsource(inspect.getmodule(Config))
    lines = source.splitlines()
    comments = {t.start[0]: t.string.lstrip("#").strip() for t in tokenize.generate_tokens(io.StringIO(source).readline)
                if t.type == tokenize.COMMENT}
    own: dict[str, dict[str, str]] = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        fields = own.setdefault(node.name, {})
        for item in node.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                text = comments.get(item.lineno)
                above, k = [], item.lineno - 1
                while k in comments and lines[k - 1].strip().startswith("#"):
                    above.insert(0, comments[k])
                    k -= 1
                fields[item.target.id] = text or " ".join(above)
    out = {}
    for f in dataclasses.fields(Config):
        if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
            cls = f.default_factory
            doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
            out[f.name] = doc
            for name, text in own.get(cls.__name__, {}).items():
                out[f"{f.name}.{name}"] = text
        else:
            out[f.name] = own["Config"].get(f.name, "")
    return out


def annotated_yaml(cfg: Config) -> str:
    """The whole config as YAML, each key with its comment: what `t3s config` prints."""
    notes = key_comments()
    plain = yaml.safe_load(to_yaml(cfg))
    out = []

    def scalar(v: Any) -> str:
        return yaml.safe_dump(v, default_flow_style=True, width=10_000).strip().removesuffix("\n...").strip()

    for key, value in plain.items():
        if isinstance(value, dict):
            out.append(f"{key}:" + (f"  # {notes[key]}" if notes.get(key) else ""))
            for sub, v in value.items():
                note = notes.get(f"{key}.{sub}", "")
                out.append(f"  {sub}: {scalar(v)}" + (f"  # {note}" if note else ""))
        else:
            out.append(f"{key}: {scalar(value)}" + (f"  # {notes[key]}" if notes.get(key) else ""))
    return "\n".join(out) + "\n"


def pipeline_hint(run_dir: str | Path) -> str:
    """'; DIR is a `t3s pipeline` directory: ...' when a stage was pointed at a pipeline's root instead of
    its trajectory run (DIR/sft), else ''."""
    run_dir = Path(run_dir)
    if (run_dir / "sft" / "config.yaml").is_file() and not (run_dir / "snapshots").is_dir():
        return f"; {run_dir} is a `t3s pipeline` directory: its trajectory run is {run_dir / 'sft'}"
    return ""


def run_data(cfg: Config, run_dir: str | Path) -> str:
    """The packed dataset of a run (data.path of its config.yaml); an empty one is an error."""
    if not cfg.data.path:
        raise T3SError(f"{Path(run_dir) / 'config.yaml'}: data.path is empty"
                       + (pipeline_hint(run_dir) or "; pass data.path=DIR (the packed training data)"))
    return cfg.data.path


def locate_run_data(cfg: Config, run_dir: str | Path) -> Config:
    """A run's config with its data.path found from any working directory, and after the run moved.

    Runs record data.path absolute; one made by an earlier version recorded it as typed, relative to the
    directory the run was started from. That directory is where the recorded run_dir, also relative,
    leads to this run: run_dir runs/demo/sft, now at /home/u/proj/runs/demo/sft, was started from
    /home/u/proj. A dataset packed inside the run (run_dir/data) moves with it: when the recorded path
    is gone, the part of it below the recorded run_dir is looked for below the run's directory now.
    """
    p, made = cfg.data.path, cfg.run_dir
    if not p or Path(p).exists() or not made:
        return cfg
    here = Path(run_dir).resolve()
    candidates = []
    if not os.path.isabs(made) and not os.path.isabs(p):
        tail = Path(os.path.normpath(made)).parts
        if len(here.parts) > len(tail) and here.parts[-len(tail):] == tail:
            candidates.append(Path(*here.parts[: -len(tail)]) / p)
    made_parts = [x for x in Path(os.path.normpath(made)).parts if x != os.sep]
    data_parts = Path(os.path.normpath(p)).parts
    for k in range(len(data_parts) - len(made_parts), -1, -1):  # the last place the run_dir appears
        if list(data_parts[k : k + len(made_parts)]) == made_parts:
            candidates.append(here.joinpath(*data_parts[k + len(made_parts):]))
            break
    for candidate in candidates:
        if candidate.exists():
            cfg.data.path = str(candidate)
            break
    return cfg


def changed_keys(old: Config, new: Config, ignore: tuple[str, ...] = ()) -> list[str]:
    """'key: old -> new' for every leaf key whose value differs between two configs."""
    out = []
    for key in _all_keys(Config()):
        if key in ignore:
            continue
        a, b = get(old, key), get(new, key)
        if not dataclasses.is_dataclass(a) and a != b:
            out.append(f"{key}: {a!r} -> {b!r}")
    return out


# Keys a run cannot change between launches: they define the trajectory (or the optimizer state that a
# checkpoint holds), so a resumed run with new values would be neither the old run nor a new one.
# train.steps may change (a resumed run keeps the checkpoint's LR schedule: docs/engine.md), and layout,
# logging and checkpoint keys may change.
RESUME_FROZEN = ("train.lr", "train.min_lr", "train.warmup_steps", "train.lr_decay", "train.weight_decay",
                 "train.adam_beta1", "train.adam_beta2", "train.adam_eps", "train.global_batch_size",
                 "train.seed", "data.shuffle", "mask.", "model.")
RESUME_FREE = ("model.spec", "model.recompute")


def _dataset_identity(path: str) -> Optional[tuple]:
    meta = Path(path) / "meta.json"
    if not meta.is_file():
        return None
    try:
        m = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    # the packing source, and what packing made of it: another template, system prompt or mix of the same
    # teachers changes the bins and tokens
    return (m.get("source", {}).get("hash"), m.get("num_examples"), m.get("seq_length"), m.get("num_bins"),
            m.get("num_tokens"), m.get("template"), (m.get("tokenizer") or {}).get("fingerprint"))


def check_run_dir(cfg: Config) -> None:
    """Refuse a run_dir that is a file or lies inside the dataset, and a launch that would mix two runs in
    it: resume=never over an existing run, or a resume that changes a key the run's trajectory depends on
    (RESUME_FROZEN) or its dataset."""
    run_dir = Path(cfg.run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise T3SError(f"config key 'run_dir': {run_dir} is a file; expected a directory (new or a run's)")
    if cfg.data.path and Path(cfg.data.path).is_dir():
        data = Path(cfg.data.path).resolve()
        if run_dir.resolve() == data or data in run_dir.resolve().parents:
            raise T3SError(f"config key 'run_dir': {run_dir} is inside the packed dataset data.path={cfg.data.path}; "
                           "a run writes checkpoints and logs there, so give it a directory of its own")
    held = [p for p in (run_dir / "checkpoints", run_dir / "snapshots") if p.is_dir() and any(p.iterdir())]
    log = run_dir / "trajectory.jsonl"
    if log.is_file() and log.stat().st_size:
        held.append(log)
    if not held:
        return
    what = ", ".join(str(p.relative_to(run_dir)) for p in held)
    if cfg.resume == "never":
        raise T3SError(f"{run_dir}: holds a run already ({what}); resume=never would train from step 0 into "
                       "it and mix the two: use a new run_dir (or delete this one), or resume=auto to continue it")
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    try:
        saved = load_config(saved_path)
    except T3SError:  # written by another version: nothing to compare against
        return
    frozen = [k for k in _all_keys(Config()) if k.startswith(RESUME_FROZEN) and k not in RESUME_FREE]
    # model.mask_token_id: null asks for the id the first launch chose and wrote into config.yaml
    def show(v: Any) -> str:  # as config.yaml and the command line write it
        return "null" if v is None else repr(v)

    def same(k: str) -> bool:
        a, b = get(saved, k), get(cfg, k)
        if k == "model.init" and a and b:  # one checkpoint, spelled relative or absolute
            return Path(resolve_path(a)).resolve() == Path(resolve_path(b)).resolve()
        return a == b

    changed = [f"{k} {show(get(saved, k))} -> {show(get(cfg, k))}" for k in frozen
               if not dataclasses.is_dataclass(get(saved, k)) and not same(k)
               and not (k == "model.mask_token_id" and get(cfg, k) is None)]
    old, new = saved.data.path, cfg.data.path
    if old and new and old != new:  # the data moved, or is other data: its content says which
        a, b = _dataset_identity(old), _dataset_identity(new)
        if a is not None and b is not None and a != b:
            changed.append(f"data.path {old} -> {new} (another dataset)")
    if changed:
        raise T3SError(f"{run_dir}: this run was trained with other settings ({'; '.join(changed)}); resuming "
                       "would mix two runs: use the saved values, or a new run_dir (model.init=<a snapshot or "
                       "checkpoint of this run> starts a new run from its weights)")


def save_config(cfg: Config, path: str | Path) -> None:
    atomic_write_text(Path(path), to_yaml(cfg))


def replace(cfg: Config, overrides: dict[str, Any]) -> Config:
    """A copy of cfg with dotted keys replaced (validated like command-line overrides)."""
    node = OmegaConf.structured(cfg)
    for key, value in overrides.items():
        _check_key_exists(key, f"{key}={value}")
        try:
            OmegaConf.update(node, key, value, merge=False)
        except OmegaConfBaseException as e:
            raise _explain(e, f"{key}={value}") from None
    obj = OmegaConf.to_object(node)
    validate(obj)
    return obj


PACKAGE_PREFIX = "pkg:"


def resolve_path(value: str, base: Optional[str | Path] = None) -> str:
    """Expand ~, environment variables and `pkg:` (files shipped inside t3s_nemo, e.g.
    pkg:assets/demo/train.jsonl); other relative paths stay relative to the working directory."""
    if not value:
        return value
    if value.startswith(PACKAGE_PREFIX):
        return str(Path(__file__).resolve().parent / value[len(PACKAGE_PREFIX):])
    out = os.path.expandvars(os.path.expanduser(value))
    if base is not None and not os.path.isabs(out):
        out = str(Path(base) / out)
    return out
