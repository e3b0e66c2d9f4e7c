"""Where a run's per-generation records go: ``metrics.jsonl`` always, MLflow on request.

The trainer hands every record (one mapping per generation: ``generation``, ``best_loss``,
``mean_loss``, ..., and ``test_*`` where measured) to one :class:`Logger`. A logger is
anything with ``log(record)`` and ``close()``; :func:`open_loggers` builds the run's
loggers from the config's ``logging`` section:

* :class:`JsonlLogger` -- one JSON line per record in ``metrics.jsonl`` (always; resume
  and the analysis commands read it back);
* :class:`MLflowLogger` -- ``logging.mlflow: true``: the config as parameters and each
  record as metrics at ``step = generation``, in a local MLflow file store under the run
  directory (``<run_dir>/mlruns``; no server) or at ``logging.tracking_uri``. MLflow is an
  optional extra: ``pip install -e '.[mlflow]'`` in the project (or ``mlflow-skinny``).

Example::

    logger = open_loggers(LoggingConfig(mlflow=True), run_dir, params={"seed": 0})
    logger.log({"generation": 0, "best_loss": 0.5})
    logger.close()
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Protocol, runtime_checkable

MLFLOW_RUN_FILE = "mlflow_run_id"
INSTALL_HINT = "the mlflow extra: pip install -e '.[mlflow]' in the project"


class LoggerError(RuntimeError):
    """A logger that cannot start (e.g. MLflow requested but not installed)."""


@runtime_checkable
class Logger(Protocol):
    """What the trainer calls: ``log`` once per generation record, ``close`` at the end."""

    def log(self, record: dict) -> None:
        """Record one generation (a flat mapping of JSON scalars)."""

    def close(self) -> None:
        """Flush and release (called once, also when a run is interrupted)."""


class JsonlLogger:
    """Appends each record as one JSON line to ``path`` (flushed at once)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._file = open(self.path, "a")  # noqa: SIM115

    def log(self, record: dict) -> None:
        """Write ``record`` as one line and flush it."""
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Close the file."""
        self._file.close()


class MultiLogger:
    """Sends every record to each of ``loggers`` in turn."""

    def __init__(self, loggers: list):
        self.loggers = list(loggers)

    def log(self, record: dict) -> None:
        """``log`` of every logger."""
        for logger in self.loggers:
            logger.log(record)

    def close(self) -> None:
        """``close`` of every logger."""
        for logger in self.loggers:
            logger.close()


def require_mlflow():
    """Import MLflow, or raise :class:`LoggerError` naming the extra that installs it."""
    try:
        import mlflow
    except ImportError:
        raise LoggerError(
            f"logging.mlflow: the mlflow package is not installed ({INSTALL_HINT})"
        ) from None
    return mlflow


def default_tracking_uri(run_dir: Path) -> str:
    """The local file store of a run: ``file://<run_dir>/mlruns``."""
    return (Path(run_dir).resolve() / "mlruns").as_uri()


def flatten_params(params: dict, prefix: str = "") -> dict[str, str]:
    """``{"strategy": {"name": "cma_es"}}`` -> ``{"strategy.name": "cma_es"}`` (strings)."""
    out = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out |= flatten_params(value, name + ".")
        else:
            out[name] = json.dumps(value) if isinstance(value, list | tuple | dict) else str(value)
    return out


class MLflowLogger:
    """Logs the config as MLflow parameters and each record as metrics at its generation.

    Args:
      run_dir: the run directory; the MLflow run id is kept in ``<run_dir>/mlflow_run_id``
        so that ``evoplastic resume`` continues the same MLflow run.
      params: parameters to log once (the resolved config; nested mappings are flattened
        to ``section.key``).
      tracking_uri: where to log (default :func:`default_tracking_uri`).
      experiment: the MLflow experiment name (created if missing).
      run_name: the MLflow run name.

    Raises:
      LoggerError: if MLflow is not installed.
    """

    def __init__(
        self,
        run_dir: Path,
        params: dict | None = None,
        tracking_uri: str | None = None,
        experiment: str = "evoplastic",
        run_name: str | None = None,
    ):
        uri = tracking_uri or default_tracking_uri(run_dir)
        if uri.startswith("file:"):  # MLflow >= 3 asks file stores to opt in
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow = require_mlflow()
        from mlflow.entities import Metric, Param

        self._metric = Metric
        self.client = mlflow.tracking.MlflowClient(tracking_uri=uri)
        self.tracking_uri = uri
        id_file = Path(run_dir) / MLFLOW_RUN_FILE
        if id_file.is_file():
            self.run_id = id_file.read_text().strip()
            return
        found = self.client.get_experiment_by_name(experiment)
        exp_id = found.experiment_id if found else self.client.create_experiment(experiment)
        run = self.client.create_run(exp_id, run_name=run_name, tags={"run_dir": str(run_dir)})
        self.run_id = run.info.run_id
        items = list(flatten_params(params or {}).items())
        for i in range(0, len(items), 100):  # MLflow takes at most 100 parameters a batch
            batch = [Param(k, v[:6000]) for k, v in items[i : i + 100]]
            self.client.log_batch(self.run_id, params=batch)
        id_file.write_text(self.run_id + "\n")

    def log(self, record: dict) -> None:
        """The record's finite numbers as metrics at ``step = record["generation"]``."""
        step = int(record.get("generation", 0))
        now = int(time.time() * 1000)
        metrics = [
            self._metric(key, float(value), now, step)
            for key, value in record.items()
            if key != "generation"
            and isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
        ]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def close(self) -> None:
        """Mark the MLflow run finished (a resumed run reopens it)."""
        self.client.set_terminated(self.run_id)


def open_loggers(settings, run_dir: Path, params: dict | None = None, name: str = "") -> Logger:
    """The loggers of a run: ``metrics.jsonl`` and, with ``settings.mlflow``, MLflow.

    Args:
      settings: the config's ``logging`` section (:class:`evoplastic.config.LoggingConfig`).
      run_dir: the run directory.
      params: the parameters MLflow records (the resolved config).
      name: the MLflow run name (the config's name).

    Raises:
      LoggerError: if MLflow is requested but not installed (nothing is opened then).
    """
    extra = []
    if settings is not None and settings.mlflow:
        extra.append(
            MLflowLogger(
                run_dir,
                params,
                tracking_uri=settings.tracking_uri,
                experiment=settings.experiment,
                run_name=name or None,
            )
        )
    return MultiLogger([JsonlLogger(Path(run_dir) / "metrics.jsonl"), *extra])


__all__ = [
    "INSTALL_HINT",
    "JsonlLogger",
    "Logger",
    "LoggerError",
    "MLflowLogger",
    "MultiLogger",
    "default_tracking_uri",
    "flatten_params",
    "open_loggers",
    "require_mlflow",
]
