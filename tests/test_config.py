"""配置：预设能读、覆盖生效、错误指明文件/行/键。"""

import pytest

from towergpt.config import load_config
from towergpt.errors import TowerGPTError


def test_presets_load_and_overrides_apply():
    config = load_config("tiny", ["train.max_steps=7", "optim.lr=3e-4", "model.dropout=0.1", "train.compile=true"])
    assert config.train.max_steps == 7
    assert config.optim.lr == pytest.approx(3e-4)
    assert config.model.dropout == 0.1 and config.train.compile is True
    for name in ("small", "base"):
        assert load_config(name).model.n_layer > 4


def test_unknown_key_names_file_line_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  n_layer: 2\ntrain:\n  max_step: 10\n", encoding="utf-8")
    with pytest.raises(TowerGPTError, match=r"bad.yaml:4 .*train.max_step.*max_steps"):
        load_config(str(path))


def test_wrong_type_and_bad_override_are_clear(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  micro_batch_size: eight\n", encoding="utf-8")
    with pytest.raises(TowerGPTError, match=r"bad.yaml:2 .*micro_batch_size.*整数"):
        load_config(str(path))
    with pytest.raises(TowerGPTError, match="section.key=value"):
        load_config("tiny", ["train.max_steps"])
    with pytest.raises(TowerGPTError, match="--set train.compile=maybe"):
        load_config("tiny", ["train.compile=maybe"])


def test_invalid_yaml_and_missing_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model: [unclosed\n", encoding="utf-8")
    with pytest.raises(TowerGPTError, match="broken.yaml:2"):
        load_config(str(path))
    with pytest.raises(TowerGPTError, match="tiny"):
        load_config(str(tmp_path / "nope.yaml"))


def test_model_constraints_are_reported(tmp_path):
    with pytest.raises(TowerGPTError, match="n_kv_head"):
        load_config("tiny", ["model.n_kv_head=3"])
