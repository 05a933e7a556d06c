import json

from click.testing import CliRunner

from linearsr.cli import main
from linearsr.model.network import LinearSRModel
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


def test_experts_ablation_writes_a_table(tmp_path):
    cfg = write_config(tmp_path, steps=2, **{"validation.every": 2, "checkpoint.every": 2})
    res = CliRunner().invoke(main, ["ablate", "experts", "--config", str(cfg), "--steps", "2", "--out",
                                    str(tmp_path / "abl"), "--eval-images", "0", "--quiet"])
    assert res.exit_code == 0, res.output
    table = (tmp_path / "abl" / "ablation.md").read_text()
    for variant in ("K=1", "K=2 log-SNR", "K=4 log-SNR", "K=4 uniform"):
        assert f"| {variant} |" in table
    moe = LinearSRModel.from_pretrained(tmp_path / "abl/k-4-uniform/snapshots/step_0000002")
    assert moe.config.expert_boundaries == [0.25, 0.5, 0.75]


def test_export_writes_a_fp16_model_from_a_run(tmp_path):
    from test_esgf import fake_run

    run = fake_run(tmp_path, [20.0, 21.0, 22.0, 21.5])
    runner = CliRunner()
    res = runner.invoke(main, ["export", str(run), "--out", str(tmp_path / "m")])
    assert res.exit_code == 1 and "no knee yet" in res.output
    (run / "knee.json").write_text(json.dumps({"step": 200}))
    res = runner.invoke(main, ["export", str(run), "--out", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    model = LinearSRModel.from_pretrained(tmp_path / "m")
    assert model.config.provenance["exported_from"].endswith("step_0000200")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "m" / "model.safetensors"), "pt") as f:
        assert all(f.get_tensor(k).dtype.is_floating_point and f.get_tensor(k).element_size() == 2 for k in f.keys())
    res = runner.invoke(main, ["export", str(run), "--out", str(tmp_path / "b"), "--pick", "best"])
    assert res.exit_code == 0 and "step_0000300" in res.output
