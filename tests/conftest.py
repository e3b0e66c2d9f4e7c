import contextlib
import copy
import io
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from evoplastic.cli import enable_compilation_cache

# Every process of a test session (each pytest-xdist worker, and the CLI runs the tests
# start) shares one fresh compilation cache, not the user's: a program that many tests build
# (the small config's generation and evaluation) is compiled once and then loaded.
if "EVOPLASTIC_TEST_CACHE_DIR" not in os.environ:  # the session's first process: a new one
    os.environ["EVOPLASTIC_TEST_CACHE_DIR"] = tempfile.mkdtemp(prefix="evoplastic-test-cache-")
    _CACHE_OWNER = True
else:
    _CACHE_OWNER = False
os.environ["EVOPLASTIC_CACHE_DIR"] = os.environ["EVOPLASTIC_TEST_CACHE_DIR"]
enable_compilation_cache()

SMALL = {
    "name": "small",
    "seed": 0,
    "generations": 4,
    "task": {"name": "pca", "dim": 4, "steps": 64},
    "rule": {"name": "polynomial", "terms": ["pre*post", "post^2*w", "w", "post"]},
    "strategy": {"name": "cma_es", "population_size": 8, "std_init": 0.3},
    "evaluation": {"instances": 2},
    "test": {"every": 2, "instances": 4, "final_instances": 8},
    "checkpoint": {"every": 2, "keep": 2},
}


def small_config(**sections) -> dict:
    """A tiny, fast config; keyword arguments replace or update whole sections."""
    cfg = copy.deepcopy(SMALL)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    return cfg


@pytest.fixture
def write_config(tmp_path):
    def write(cfg: dict, name: str = "cfg.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(cfg))
        return path

    return write


def run_cli(*args, cwd=None, timeout=300, env=None) -> subprocess.CompletedProcess:
    """Run the real ``evoplastic`` entry point in a subprocess (``env``: variables to set,
    ``None`` to unset one)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    env = {k: v for k, v in env.items() if v is not None}
    return subprocess.run(
        [sys.executable, "-m", "evoplastic.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )


def cli_here(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    """Run the command line in this process (as :func:`run_cli` does in a new one, without
    the cost of a new interpreter and JAX start): its exit code, stdout and stderr.

    ``cwd`` and ``env`` (variables to set, ``None`` to unset one) hold for the call only.
    """
    from evoplastic.cli import main

    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    out, err = io.StringIO(), io.StringIO()
    try:
        for key, value in (env or {}).items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = str(value)
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main([str(a) for a in args])
                code = 0
            except SystemExit as stop:
                code = stop.code or 0
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        if "ray._raylet" in sys.modules:  # Ray keeps the token it read: forget it with the env
            sys.modules["ray._raylet"].AuthenticationTokenLoader.instance().reset_cache()
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def start_local_ray(num_cpus: int = 2):
    """A new Ray instance on loopback for this test process (never another on the machine).

    Ray gives its raylet a fixed 30 s to register; on a loaded 2-core machine (the other
    pytest-xdist worker compiling, a Ray head just stopped by ``ray stop``) that can pass,
    so a start that timed out is tried once more.
    """
    ray = pytest.importorskip("ray")
    options = dict(
        address="local",
        num_cpus=num_cpus,
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        ray.init(**options)
    except Exception as err:  # ray raises a bare Exception for a startup timeout
        if "timed out during startup" not in str(err):
            raise
        ray.shutdown()
        ray.init(**options)
    return ray


# The fast tier (`make test-fast`, run on every change) leaves out the tests marked
# `integration`: whole runs through the command line, the committed results, the tutorials,
# and the unit tests that train something for more than a few seconds on 2 cores (listed
# here by name, measured with --durations). `make test` runs both tiers.
INTEGRATION_FILES = {
    "test_cli.py",
    "test_resume.py",
    "test_results.py",
    "test_docs.py",
    "test_oja.py",
    "test_sweep.py",
    "test_compare.py",
    "test_bench.py",
}
INTEGRATION_TESTS = {
    "test_control.py::test_control_run_eval_and_report_from_the_cli",
    "test_control.py::test_plastic_steps_stop_the_rule",
    "test_gradient.py::test_gradient_resume_after_sigkill_is_exact",
    "test_gradient.py::test_backprop_rediscovers_oja",
    "test_gradient.py::test_truncated_es_runs_and_learns",
    "test_gradient.py::test_initial_genome_has_the_es_distribution",
    "test_gradient.py::test_gradient_step_descends",
    "test_gradient.py::test_sharded_meta_gradient_equals_the_whole_batch",
    "test_backend.py::test_member_fitness_does_not_depend_on_sharding",
    "test_backend.py::test_nonfinite_losses_never_poison_the_strategy",
    "test_backend.py::test_shards_evaluated_elsewhere_in_any_order_give_the_local_bits",
    "test_supervised.py::test_backprop_baseline_trains_and_is_tuned",
    "test_supervised.py::test_digits_classes_are_disjoint_and_labels_consistent",
    "test_supervised.py::test_delta_rule_learns_and_zero_rule_does_not",
    "test_feedback.py::test_network_modulation_gates_plasticity",
    "test_feedback.py::test_learned_feedback_is_evolved_and_improves_fitness",
    "test_distill.py::test_distilling_an_mlp_rule_finds_the_polynomial_it_approximates",
    "test_plots.py::test_plot_command_draws_every_figure_for_every_rule_family",
    "test_api.py::test_evolve_finds_the_minimum_and_records_history",
    "test_api.py::test_task_family_with_a_rule_returns_the_rule_as_a_callable",
    "test_api.py::test_config_task_by_import_path_runs",
    "test_layered.py::test_abcd_without_c_and_d_relearns_inverted_inputs_exactly",
    "test_selection.py::test_cli_train_selection_learns_selection_from_none",
    "test_strategies.py::test_every_strategy_runs_three_generations",
    "test_loggers.py::test_mlflow_file_store_holds_the_params_and_every_generation",
    "test_patterns.py::test_lstm_baseline_trains_on_the_same_budget",
    "test_patterns.py::test_other_rule_families_drive_the_same_network",
    "test_patterns.py::test_meta_gradient_lowers_the_loss",
    "test_patterns.py::test_hand_set_hebbian_network_completes_patterns",
    "test_stateful.py::test_trained_by_es",
    "test_stateful.py::test_trained_by_backprop",
    "test_stateful.py::test_distilled_through_its_read_out",
    "test_bandit.py::test_evolution_lowers_the_regret_of_the_modulated_agent",
    "test_peers.py::test_peers_bench_times_every_side_and_prints_ratios",
    "test_peers.py::test_bench_large_reports_growth_against_the_smallest_genome",
    "test_peers.py::test_expert_loop_computes_the_toolkits_fitness",
    "test_mnist1d.py::test_committed_neural_rule_seeds_reproduce_and_count_as_docs_say",
    "test_mnist1d.py::test_committed_transfer_to_mnist1d_reproduces",
    "test_mnist1d.py::test_layer_local_learns",
    "test_mnist1d.py::test_layer_local_has_no_gradient_between_layers",
    "test_horizons.py::test_a_drawn_horizon_learns_exactly_the_short_task",
    "test_horizons.py::test_committed_horizons_rule_keeps_learning_at_twice_the_horizon",
    "test_horizons.py::test_committed_sinusoid_horizons_rule_keeps_learning_at_2x_and_4x",
    "test_horizons.py::test_committed_semisupervised_horizons_rule_keeps_learning_at_4x",
    "test_init_from.py::test_run_records_its_start_and_resume_does_not_need_it",
    "test_patterns.py::test_lstm_baseline_trains_and_scores_on_the_tasks_loss",
    "test_distill.py::test_sparsity_is_chosen_by_the_equations_task_loss",
    "test_distill.py::test_distill_and_eval_commands",
    "test_distill.py::test_distill_fits_a_given_form_with_terms",
    "test_gradient.py::test_gradient_step_adds_the_rule_prior_once",
    "test_distill.py::test_distilling_a_polynomial_rule_recovers_its_coefficients",
    "test_eval_sweep.py::test_sweep_evaluates_every_value_and_draws_the_figure",
    "test_supervised.py::test_learned_initial_weights_are_used_by_rule_and_backprop",
    "test_bandit.py::test_ucb1_and_thompson_beat_uniform_pulls_and_their_regret_grows_sublinearly",
}


# The files whose tests take longest in all (measured with --durations), longest first. They
# run first, so that the two pytest-xdist workers end on short tests: the scheduler never
# takes a worker's last two queued tests from it, and a long test there is a long tail.
LONGEST_FILES = [
    "test_resume.py",
    "test_results.py",
    "test_docs.py",
    "test_cli.py",
    "test_strategies.py",
    "test_distill.py",
    "test_gradient.py",
    "test_supervised.py",
    "test_control.py",
    "test_patterns.py",
    "test_backend.py",
    "test_oja.py",
    "test_feedback.py",
    "test_bench.py",
    "test_sweep.py",
    "test_horizons.py",
    "test_mnist1d.py",
    "test_peers.py",
]


def pytest_collection_modifyitems(config, items):
    for item in items:
        path = Path(str(item.fspath)).name
        name = f"{path}::{item.originalname or item.name}"
        if path in INTEGRATION_FILES or name in INTEGRATION_TESTS:
            item.add_marker(pytest.mark.integration)
    # longest files first; a file's tests stay together and in their order (module fixtures)
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(Path(str(item.fspath)).name, len(rank)))


def pytest_sessionfinish(session, exitstatus):
    """The session's first process removes the compilation cache it made."""
    if _CACHE_OWNER and not hasattr(session.config, "workerinput"):
        shutil.rmtree(os.environ["EVOPLASTIC_TEST_CACHE_DIR"], ignore_errors=True)
