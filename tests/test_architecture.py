"""房子的规矩（docs/architecture.md）：谁可以 import 谁、一个模块最多多长。

每条规矩都在一个全新的 Python 进程里检查“import 了 X 之后，sys.modules 里出现了哪些我们的模块”，
所以间接的 import（A → B → C）也算在内。
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "towergpt"
MAX_MODULE_LINES = 450


def towergpt_modules_loaded_by(module: str) -> set[str]:
    code = (f"import json, sys; import {module}; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('towergpt'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout))


def test_the_model_imports_nothing_of_ours():
    """model.py 只带着一课同级的 chunked_loss.py（分块的输出头 + 交叉熵），而那一课只依赖 torch。"""
    assert towergpt_modules_loaded_by("towergpt.model") == {"towergpt", "towergpt.model", "towergpt.chunked_loss"}
    assert towergpt_modules_loaded_by("towergpt.chunked_loss") == {"towergpt", "towergpt.chunked_loss"}


def test_lora_is_a_lesson_that_stands_alone():
    """LoRA 的那一层只依赖 torch（像 model.py 一样可以单独读懂）；整个 lora 包不认识训练循环。"""
    loaded = towergpt_modules_loaded_by("towergpt.lora")
    assert not {m for m in loaded if m.startswith(("towergpt.train", "towergpt.data", "towergpt.checkpoint"))}, loaded


@pytest.mark.parametrize("module", ["towergpt.data.prepare", "towergpt.data.pretrain_dataset",
                                    "towergpt.data.sft_dataset", "towergpt.data.dpo_dataset",
                                    "towergpt.data.dedup", "towergpt.data.clean"])
def test_data_knows_no_training_loop(module):
    loaded = towergpt_modules_loaded_by(module)
    assert not {m for m in loaded if m.startswith("towergpt.train")}, loaded


@pytest.mark.parametrize("module", ["towergpt.generate", "towergpt.chat", "towergpt.server.app",
                                    "towergpt.server.launch", "towergpt.hf.export",
                                    "towergpt.inspect.cli"])
def test_inference_needs_no_trainer(module):
    loaded = towergpt_modules_loaded_by(module)
    assert not {m for m in loaded if m.startswith(("towergpt.train", "towergpt.data.prepare"))}, loaded


def test_no_module_is_longer_than_the_limit():
    long = {str(path.relative_to(PACKAGE)): n for path in PACKAGE.rglob("*.py")
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not long, long


def test_the_doctor_knows_no_training_loop_and_no_torch():
    """doctor 只读文本文件：不 import train/（训练循环），也不 import torch；反过来训练循环只 import doctor.live。"""
    code = ("import json, sys; import towergpt.doctor.cli, towergpt.doctor.live; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('towergpt.train', 'torch')))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
    loop_imports = (PACKAGE / "train" / "loop.py").read_text(encoding="utf-8")
    assert set(re.findall(r"from towergpt\.doctor\.(\w+) import", loop_imports)) == {"live"}
