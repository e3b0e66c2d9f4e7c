"""``rule.init_from``: start a search from a rule found before (a curriculum).

The config's ``rule.init_from`` names a run directory (its ``best_rule.json``, else its
newest intact checkpoint, as ``evoplastic eval`` finds a genome) or a ``best_rule.json``
file. Its genome becomes the search's starting point: the ES mean of generation 0, the
first genome of ``meta.optimizer: gradient`` (plus its ``init_std`` noise). A relative
path resolves from the current directory.

The genome is read where a run starts (:func:`evoplastic.runner.execute`, on the driver of
a distributed backend; a worker rebuilds the experiment from its config and never reads
the file). Building an experiment for ``eval``, ``plot`` or ``distill`` does not read it,
so a finished run's rule stays usable after its starting run is gone; a resumed run with a
checkpoint does not need it either. What a run started from is recorded in its directory
as ``start.json`` (the path, the file read and its SHA-256).

A list of paths (``rule.init_from: [runs/s0, runs/s5, runs/s10]``) starts from the best of
them: each is read and checked as above, then scored on the same :data:`SELECT_INSTANCES`
meta-train instances of this config (never held-out ones; the key is drawn from the
config's seed): by their mean accuracy where the task reports one (the headline metric of
``evoplastic eval --sweep``), else by the meta-training loss. ``start.json`` then also lists
every candidate with its scores (a restart strategy for searches whose first stage can end
in a poor optimum; on digits the loss over longer horizons can rank a rule near chance
above one that learns, which is why accuracy comes first).

Example::

    exp = with_start(build(cfg))   # ConfigError: missing path, not a run, another rule
    exp.mean_genome(exp.init_state(jax.random.PRNGKey(0)))   # the loaded genome
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import yaml

from . import checkpoint
from .config import ConfigError

FILE = "start.json"
FIELD = "rule.init_from"
SELECT_INSTANCES = 128  # meta-train instances that rank the candidates of a list


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rule_file(path: Path) -> tuple[list, str | None]:
    """``(genome_flat, rule name)`` of a ``best_rule.json``."""
    try:
        data = json.loads(path.read_text())
        flat = data["genome_flat"]
        if not isinstance(flat, list):
            raise TypeError("genome_flat is not a list")
        flat = [float(x) for x in flat]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ConfigError(f"{FIELD}: {str(path)!r} is not a readable rule file ({err})") from None
    return flat, data.get("rule") if isinstance(data, dict) else None


def _run_rule(run_dir: Path) -> dict | None:
    """The ``rule`` section of a run directory's ``config.yaml`` (``None`` without one)."""
    try:
        data = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    rule = data.get("rule") if isinstance(data, dict) else None
    return rule if isinstance(rule, dict) else None


def _rule_params(section: dict) -> dict:
    """A rule section with its defaults filled in (an older run's config may lack fields
    added since, which default to what it ran with), as plain JSON values, less the keys
    that only set a starting point."""
    from . import rules
    from .config.fields import _named

    section = {k: v for k, v in section.items() if k != "init_from"}
    try:
        name, params = _named(section, "rule", rules.RULES)
        section = {"name": name, **params}
    except ConfigError:
        pass  # compared as written
    kept = {k: v for k, v in section.items() if not str(k).startswith("init")}
    return json.loads(json.dumps(kept, default=list))


def read(init_from: str) -> dict:
    """What ``init_from`` holds: ``{"genome_flat", "rule", "rule_section", "file"}``.

    ``rule`` is the file's rule name (``None`` if it does not say), ``rule_section`` the
    run's whole ``rule`` section when the path is a run directory.

    Raises:
      ConfigError: the path is missing, or neither a run directory nor a rule file.
    """
    path = Path(init_from)
    if not path.exists():
        raise ConfigError(f"{FIELD}: {init_from!r} not found")
    section = None
    if path.is_dir():
        section = _run_rule(path)
        best = path / "best_rule.json"
        if best.is_file():
            flat, name = _rule_file(best)
            return _read(flat, name or (section or {}).get("name"), section, best)
        if not checkpoint.list_checkpoints(path / "checkpoints"):
            raise ConfigError(
                f"{FIELD}: {init_from!r} is not a run directory (no best_rule.json and no"
                " checkpoint)"
            )
        try:  # the file recorded is the one read (a damaged newest one is passed over)
            newest, payload = checkpoint.latest_intact(path / "checkpoints")
        except checkpoint.CheckpointError as err:
            raise ConfigError(f"{FIELD}: {init_from!r}: {err}") from None
        flat, _ = jax.flatten_util.ravel_pytree(jax.tree.map(np.asarray, payload["genome"]))
        name = (section or {}).get("name")
        return _read([float(x) for x in np.asarray(flat)], name, section, newest)
    flat, name = _rule_file(path)
    return _read(flat, name, None, path)


def _read(flat, name, section, file: Path) -> dict:
    return {"genome_flat": flat, "rule": name, "rule_section": section, "file": file}


def _load_one(exp, init_from: str) -> tuple[object, dict]:
    """``(genome, record)`` of one path, checked against the experiment's rule."""
    cfg = exp.config
    found = read(init_from)
    name = cfg.rule["name"]
    if found["rule"] is not None and found["rule"] != name:
        raise ConfigError(
            f"{FIELD}: {init_from!r} holds a {found['rule']!r} rule; this config's rule is {name!r}"
        )
    section = found["rule_section"]
    if section is not None:
        mine, theirs = _rule_params(cfg.rule), _rule_params(section)
        differ = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
        if differ:
            shown = ", ".join(f"{k}: {theirs.get(k)!r} there, {mine.get(k)!r} here" for k in differ)
            raise ConfigError(f"{FIELD}: {init_from!r} holds another {name!r} rule ({shown})")
    want = len(exp.flat_genome(exp.genome_template))
    got = len(found["genome_flat"])
    if got != want:
        raise ConfigError(
            f"{FIELD}: {init_from!r} holds a genome of {got} numbers"
            f" ({found['rule'] or 'rule not named'}); this config's {name!r} rule has {want}"
        )
    genome = exp.unflatten_genome(found["genome_flat"])
    record = {
        "init_from": init_from,
        "resolved": str(Path(init_from).resolve()),
        "file": str(found["file"]),
        "sha256": _sha256(Path(found["file"])),
        "rule": name,
        "params": got,
    }
    return genome, record


def load(exp) -> tuple[object, dict]:
    """``(genome, record)``: the genome ``exp.config.rule['init_from']`` names (the best of
    a list, see :func:`select_scores`), checked against the experiment's rule, and what
    ``start.json`` records.

    Raises:
      ConfigError: missing path, not a run or rule file, a genome of another rule or size
        (for a list: the first such entry), or no candidate with a finite score.
    """
    init_from = exp.config.rule["init_from"]
    if isinstance(init_from, str):
        return _load_one(exp, init_from)
    loaded = [_load_one(exp, path) for path in init_from]  # every entry checked first
    by, scores = select_scores(exp, [genome for genome, _ in loaded])
    rank = [None if s[by] is None else (s[by] if by == "accuracy" else -s[by]) for s in scores]
    finite = [i for i, r in enumerate(rank) if r is not None]  # higher is better
    if not finite:
        raise ConfigError(f"{FIELD}: no candidate has a finite meta-training {by} ({init_from!r})")
    best = max(finite, key=lambda i: rank[i])  # the first of equals
    genome, record = loaded[best]
    candidates = [{**rec, **score} for (_, rec), score in zip(loaded, scores, strict=True)]
    record = {
        **record,
        "selected_by": f"meta-training {by}",
        "select_instances": SELECT_INSTANCES,
        "candidates": candidates,
    }
    return genome, record


def select_scores(exp, genomes) -> tuple[str, list[dict]]:
    """``(by, scores)``: each genome's mean meta-training ``loss`` (capped as
    ``evaluation.loss_clip`` caps it, plus the rule's penalty) and, where the task reports
    one, its mean ``accuracy``, on the same :data:`SELECT_INSTANCES` meta-train instances
    (the key is drawn from the config's seed; held-out instances are never used); ``by``:
    ``"accuracy"`` where there is one, else ``"loss"``. A non-finite score is ``None``."""
    from .experiment import _fitness
    from .tasks.evaluation import train_scores

    family, rule = exp.family, exp.rule
    key = jax.random.fold_in(jax.random.PRNGKey(exp.config.seed), 0x5E1EC7)
    if getattr(family, "train_fitness", None) is not None:  # a user's fitness task: loss only
        fitness = jax.jit(_fitness(family, rule, SELECT_INSTANCES))
        return "loss", [{"loss": _finite(fitness(genome, key))} for genome in genomes]
    clip = exp.config.evaluation.loss_clip

    @jax.jit
    def scores(genome):
        loss, metrics = train_scores(family, rule, genome, key, SELECT_INSTANCES, clip)
        return loss, metrics.get("accuracy", jnp.nan)

    out = []
    for genome in genomes:
        loss, accuracy = scores(genome)
        out.append({"loss": _finite(loss), "accuracy": _finite(accuracy)})
    by = "accuracy" if any(s["accuracy"] is not None for s in out) else "loss"
    if by == "loss":
        out = [{"loss": s["loss"]} for s in out]
    return by, out


def _finite(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def with_start(exp):
    """``exp`` whose search starts from ``rule.init_from`` (unchanged without one, or if
    already loaded).

    Raises:
      ConfigError: as :func:`load`.
    """
    if not exp.config.rule.get("init_from") or exp.start is not None:
        return exp
    genome, record = load(exp)
    outer = exp.outer
    fields = {f.name for f in dataclasses.fields(outer)}
    if "init_genome" in fields:
        outer = dataclasses.replace(outer, init_genome=lambda key: genome)
    elif "rule" in fields:
        rule = dataclasses.replace(outer.rule, init=lambda key: genome)
        outer = dataclasses.replace(outer, rule=rule)
    else:
        raise ConfigError(f"{FIELD}: not available with this outer loop ({type(outer).__name__})")
    return dataclasses.replace(exp, outer=outer, start=record)


def write(run_dir: Path, record: dict) -> None:
    """``start.json`` in ``run_dir``."""
    text = json.dumps(record, indent=2) + "\n"
    checkpoint.atomic_write(Path(run_dir) / FILE, text.encode())
