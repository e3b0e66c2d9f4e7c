"""Seeds and sweeps: one config run over a grid of seeds and values, one run directory each.

``evoplastic run CONFIG --seeds 0-4 --sweep strategy.name=cma_es,open_es`` runs every
combination (here 2 x 5 = 10 runs) into ``OUT/<key=value,...,seed=N>/`` and keeps an index,
``OUT/sweep.json``, of the points, their directories and how each ended. Every point is
parsed and built before the first one runs, so a bad value is one line and nothing is
written. The runs go one after the other in this process, or as Ray tasks
(``--sweep-on ray``), each a local run on a Ray worker that writes its own directory (a
shared filesystem on a cluster).

``evoplastic report OUT`` then reads the index: one row per run, named by its directory,
and one aggregate row per point of the grid without the seed (mean and t-interval across
seeds).
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

from .analysis.report import SWEEP_INDEX as INDEX
from .config import ConfigError, parse, safe_load, set_override

_RANGE = re.compile(r"^(-?\d+)-(-?\d+)$")


def parse_seeds(text: str) -> list[int]:
    """``"0-4"``, ``"0,3,7"`` or ``"0-2,9"`` -> the seeds, in order, without repeats."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        m = _RANGE.match(part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo:
                raise ConfigError(f"--seeds: empty range {part!r} (write low-high)")
            values = range(lo, hi + 1)
        elif re.fullmatch(r"-?\d+", part):
            values = [int(part)]
        else:
            raise ConfigError(f"--seeds: expected seeds like 0-4 or 0,2,5, got {text!r}")
        seeds += [s for s in values if s not in seeds]
    if len(seeds) > 10_000:
        raise ConfigError(f"--seeds: {len(seeds)} seeds is too many for one sweep")
    return seeds


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets and quotes: ``a,{b: 1, c: 2},[3, 4]`` -> 3 parts."""
    parts, depth, quote, current = [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        current += ch
    parts.append(current)
    return [p.strip() for p in parts]


def parse_sweep(items) -> list[tuple[str, list]]:
    """``["strategy.name=cma_es,open_es"]`` -> ``[("strategy.name", ["cma_es", "open_es"])]``."""
    axes = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key or not raw:
            raise ConfigError(f"--sweep {item!r}: expected KEY=V1,V2,... e.g. strategy.name=a,b")
        if key == "seed":
            raise ConfigError("--sweep seed=...: use --seeds 0-4")
        if any(k == key for k, _ in axes):
            raise ConfigError(f"--sweep: {key} is swept twice")
        values = []
        for text in _split_top_level(raw):
            try:
                values.append(safe_load(text) if text else "")
            except Exception:
                raise ConfigError(f"--sweep {item!r}: {text!r} is not a valid value") from None
        axes.append((key, values))
    return axes


def _label(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", str(text)).strip("_") or "_"


def grid(seeds: list[int] | None, axes: list[tuple[str, list]]) -> list[dict]:
    """Every point: ``{"overrides": {key: value}, "seed": s, "name": "key=value,seed=s"}``."""
    keys = [k for k, _ in axes]
    points = []
    for values in itertools.product(*[v for _, v in axes]):
        for seed in seeds if seeds is not None else [None]:
            overrides = dict(zip(keys, values, strict=True))
            parts = [f"{k.split('.')[-1]}={_label(v)}" for k, v in overrides.items()]
            if seed is not None:
                parts.append(f"seed={seed}")
            points.append({"overrides": overrides, "seed": seed, "name": ",".join(parts)})
    names = [p["name"] for p in points]
    if len(set(names)) != len(names):  # two values with the same label: number them
        for i, p in enumerate(points):
            p["name"] = f"{i:03d}-{p['name']}"
    return points


def point_data(data: dict, point: dict) -> dict:
    """The raw config mapping of one point (``data`` is not changed)."""
    data = json.loads(json.dumps(data))
    for key, value in point["overrides"].items():
        set_override(data, f"{key}={json.dumps(value)}")
    if point["seed"] is not None:
        data["seed"] = point["seed"]
    return data


def plan(data: dict, points: list[dict], check: Callable) -> list:
    """Parse and build every point before anything runs; ``check(cfg)`` builds one.

    Raises :class:`ConfigError` naming the point at fault.
    """
    built = []
    for p in points:
        try:
            cfg = parse(point_data(data, p))
            built.append(check(cfg))
        except ConfigError as err:
            raise ConfigError(f"sweep point {p['name']}: {err}") from None
    return built


def write_index(out: Path, config_path: str, points: list[dict]) -> None:
    from .checkpoint import atomic_write

    index = {"config": str(config_path), "points": points}
    atomic_write(out / INDEX, (json.dumps(index, indent=2) + "\n").encode())


def run_points(out: Path, config_path, points, run_one: Callable, on: str = "local"):
    """Run every point: ``run_one(point) -> status`` here, or on Ray workers (``on="ray"``).

    The index records each point's directory and status (``done``, ``failed: ...``) as the
    runs finish, so an interrupted sweep shows what is left.
    """
    out.mkdir(parents=True, exist_ok=False)
    for p in points:
        p["dir"] = p["name"]
        p["status"] = "pending"
    write_index(out, config_path, points)
    if on == "ray":
        return _run_on_ray(out, config_path, points, run_one)
    for p in points:
        t0 = time.perf_counter()
        p["status"] = run_one(p)
        p["seconds"] = round(time.perf_counter() - t0, 1)
        write_index(out, config_path, points)
    return points


def _run_on_ray(out, config_path, points, run_one):
    import ray

    # a partial of run_point (runner_for): Ray takes functions, so its arguments go with it
    func, args = (run_one.func, run_one.args) if hasattr(run_one, "func") else (run_one, ())
    remote = ray.remote(num_cpus=1)(func)
    refs = {remote.remote(*args, p): p for p in points}
    while refs:
        done, _ = ray.wait(list(refs), num_returns=1)
        p = refs.pop(done[0])
        try:
            p["status"] = ray.get(done[0])
        except Exception as err:  # a task lost with its worker: say so, go on
            p["status"] = f"failed: {str(err).strip().splitlines()[-1][:200]}"
        write_index(out, config_path, points)
    return points


def run_point(data: dict, out: str, point: dict) -> str:
    """Run one point of a sweep into ``out/<point dir>``; ``"done"`` or ``"failed: ..."``.

    A module-level function of plain arguments, so that it can run as a Ray task.
    """
    from .experiment import build
    from .runner import execute
    from .trainer import Reporter

    class Warn(Reporter):
        def warn(self, message):
            print(f"warning [{point['name']}]: {message}", flush=True)

    try:
        exp = build(parse(point_data(data, point)))
        execute(exp, Path(out) / point["dir"], reporter=Warn())
    except Exception as err:  # one point failing does not stop the sweep
        text = str(err).strip().splitlines()
        return f"failed: {type(err).__name__}: {text[-1] if text else ''}"[:300]
    return "done"


def runner_for(data: dict, out: Path) -> Callable:
    """``run_one(point)`` for :func:`run_points`: a picklable partial of :func:`run_point`."""
    import functools

    return functools.partial(run_point, data, str(out))
