"""写出一个完整的输出目录：先检查能不能写，在旁边的临时目录里写好，最后一步改名。

`data prepare`、`tokenizer train`、`export`、`import` 都这样做：
    1. check_out_dir：目录非空时默认拒绝；--overwrite 也只替换“可以删的”目录——
       输入文件（语料、检查点、HF 模型）在它里面就绝不删，因为替换 = 整个删掉；
    2. 在 out 旁边的临时目录里写全部文件（同一个文件系统，改名才是瞬间完成的）；
    3. replace_dir：改名为 out。别人看到的 out 要么不存在，要么是完整的。
2、3 两步合在 staged_output 里（只写一个文件的命令，例如导出 GGUF，用 check_out_file + staged_file，道理相同）：

    with staged_output(out) as staging:
        ...把文件写进 staging...
    # 正常走完 with：staging 改名为 out；中途出任何错（包括 Ctrl-C）：staging 删掉，out 原样不动
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from towergpt.errors import TowerGPTError


def check_out_dir(out: Path, overwrite: bool, flag: str = "--out", inputs: Iterable[Path] = (),
                  marker: str | None = None) -> None:
    """输出目录必须不存在或为空；非空时只有 overwrite 才替换，而且：

    marker   给了的话，旧目录里必须有这个文件（证明它是本命令以前写出的），否则拒绝删除；
    inputs   任何一个输入在旧目录里面（或就是它）都拒绝：替换会把输入一起删掉。
             例如 `towergpt export --ckpt runs/x --out runs/x --overwrite` 会删掉检查点本身。
    """
    if out.exists() and not out.is_dir():
        raise TowerGPTError(f"{out} 已存在且不是目录 / exists and is not a directory ({flag})")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise TowerGPTError(
            f"输出目录 {out} 已存在且不是空的；换一个 {flag}，或加 --overwrite 替换它"
            f" / output directory exists and is not empty: choose another {flag} or add --overwrite"
        )
    if marker is not None and not (out / marker).is_file():
        raise TowerGPTError(
            f"{out} 里没有 {marker}，不像是本命令写出的目录，为安全起见不会删除它"
            f" / has no {marker}, so it was not written by this command; refusing to replace it ({flag})"
        )
    resolved = out.resolve()
    for path in inputs:
        if resolved == Path(path).resolve() or resolved in Path(path).resolve().parents:
            raise TowerGPTError(
                f"{path} 在输出目录 {out} 里面，--overwrite 会把它删掉；请换一个 {flag}"
                f" / lies inside the output directory, which --overwrite would delete: choose another {flag}"
            )


@contextlib.contextmanager
def staged_output(out: Path) -> Iterator[Path]:
    """给出 out 旁边的一个临时目录；with 正常结束时把它改名为 out，出错时删掉它、把错误原样抛出。"""
    staging = make_staging_dir(out)
    try:
        yield staging
        replace_dir(staging, out)
    except BaseException:     # 包括 Ctrl-C（KeyboardInterrupt）：同样不留写了一半的临时目录
        shutil.rmtree(staging, ignore_errors=True)
        raise


def make_staging_dir(out: Path) -> Path:
    """在 out 旁边建一个临时目录（同一个文件系统，最后改名才是瞬间完成的）。"""
    parent = out.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=parent))
    except OSError as error:
        raise TowerGPTError(f"{parent}: 无法创建输出目录 / cannot create: {error.strerror or error}") from None
    apply_umask(staging, directory=True)
    return staging


def replace_dir(staging: Path, out: Path) -> None:
    """把写好的临时目录改名为 out；out 已存在（空目录，或已确认可以替换）就先删掉。"""
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)


def apply_umask(path: Path, directory: bool = False) -> None:
    """mkdtemp 和 safetensors 只给自己读写权限（0700 / 0600）；改回普通文件应有的权限（按 umask）。"""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if directory else 0o666) & ~umask)


def check_out_file(out: Path, overwrite: bool, flag: str = "--out", inputs: Iterable[Path] = ()) -> None:
    """输出是单个文件时的检查：不能是目录；已存在时只有 overwrite 才替换；不能就是某个输入文件。"""
    if out.is_dir():
        raise TowerGPTError(f"{out} 是一个目录，{flag} 要写一个文件名 / is a directory: {flag} names a file")
    resolved = out.resolve()
    for path in inputs:
        if resolved == Path(path).resolve():
            raise TowerGPTError(f"{flag} {out} 就是输入文件，不能覆盖它 / is one of the inputs: choose another {flag}")
    if out.exists() and not overwrite:
        raise TowerGPTError(
            f"{out} 已存在；换一个 {flag}，或加 --overwrite 替换它 / exists: choose another {flag} or add --overwrite"
        )


@contextlib.contextmanager
def staged_file(out: Path) -> Iterator[Path]:
    """给出 out 旁边的一个临时文件名；with 正常结束时改名为 out，出错时删掉临时文件、out 原样不动。"""
    parent = out.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=parent)
    except OSError as error:
        raise TowerGPTError(f"{parent}: 无法创建输出文件 / cannot create: {error.strerror or error}") from None
    os.close(handle)
    staging = Path(name)
    try:
        yield staging
        apply_umask(staging)
        os.replace(staging, out)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
