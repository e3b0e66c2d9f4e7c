"""The config's sections as frozen dataclasses: every field, its type and its default.

These are data only; :mod:`~evoplastic.config.validate` checks them, and the reference page
of the documentation is generated from them.
"""

from __future__ import annotations

import dataclasses

BACKENDS = ("local", "ray")


MATMUL_PRECISIONS = ("float32", "tensorfloat32", "bfloat16", "default")


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """Options of the plastic network; each task family uses those that apply to it."""

    lr: float = 0.1
    lr_decay: float = 0.02
    activation: str = "linear"
    w_init_norm: float = 0.5  # rate (single-layer) networks
    hidden: tuple[int, ...] = (32,)  # layered networks
    output_activation: str = "tanh"
    w_init_std: float = 1.0
    w_clip: float = 0.0
    feedback: str = "none"
    learn_init: bool = False  # meta-learn the initial weights too (layered networks)
    kind: str = "default"  # default (the task's own) | layered | recurrent | rate | lif
    modulation: str = "none"  # none | network (a modulatory neuron gates the rule's mod)
    settle: int = 3  # recurrent networks: recurrent steps per input
    traces: bool = False  # layered networks: pre/post activity traces of earlier steps
    trace_decay: float = 0.0  # the traces' decay per step, in [0, 1)
    excitatory: bool = False  # layered networks: plastic weights stay >= 0 (Dale's principle)
    lif: dict = dataclasses.field(default_factory=dict)  # lif networks: LIFNetwork options
    plastic: dict = dataclasses.field(default_factory=dict)  # plastic_recurrent: alpha, learn_w


@dataclasses.dataclass(frozen=True)
class StrategyConfig:
    """The evolution strategy (``meta.optimizer: es``): an evosax strategy by ``name``
    (``evoplastic list``), its population and initial search width; ``params`` are the
    strategy's parameters, ``options`` its constructor's, and ``optimizer`` the optax
    optimizer of gradient-style strategies (OpenAI-ES, PGPE, SNES, ...)."""

    name: str = "cma_es"
    population_size: int = 16
    std_init: float = 0.3
    params: dict = dataclasses.field(default_factory=dict)
    optimizer: dict | None = None
    options: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """How a population is evaluated.

    ``matmul_precision``: precision of float32 matrix products, set process-wide when the
    experiment is built: ``float32`` (default: the same numbers on CPU and GPU),
    ``tensorfloat32`` or ``bfloat16`` (faster on GPUs, fewer mantissa bits), ``default``
    (the device's default: TF32 on recent NVIDIA GPUs).

    ``loss_clip``: cap each meta-training instance's loss at this value before the mean (a
    non-finite loss counts as the cap), so that a few instances that blow up cost a bounded
    amount instead of ranking the member last; none (default): the plain mean. Whole
    episodes only (ES, or the meta-gradient, where an instance above the cap adds no
    gradient; not ``meta.truncation``); held-out figures are never clipped.
    """

    instances: int = 8
    common_instances: bool = True
    shard_size: int | None = None
    matmul_precision: str = "float32"
    loss_clip: float | None = None


@dataclasses.dataclass(frozen=True)
class RayConfig:
    """Where and how the Ray backend runs; not part of what a run computes.

    ``address``: a Ray cluster (``HOST:PORT``, ``ray://HOST:10001`` or ``auto``); none starts
    a local Ray instance. ``workers``: actors (default: one per GPU, else one per CPU).
    ``gpus_per_worker``: GPUs per actor (default: 1 on a cluster with GPUs, else 0).
    ``shards_per_worker``: shards per actor when ``evaluation.shard_size`` is not set.
    ``max_restarts``: restarts of a killed actor. ``compilation_cache``: JAX's persistent
    compilation cache directory of the actors (empty: none).
    """

    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float | None = None
    shards_per_worker: int = 4
    max_restarts: int = 3
    startup_timeout_s: float = 300.0
    compilation_cache: str = "~/.cache/evoplastic/jax"


@dataclasses.dataclass(frozen=True)
class TestConfig:
    """Held-out tests: every ``every`` generations on ``instances`` meta-test instances (0:
    never during training), at the end on ``final_instances``; ``variants`` are other task
    parameters to evaluate at the end, ``{name: {param: value}}`` (e.g. ``dim_x5: {dim: 40}``)."""

    every: int = 25
    instances: int = 32
    final_instances: int = 100
    variants: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """A checkpoint every ``every`` generations (and at the end and on interruption); the
    newest ``keep`` are kept."""

    every: int = 10
    keep: int = 3


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
    """Where records go besides ``metrics.jsonl`` (see :mod:`evoplastic.loggers`).

    ``mlflow``: also log to MLflow (the ``mlflow`` extra). ``tracking_uri``: MLflow's store
    (default: a local file store, ``<run_dir>/mlruns``; no server). ``experiment``: the
    MLflow experiment name. Not part of what a run computes.
    """

    mlflow: bool = False
    tracking_uri: str | None = None
    experiment: str = "evoplastic"


@dataclasses.dataclass(frozen=True)
class GradientConfig:
    """Options of ``meta.optimizer: gradient`` (backprop through the unrolled inner loop)."""

    optimizer: dict = dataclasses.field(
        default_factory=lambda: {"name": "adam", "learning_rate": 0.01}
    )
    clip_norm: float = 1.0  # clip the meta-gradient to this global norm; 0: no clipping
    remat: str = "nested"  # none | step | nested (see evoplastic.meta.unroll)
    init_std: float | None = None  # initial genome = rule.init + init_std * N(0, 1);


@dataclasses.dataclass(frozen=True)
class MetaConfig:
    """The outer loop: ``es`` (evosax, ``strategy`` section) or ``gradient`` (optax)."""

    optimizer: str = "es"
    truncation: int = 0  # inner steps per generation (a truncated unroll); 0: the whole loop
    gradient: GradientConfig = dataclasses.field(default_factory=GradientConfig)
    selection: str = "strategy"  # strategy: the strategy's own; learned: a policy file's
    selection_policy: str | None = None  # the policy file of selection: learned


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    """``evoplastic compare``: outer loops run side by side on this config, seed by seed.

    ``methods`` maps a method's name to config sections merged into this config (e.g.
    ``{"meta": {"optimizer": "gradient"}}``); ``threshold`` is the held-out loss whose first
    crossing gives each run's time to threshold. Not part of what a single run computes.
    """

    methods: dict = dataclasses.field(default_factory=dict)
    seeds: tuple[int, ...] = (0, 1, 2)
    threshold: float | None = None


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole experiment. ``task`` and ``rule`` are ``{"name": ..., **params}`` mappings."""

    name: str = "experiment"
    seed: int = 0
    generations: int = 100
    backend: str = "local"
    task: dict | str = dataclasses.field(default_factory=lambda: {"name": "pca"})
    network: NetworkConfig = dataclasses.field(default_factory=NetworkConfig)
    rule: dict = dataclasses.field(default_factory=lambda: {"name": "polynomial"})
    strategy: StrategyConfig = dataclasses.field(default_factory=StrategyConfig)
    evaluation: EvaluationConfig = dataclasses.field(default_factory=EvaluationConfig)
    test: TestConfig = dataclasses.field(default_factory=TestConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    meta: MetaConfig = dataclasses.field(default_factory=MetaConfig)
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)
    time_budget_s: float | None = None  # stop training once this much wall time is spent
    compare: CompareConfig = dataclasses.field(default_factory=CompareConfig)
    logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)

    def to_dict(self) -> dict:
        """The config as nested plain mappings (what ``config.yaml`` holds)."""
        return dataclasses.asdict(self)
