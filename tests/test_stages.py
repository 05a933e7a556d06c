import json

from click.testing import CliRunner

from linearsr.cli import main
from linearsr.model import LinearSRModel
from test_train import write_config


def test_recipe_runs_stages_from_knees_and_skips_finished_ones(tmp_path):
    cfg = write_config(tmp_path, steps=4, **{"validation.every": 2, "checkpoint.every": 2})
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"stages:\n  - {{name: pre, config: {cfg.name}}}\n"
                      f"  - {{name: moe, config: {cfg.name}, overrides: [experts.count=2]}}\n")
    runner = CliRunner()
    res = runner.invoke(main, ["train", str(recipe), "--stages", "all", "--out", str(tmp_path / "out"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "[moe] training" in res.output and "from the knee of" in res.output
    for stage in ("pre", "moe"):
        assert json.loads((tmp_path / "out" / stage / "stage_done.json").read_text())["step"] == 4
        assert (tmp_path / "out" / stage / "knee.json").is_file()
    moe = LinearSRModel.from_pretrained(tmp_path / "out/moe/snapshots/step_0000004")
    assert moe.config.num_experts == 2 and "init_from" in moe.config.provenance
    again = runner.invoke(main, ["train", str(recipe), "--stages", "all", "--out", str(tmp_path / "out"), "--quiet"])
    assert again.exit_code == 0 and again.output.count("already done") == 2
    bad = runner.invoke(main, ["train", str(recipe), "--stages", "nope", "--out", str(tmp_path / "out")])
    assert bad.exit_code == 2 and "unknown stage(s) nope" in bad.output
