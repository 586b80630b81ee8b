"""scripts/reproduction.py: each row's numbers come from the newest finished run of its preset,
and the verdict follows from the budget and the intervals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def navigation_run(
    folder: Path, iterations: int, after_steps: list[float], seed: int | None = None
) -> Path:
    """A finished run folder of experiment=maml_rl_navigation_2d as metarun train leaves it."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / "config.yaml").write_text(f"trainer:\n  iterations: {iterations}\n")
    overrides = "- experiment=maml_rl_navigation_2d\n- algo.policy_init=xavier\n"
    overrides += f"- seed={seed}\n" if seed is not None else ""
    (folder / ".hydra" / "overrides.yaml").write_text(overrides)
    steps = [{"mean": mean, "ci95": 1.0} for mean in after_steps]
    results = {"metric": "return", "return": steps[-1], "return_after_steps": steps}
    results |= {"episodes": 40, "code": {"commit": "abcdef1234567"}}
    (folder / "results.json").write_text(json.dumps(results))
    return folder


def table(folder: Path) -> list[str]:
    script = REPO / "scripts" / "reproduction.py"
    out = subprocess.run([sys.executable, script, str(folder)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def navigation_row(lines: list[str]) -> str:
    return next(line for line in lines if line.startswith("| MAML-RL, 2D navigation"))


def test_a_run_at_the_papers_budget_within_the_intervals_is_reproduced(tmp_path):
    navigation_run(tmp_path / "run", 100, [-40.0, -12.0, -3.5, -3.0])
    row = navigation_row(table(tmp_path))
    assert "-40.00 +- 1.00 / -12.00 +- 1.00 / -3.50 +- 1.00 / -3.00 +- 1.00" in row
    assert "100 of 100 (100%)" in row and "abcdef1234" in row
    assert row.endswith("| reproduced |")


def test_a_run_outside_the_intervals_or_short_of_the_budget_is_not(tmp_path):
    navigation_run(tmp_path / "far", 100, [-40.0, -20.0, -3.5, -3.0])
    assert navigation_row(table(tmp_path)).endswith("| below, cause not found |")
    navigation_run(tmp_path / "short", 50, [-40.0, -12.0, -3.5, -3.0])
    row = navigation_row(table(tmp_path))  # the newest run is shown
    assert "50 of 100 (50%)" in row and row.endswith("| short budget |")


def test_other_seeds_at_the_same_budget_are_listed_after_the_presets_own(tmp_path):
    navigation_run(tmp_path / "seed1", 100, [-40.0, -12.0, -5.0, -5.0], seed=1)
    navigation_run(tmp_path / "seed0", 100, [-40.0, -12.0, -3.5, -3.0])
    navigation_run(tmp_path / "seed2", 50, [-40.0, -12.0, -9.0, -9.0], seed=2)
    row = navigation_row(table(tmp_path))
    assert "-3.00 +- 1.00; seed 1: -40.00 +- 1.00 / -12.00 +- 1.00 / -5.00" in row
    assert "seed 2" not in row  # another budget
    assert row.endswith("| reproduced |")  # the preset's own seed decides


def test_a_setting_that_became_the_default_matches_from_the_saved_config(tmp_path):
    run = navigation_run(tmp_path / "later", 100, [-40.0, -12.0, -3.5, -3.0])
    (run / ".hydra" / "overrides.yaml").write_text("- experiment=maml_rl_navigation_2d\n")
    (run / "config.yaml").write_text("trainer:\n  iterations: 100\nalgo:\n  policy_init: xavier\n")
    assert navigation_row(table(tmp_path)).endswith("| reproduced |")
    (run / "config.yaml").write_text("trainer:\n  iterations: 100\nalgo:\n  policy_init: torch\n")
    assert navigation_row(table(tmp_path)).endswith("| short budget |")  # no run matches


def test_a_full_budget_run_without_a_paper_number_says_so(tmp_path):
    folder = tmp_path / "np"
    (folder / ".hydra").mkdir(parents=True)
    (folder / "config.yaml").write_text("trainer:\n  iterations: 200000\n")
    (folder / ".hydra" / "overrides.yaml").write_text(
        "- experiment=cnp_gp_1d\n- algo=neural_process\n"
    )
    results = {"metric": "mse", "mse": {"mean": 0.5, "ci95": 0.02}, "episodes": 1000}
    (folder / "results.json").write_text(json.dumps(results | {"code": {"commit": "abc"}}))
    row = next(line for line in table(tmp_path) if line.startswith("| Neural Process"))
    assert "0.500 +- 0.020" in row and row.endswith("| full budget, no paper number |")


def test_every_system_without_a_run_has_a_row(tmp_path):
    (tmp_path / "empty" / ".hydra").mkdir(parents=True)
    (tmp_path / "empty" / "config.yaml").write_text("seed: 0\n")
    lines = table(tmp_path)
    assert len(lines) == 2 + 25 and all("| no run |" in line for line in lines[2:])


def test_a_run_that_changes_the_method_is_a_variant_not_the_preset(tmp_path):
    navigation_run(tmp_path / "preset", 100, [-40.0, -12.0, -3.5, -3.0])
    variant = navigation_run(tmp_path / "variant", 100, [-40.0, -30.0, -30.0, -30.0])
    overrides = "- experiment=maml_rl_navigation_2d\n- algo.policy_init=xavier\n"
    (variant / ".hydra" / "overrides.yaml").write_text(overrides + "- algo.inner_lr=0.1\n")
    assert navigation_row(table(tmp_path)).endswith("| reproduced |")


def sinusoid_run(folder: Path, mse: float) -> Path:
    """A finished full-budget run of experiment=maml_sinusoid tested at K=5."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / "config.yaml").write_text("trainer:\n  iterations: 70000\n")
    (folder / ".hydra" / "overrides.yaml").write_text(
        "- experiment=maml_sinusoid\n- eval.shots=5\n"
    )
    results = {"metric": "mse", "mse": {"mean": mse, "ci95": 0.05}, "episodes": 600}
    (folder / "results.json").write_text(json.dumps(results | {"code": {"commit": "abc"}}))
    return folder


def test_a_score_better_than_the_papers_is_not_below_it(tmp_path):
    navigation_run(tmp_path / "nav", 100, [-30.0, -8.0, -2.0, -2.0])  # returns: higher is better
    sinusoid_run(tmp_path / "low", 0.5)  # MSE: lower is better (the paper's 0.67)
    lines = table(tmp_path)
    sinusoid = next(line for line in lines if line.startswith("| MAML, sinusoid"))
    assert navigation_row(lines).endswith("| reproduced |") and sinusoid.endswith("| reproduced |")
    sinusoid_run(tmp_path / "high", 0.9)
    sinusoid = next(line for line in table(tmp_path) if line.startswith("| MAML, sinusoid"))
    assert sinusoid.endswith("| below, cause not found |")
