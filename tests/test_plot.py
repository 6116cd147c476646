"""`towergpt plot`：从 metrics.jsonl 画出有效的 PNG；评估行按步数换算 token 数；坏输入给出清楚的错误。"""

import json

import pytest
from PIL import Image

from conftest import run_cli
from towergpt import plot
from towergpt.errors import TowerGPTError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(directory, tokens_per_step=1024, scale=1.0, eval_every=20, steps=100):
    """一个假的运行目录：每 5 步一行训练行，每 eval_every 步一行（没有 tokens 的）评估行。"""
    directory.mkdir(parents=True)
    lines = []
    for step in range(1, steps + 1):
        if step == 1 or step % 5 == 0:
            lines.append({"step": step, "tokens": step * tokens_per_step, "loss": scale * 8 / step ** 0.5, "lr": 1e-3})
        if step % eval_every == 0:
            lines.append({"step": step, "val_loss": scale * 9 / step ** 0.5, "val_ppl": 100.0,
                          "val_bpc": 7 / step ** 0.3})
    (directory / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in lines), encoding="utf-8")
    return directory


@pytest.fixture
def two_runs(tmp_path):
    return [write_run(tmp_path / "vocab2500"), write_run(tmp_path / "vocab6000", tokens_per_step=2048, scale=1.1)]


def assert_png(path):
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as image:
        assert image.size[0] > 300 and image.size[1] > 200


@pytest.mark.parametrize("metric", ["val_bpc", "val_loss", "loss"])
def test_two_runs_make_a_png(two_runs, tmp_path, metric):
    out = plot.plot_runs(two_runs, tmp_path / "figs" / f"{metric}.png", metric=metric)
    assert_png(out)


def test_english_fallback_when_no_cjk_font(two_runs, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(plot, "find_cjk_font", lambda: None)
    out = plot.plot_runs(two_runs, tmp_path / "english.png", x_axis="step", labels=["a", "b"])
    assert_png(out)
    warning = capsys.readouterr().err
    assert warning.count("\n") == 1 and "fonts-noto-cjk" in warning


def test_eval_rows_get_tokens_from_the_training_rows(tmp_path):
    rows = plot.read_rows(write_run(tmp_path / "run", tokens_per_step=1000, eval_every=12) / "metrics.jsonl")
    xs, ys = plot.curve(rows, "val_bpc", "tokens")
    # 第 12、24 步没有训练行（每 5 步一行）：在相邻的训练行之间插值，每步 1000 个 token
    assert xs == [12_000, 24_000, 36_000, 48_000, 60_000, 72_000, 84_000, 96_000]
    steps, _ = plot.curve(rows, "val_bpc", "step")
    assert steps == [12, 24, 36, 48, 60, 72, 84, 96]
    assert plot.tokens_at(110, [(50, 50_000), (100, 100_000)]) == pytest.approx(110_000)   # 超出末尾：外推


def test_default_labels_are_dir_names_and_disambiguated(tmp_path):
    a = write_run(tmp_path / "a" / "pretrain")
    b = write_run(tmp_path / "b" / "pretrain")
    assert plot.default_labels([a / "metrics.jsonl", b / "metrics.jsonl"]) == ["a/pretrain", "b/pretrain"]
    assert plot.default_labels([a / "metrics.jsonl"]) == ["pretrain"]


def test_missing_run_dir_and_metrics_file(tmp_path):
    with pytest.raises(TowerGPTError, match="run directory not found"):
        plot.plot_runs([tmp_path / "nope"], tmp_path / "x.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TowerGPTError, match="metrics.jsonl"):
        plot.plot_runs([tmp_path / "empty"], tmp_path / "x.png")


def test_malformed_line_names_file_and_line(tmp_path):
    run = write_run(tmp_path / "run")
    path = run / "metrics.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[2] = '{"step": 3, "loss": '
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(TowerGPTError, match=r"metrics\.jsonl:3"):
        plot.plot_runs([run], tmp_path / "x.png")
    path.write_text('{"loss": 1.0}\n', encoding="utf-8")
    with pytest.raises(TowerGPTError, match=r"metrics\.jsonl:1 字段/field 'step'"):
        plot.plot_runs([run], tmp_path / "x.png")


def test_half_written_last_line_is_skipped(tmp_path, capsys):
    run = write_run(tmp_path / "run")
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"step": 101, "tok')   # 训练进程正写到一半
    assert_png(plot.plot_runs([run], tmp_path / "x.png"))
    assert "incomplete last line" in capsys.readouterr().err


def test_metric_absent_everywhere_and_label_count(two_runs, tmp_path):
    for run in two_runs:
        path = run / "metrics.jsonl"
        kept = [line for line in path.read_text(encoding="utf-8").splitlines() if "val_bpc" not in line]
        path.write_text("\n".join(kept) + "\n", encoding="utf-8")
    with pytest.raises(TowerGPTError, match="val_bpc"):
        plot.plot_runs(two_runs, tmp_path / "x.png")
    with pytest.raises(TowerGPTError, match="2 runs"):
        plot.plot_runs(two_runs, tmp_path / "x.png", metric="loss", labels=["only one"])


def test_cli(two_runs, tmp_path):
    out = tmp_path / "cli.png"
    done = run_cli("plot", *two_runs, "--out", out, "--metric", "loss", "--x", "step")
    assert done.returncode == 0, done.stderr[-2000:]
    assert_png(out)
    bad = run_cli("plot", tmp_path / "missing", "--out", out)
    assert bad.returncode == 2 and "missing" in bad.stderr and "Traceback" not in bad.stderr
