"""检查点：原子地写入、只保留最近 K 个、断点续训；磁盘满了、文件坏了都说清楚。

一个检查点目录 `checkpoints/step_00001000/` 里有：
    model.safetensors   模型权重（不经 pickle，加载安全）
    config.json         模型结构
    tokenizer.model     分词器（+ tokenizer.json；检查点自带，单独拿走也能用）
    trainer_state.pt    优化器、GradScaler、随机数状态、数据读到哪里、第几步……
    checksums.json      以上每个文件的字节数和 sha256（最后写，见 towergpt/checkpoint.py）
`checkpoints/latest` 是一个文本文件，写着最新检查点的目录名。

为什么“先写临时目录再改名”？写几百 MB 文件的中途可能断电、被 kill。
rename 在同一文件系统上是原子操作：要么完全是旧的，要么完全是新的，
所以 latest 永远不会指向一个写了一半的检查点。

写到一半失败（最常见的是磁盘满了）时：删掉写了一半的临时目录（否则它一直占着空间，
下一次保存又满），latest 保持原样，并用一行话说明“磁盘满了、一个检查点要多大”。
进程被 SIGKILL 时来不及清理，临时目录名里带着进程号，续训时发现那个进程已经不在了就删掉它。

续训时从 latest 开始逐个往前试：某个检查点坏了（校验和不符、文件被截断），打印一行警告，
改用更早的完整检查点，而不是带着垃圾继续训练或直接崩溃。
"""

from __future__ import annotations

import errno
import os
import pickle
import shutil
import traceback
from pathlib import Path
from typing import Callable

import torch

from towergpt.checkpoint import (
    LATEST_FILE, MODEL_FILE, STATE_FILE, DamagedCheckpointError, older_checkpoints, read_latest,
    one_line, read_weights, save_model_files, verify_checksums, write_checksums,
)
from towergpt.errors import TowerGPTError

TEMPORARY_PREFIX = ".tmp-"


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


# ---------------------------------------------------------------------------
# 保存
# ---------------------------------------------------------------------------

def save_checkpoint(run_dir: Path, step: int, model, tokenizer, trainer_state: dict, keep_last: int) -> Path:
    """写第 step 步的检查点，更新 latest，删掉多余的旧检查点。返回检查点目录。"""
    checkpoints = Path(run_dir) / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    clear_stale_temporaries(checkpoints)   # 先腾出死掉的进程留下的空间，再开始写
    final = checkpoints / checkpoint_name(step)
    temporary = checkpoints / f"{TEMPORARY_PREFIX}{checkpoint_name(step)}-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    needed = _needed_bytes(checkpoints, model, trainer_state)

    try:
        _write_files(temporary, model, tokenizer, trainer_state)
        if final.exists():  # 续训后重新到达同一步：用新的替换旧的
            shutil.rmtree(final)
        os.replace(temporary, final)
        _write_atomically(checkpoints / LATEST_FILE, final.name + "\n")
    except BaseException as error:
        # 无论因为什么失败（包括 Ctrl-C），写了一半的临时目录都没有用了，而且可能有几百 MB
        _release_open_files(error)
        shutil.rmtree(temporary, ignore_errors=True)
        if isinstance(error, Exception) and _is_disk_full(error, checkpoints, needed):
            raise TowerGPTError(_disk_full_message(checkpoints, step, needed)) from None
        raise
    _prune(checkpoints, keep_last, keep=final.name)
    return final


def _release_open_files(error: BaseException) -> None:
    """清空报错现场各层函数的局部变量，让它们握着的文件马上关闭。

    为什么？torch.save 失败时，它的写入器还开着那个写了一半的文件，而写入器被报错的“现场”
    （traceback 里的各层函数）引用着，要等整个 except 结束才释放。被删除但仍被打开的文件
    不释放磁盘空间，删完临时目录后量出的剩余空间就偏小。torch 在 __exit__ 里又报了一次错，
    所以要沿着 __context__（处理这个错误时又出的错）把每一层都清掉。
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        traceback.clear_frames(error.__traceback__)   # 正在运行的函数（本函数的调用者）会被自动跳过
        error = error.__cause__ or error.__context__


def _write_files(temporary: Path, model, tokenizer, trainer_state: dict) -> None:
    """把检查点的全部文件写进临时目录；校验和最后写，再把所有文件刷到磁盘上。"""
    save_model_files(model, tokenizer, temporary, checksums=False)
    torch.save(trainer_state, temporary / STATE_FILE)
    write_checksums(temporary)
    _fsync_dir(temporary)


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)   # 写失败（磁盘满）时不留下半个 latest.tmp
        raise


def _fsync_dir(directory: Path) -> None:
    """把目录里的文件真正刷到磁盘上（否则断电后“改名成功”而内容还在缓存里）。"""
    for file in directory.iterdir():
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())


def _prune(checkpoints: Path, keep_last: int, keep: str) -> None:
    """只保留最近的 keep_last 个检查点（以及刚写好的 keep）。残留的临时目录在保存开始前已经清过了。

    比 keep 还新的检查点也删掉：它们来自一条被放弃的时间线——续训时它们坏了而退回了更早的检查点，
    或者上次在改名之后、更新 latest 之前崩溃。留着它们只会占空间，还会挤掉 keep_last 的名额。
    """
    steps = sorted(p for p in checkpoints.iterdir() if p.is_dir() and p.name.startswith("step_"))
    newer = [p for p in steps if p.name > keep]
    current = [p for p in steps if p.name <= keep]
    for old in newer + current[:-keep_last]:
        if old.name != keep:
            shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------
# 磁盘满了
# ---------------------------------------------------------------------------

# 底层库把“磁盘满”包在自己的异常里时，消息里常带着这些字样：
# safetensors（Rust）写 "No space left on device (os error 28)"；分词器的保存把 OSError 转成了
# TowerGPTError，消息里有 strerror。os.strerror 给出的是本机语言的说法，Rust 的 "(os error N)" 则不随语言变。
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_MARKERS = tuple(f"(os error {number})" for number in _DISK_FULL_ERRNOS) + tuple(
    os.strerror(number) for number in _DISK_FULL_ERRNOS)


def _is_disk_full(error: Exception, checkpoints: Path, needed: int) -> bool:
    """这次保存失败是不是因为磁盘（或配额）满了？

    1. OSError 带着 errno：ENOSPC（设备上没有空间）或 EDQUOT（超出配额）就是；
    2. 被包装过的错误，消息里带着上面的字样；
    3. 都没有（torch.save 在磁盘满时只说 "[enforce fail at inline_container.cc:672] unexpected pos"）：
       临时目录已删，现在的剩余空间就是保存前的剩余空间；它连一个检查点都放不下，原因就是磁盘满。
    """
    if isinstance(error, OSError) and error.errno in _DISK_FULL_ERRNOS:
        return True
    if any(marker in str(error) for marker in _DISK_FULL_MARKERS):
        return True
    try:
        return shutil.disk_usage(checkpoints).free < needed
    except OSError:
        return False


def _disk_full_message(checkpoints: Path, step: int, needed: int) -> str:
    """一行说明：哪个目录满了、一个检查点要多大、还剩多少、latest 是否还在、接下来怎么办。"""
    try:
        free = f"{shutil.disk_usage(checkpoints).free / 1e6:.1f}"
    except OSError:
        free = "?"
    size = f"{needed / 1e6:.1f}"
    previous = read_latest(checkpoints)
    if previous is None:   # 第一次保存就满了：没有可以续训的检查点，只能重新开始
        next_cn, next_en = "还没有任何检查点，请腾出空间后重新运行同一命令", "no checkpoint yet: free some space and run it again"
    else:
        next_cn = f"latest 仍是 {previous.name}，请腾出空间（或调小 train.keep_last）后用 --resume 续训"
        next_en = f"latest still points to {previous.name}: free some space and continue with --resume"
    return (f"{checkpoints}: 磁盘已满，第 {step} 步的检查点没有保存（一个检查点约需 {size} MB，现在剩 {free} MB），"
            f"写了一半的临时目录已删除；{next_cn} / disk full: checkpoint for step {step} not saved (needs about "
            f"{size} MB, {free} MB free), partial files removed; {next_en}")


def _needed_bytes(checkpoints: Path, model, trainer_state: dict) -> int:
    """一个检查点大约要多少字节：取“上一个检查点的实际大小”和“张量字节数之和”中较大的。

    第一次保存时还没有上一个检查点，只能按张量估：权重（共享的只算一次）+ 优化器状态等。
    """
    tensors = _tensor_bytes(model.state_dict()) + _tensor_bytes(trainer_state)
    return max(tensors, _directory_bytes(read_latest(checkpoints)))


def _tensor_bytes(value, seen: set | None = None) -> int:
    """递归地数出 dict / list / tuple 里所有张量占的字节数（同一块内存只数一次）。"""
    seen = set() if seen is None else seen
    if isinstance(value, torch.Tensor):
        key = (value.data_ptr(), value.numel(), value.dtype)
        if key in seen:
            return 0
        seen.add(key)
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(item, seen) for item in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(item, seen) for item in value)
    return 0


def _directory_bytes(directory: Path | None) -> int:
    if directory is None or not directory.is_dir():
        return 0
    return sum(path.stat().st_size for path in directory.iterdir() if path.is_file())


# ---------------------------------------------------------------------------
# 死掉的进程留下的临时目录
# ---------------------------------------------------------------------------

def clear_stale_temporaries(checkpoints: Path) -> list[Path]:
    """删掉 checkpoints/ 里写它的进程已经不在了的 `.tmp-*` 目录，返回删掉了哪些。

    目录名的最后一段是写它的进程号。那个进程还活着（例如另一个训练正在写）就不碰；
    本进程自己的也删：保存是一个接一个进行的，调用这里时本进程没有正在写的临时目录。
    """
    checkpoints = Path(checkpoints)
    if not checkpoints.is_dir():
        return []
    removed = []
    for leftover in checkpoints.glob(f"{TEMPORARY_PREFIX}*"):
        if _writer_alive(leftover.name):
            continue
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
        removed.append(leftover)
    return removed


def _writer_alive(name: str) -> bool:
    """`.tmp-step_00000008-12345` 的写入进程 12345 还活着吗？（本进程自己算“不在写”）"""
    pid = name.rsplit("-", 1)[-1]
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)   # 信号 0 不发送任何东西，只检查进程是否存在
    except ProcessLookupError:
        return False
    except PermissionError:
        return True            # 进程存在，只是属于别的用户
    return True


# ---------------------------------------------------------------------------
# 读取与续训
# ---------------------------------------------------------------------------

def latest_checkpoint(run_dir: Path) -> Path | None:
    """运行目录里最新的完整检查点（权重和训练状态都在）；没有 latest 则返回 None。"""
    return read_latest(Path(run_dir) / "checkpoints", required=(MODEL_FILE, STATE_FILE))


def resume_candidates(run_dir: Path) -> list[Path]:
    """续训依次尝试的检查点：latest 指向的那个，然后是比它更早的，新的在前。

    比 latest 还新的目录不试：latest 是最后一次“成功保存”的记录，比它新的来自被放弃的时间线。
    没有 latest 文件（被误删）时，就从最新的 step_* 目录试起。
    """
    checkpoints = Path(run_dir) / "checkpoints"
    if not checkpoints.is_dir():
        return []
    target = read_latest(checkpoints)
    if target is None:
        steps = [p for p in checkpoints.iterdir() if p.is_dir() and p.name.startswith("step_")]
        return sorted(steps, reverse=True)
    return [target, *older_checkpoints(target)]


def load_checkpoint(directory: Path, model) -> dict:
    """核对校验和，把权重载入 model，返回训练状态 dict。

    坏了（缺文件、校验和不符、文件截断）抛出 DamagedCheckpointError；
    trainer_state.pt 要求还原可疑的 Python 对象时抛出普通 TowerGPTError（见下面的 read_trainer_state）。
    """
    directory = Path(directory)
    for name in (MODEL_FILE, STATE_FILE):
        if not (directory / name).is_file():
            raise DamagedCheckpointError(directory, f"缺少 {name} / {name} is missing")
    verify_checksums(directory)   # 先核对全部文件，再动 model：坏检查点不会把一半的权重写进模型
    read_weights(model, directory / MODEL_FILE)
    return read_trainer_state(directory / STATE_FILE)


def load_newest_intact(run_dir: Path, model, warn: Callable[[str], None]) -> tuple[Path, dict]:
    """从最新的检查点往前找第一个完好的，载入它；每跳过一个坏的，用 warn 说一行。返回 (目录, 训练状态)。"""
    candidates = resume_candidates(run_dir)
    if not candidates:
        raise TowerGPTError(f"--resume：{run_dir} 里没有检查点 / no checkpoint to resume from")
    damaged = []
    for directory in candidates:
        try:
            return directory, load_checkpoint(directory, model)
        except DamagedCheckpointError as error:
            damaged.append(directory.name)
            warn(f"警告 / warning: {error}；改用更早的检查点 / falling back to an older checkpoint")
    raise TowerGPTError(f"--resume：{Path(run_dir) / 'checkpoints'} 里的检查点全都损坏了（{', '.join(damaged)}），"
                        f"无法续训 / every checkpoint is damaged, cannot resume")


def read_trainer_state(path: Path) -> dict:
    """读 trainer_state.pt（weights_only=True：只还原张量、数字、字符串等，不执行任何 pickle 代码）。

    两种失败要分开：
      - 文件被截断、清空、乱码 → DamagedCheckpointError（续训可以退回更早的检查点）；
      - 文件完整，却要求还原 weights_only 不允许的 Python 对象（比如一个函数）→ 普通 TowerGPTError。
        这不是“坏了”，而是可疑：正常训练写出的文件不会这样。悄悄退回旧检查点会把问题藏起来，
        所以拒绝并停下，让人去看看是谁改了这个目录。
    """
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        detail = _unpickler_detail(error)
        if "Unsupported global" in detail:
            raise TowerGPTError(
                f"{path}: 含有 weights_only 不允许的 Python 对象（{detail}），为安全起见拒绝加载；"
                f"正常训练写出的文件不会这样，它可能被人替换过 / refused: the file asks to load a Python "
                f"object that weights_only does not allow; it may have been tampered with") from None
        raise DamagedCheckpointError(path.parent, f"{path.name} 无法读取 / unreadable: {detail}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        # 截断 → "failed finding central directory"；空文件 → EOFError；乱码 → "Invalid magic number"
        reason = one_line(error) or type(error).__name__
        raise DamagedCheckpointError(path.parent, f"{path.name} 无法读取 / unreadable: {reason}") from None


def _unpickler_detail(error: pickle.UnpicklingError) -> str:
    """torch 的 weights_only 报错是一大段说明，真正的原因在 "WeightsUnpickler error:" 后面。"""
    text = str(error)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
        text = text.split("Please use", 1)[0].split("Check the documentation", 1)[0]
    return one_line(Exception(text)).rstrip(". ")
