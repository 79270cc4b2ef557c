"""The command line: every verb's help, train -> sample -> compare on the tiny model, bench."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image
from safetensors import safe_open

from scoft_train.bench import bench_train
from scoft_train.cli import build_parser, main
from scoft_train.cli.common import read_prompts
from scoft_train.cli.train import train_config_from_args
from scoft_train.sample_data import CCUB_DEMO_DIR

FAST = ["--grad-accum", "1", "--rank", "4", "--alpha", "8", "--contrastive-every", "2", "--denoise-steps", "2",
        "--allow-random-backbone"]


@pytest.mark.parametrize("verb,expected", [
    ("train", "--contrastive-every"), ("sample", "--scheduler"), ("compare", "--lora"), ("bench", "train"),
    ("demo", "--steps"), ("negatives", "--controlnet"), ("biaslab", "pretrain"), ("rscorrector", "fit"),
    ("sfsl", "classimages"),
])
def test_every_verb_has_help(verb, expected):
    result = subprocess.run([sys.executable, "-m", "scoft_train", verb, "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    config = out / "settings.yaml"
    config.write_text("preset: FT+MP\nsteps: 3\nweights:\n  perceptual: 0.5\nlr: 0.001\n")
    code = main(["train", "--data", str(CCUB_DEMO_DIR), "--out", str(out), "--config", str(config),
                 "--steps", "2", *FAST])
    assert code == 0
    return out


def test_train_writes_lora_history_and_plot(trained):
    lora = trained / "scoft_lora.safetensors"
    with safe_open(str(lora), framework="pt") as handle:
        meta, keys = handle.metadata(), list(handle.keys())
    assert meta["scoft_preset"] == "FT+MP" and meta["scoft_steps"] == "2"
    assert json.loads(meta["scoft_loss_weights"]) == {"ldm": 0.7, "mem": 0.3, "perceptual": 0.5, "contrastive": 0.0}
    assert all(k.startswith("lora_unet_") for k in keys)
    history = json.loads((trained / "loss_history.json").read_text())
    assert [h["step"] for h in history] == [1, 2] and "loss/perceptual" in history[0]
    with Image.open(trained / "loss_plot.png") as plot:
        assert plot.format == "PNG" and plot.width > 100


def test_sample_and_compare_from_the_trained_lora(trained, tmp_path, capsys):
    lora = str(trained / "scoft_lora.safetensors")
    common = ["--prompt", "a house", "--prompt", "a meal", "--steps", "3", "--seed", "5"]
    assert main(["sample", *common, "--lora", lora, "--out", str(tmp_path / "samples")]) == 0
    written = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert written == ["000_seed5.png", "001_seed6.png"]
    assert main(["compare", *common, "--lora", lora, "--out", str(tmp_path / "grid.png")]) == 0
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.height > 2 * 64 and grid.width > 2 * 64
    assert "grid:" in capsys.readouterr().out


def test_bad_config_key_is_reported_and_writes_nothing(tmp_path, caplog):
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"rnak": 4}))
    out = tmp_path / "out"
    assert main(["train", "--data", str(CCUB_DEMO_DIR), "--out", str(out), "--config", str(config)]) == 2
    assert "unknown training setting(s): rnak" in caplog.text
    assert not out.exists()


def test_bench_reports_ratios_and_breakdown():
    result = bench_train(steps=1, warmup=0, threads=2)
    branch = result.branch
    assert result.plain > 0 and branch[20, True, None] > branch[1, True, None] > result.no_branch[True] > 0
    assert min(branch[4, False, None], branch[4, False, 1.0]) > result.no_branch[False] > 0
    assert result.amortised("reference (paper)") > result.amortised("S=4, with L_M") > result.no_branch[True]
    assert result.amortised("fast (train --fast)") > result.no_branch[False]
    report = result.report()
    assert "amortised" in report and "VAE decode" in report and "backward" in report
    assert "fast (train --fast)    S=4   N=10" in report and "reference (paper)      S=20  N=10" in report
    assert "FT+MPC step with branch, S=4, no L_M" in report and "S=4, no L_M, cfg 1" in report
    assert report.startswith("bench train (tiny model, 64 px, cpu, batch 1")


def test_bench_train_resolution_is_for_the_sd15_architecture_only(caplog):
    assert main(["bench", "train", "--resolution", "128"]) == 2
    assert "--resolution applies to --sd15 only" in caplog.text


def test_fast_selects_the_cheaper_branch_and_explicit_settings_win(tmp_path):
    def config(*extra, file=None):
        argv = ["train", "--data", str(CCUB_DEMO_DIR), "--out", str(tmp_path / "out"), *extra]
        return train_config_from_args(build_parser().parse_args(argv + (["--config", str(file)] if file else [])))

    assert (config().denoise_steps, config().contrastive_every, config().weight("mem")) == (20, 10, 0.3)  # the paper's
    fast = config("--fast")
    assert (fast.denoise_steps, fast.contrastive_every, fast.weight("mem")) == (4, 10, 0.0)
    assert (fast.preset, fast.weight("perceptual"), fast.weight("contrastive")) == ("FT+MPC", 0.01, 0.05)
    assert config("--fast", "--denoise-steps", "3").denoise_steps == 3
    assert config("--fast", "--w-mem", "0.3").weight("mem") == 0.3
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"contrastive_every": 7, "weights": {"mem": 0.5}}))
    from_file = config("--fast", file=settings)
    assert (from_file.contrastive_every, from_file.denoise_steps, from_file.weight("mem")) == (7, 4, 0.5)


def test_prompts_file_with_bom_and_crlf_gives_clean_prompts(tmp_path):
    """A Notepad-style file: UTF-8 byte-order mark, Windows line ends, a blank line."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes("a house\r\n\r\n  a meal in Velmora \r\n".encode("utf-8-sig"))
    args = build_parser().parse_args(["sample", "--prompt", "a market", "--prompts-file", str(prompts),
                                      "--out", str(tmp_path / "out")])
    assert read_prompts(args) == ["a market", "a house", "a meal in Velmora"]


def test_reading_options_reach_the_ccub_reader(tmp_path, caplog):
    """--strict-captions refuses a caption CLIP would cut (named by file), in train and negatives
    alike; --background takes R,G,B and refuses anything else; nothing is trained or written."""
    folder = tmp_path / "ccub"
    folder.mkdir()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(folder / "a.png")
    (folder / "a.txt").write_text(" ".join(["a Korean palace roof"] * 30), encoding="utf-8")
    before = sorted(p.name for p in folder.iterdir())
    for verb in (["train", "--out", str(tmp_path / "run"), *FAST], ["negatives", "--controlnet", "default", "--depth", "dataset"]):
        caplog.clear()
        assert main([verb[0], "--model", "tiny", "--data", str(folder), "--strict-captions", *verb[1:]]) == 2
        assert "a.txt" in caplog.text and "77" in caplog.text, caplog.text
    assert sorted(p.name for p in folder.iterdir()) == before and not (tmp_path / "run" / "lora.safetensors").exists()
    parser = build_parser()
    args = parser.parse_args(["train", "--data", str(folder), "--out", "o", "--background", "0,128,255"])
    assert args.background == (0, 128, 255)
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--data", str(folder), "--out", "o", "--background", "white"])
