"""课程（docs/course/）不许烂掉：每章的代码块都能跑、每个源码链接都指向真的函数、每张图都能重新生成。

代码块按 docs/course/course_tools.py 开头写的约定运行：各章按顺序在同一个临时工作目录里，
一章的块在同一个进程里。默认跳过标了 `<!-- slow -->` 的块；跑全部：

    python -m pytest -m slow tests/test_course.py
"""

import importlib.util
import sys
from pathlib import Path

import pytest

COURSE = Path(__file__).resolve().parent.parent / "docs" / "course"
sys.path.insert(0, str(COURSE))
import course_tools  # noqa: E402

CHAPTERS = course_tools.chapters()
BLOCK_LIMIT_S = 90      # 课程承诺每块 2 核上至多约一分钟；CI 的机器有时更忙，留一点余量


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """各章共用的工作目录：后面的章用前面的章训练出来的东西，和读者自己的目录一样。"""
    return tmp_path_factory.mktemp("course")


@pytest.fixture(scope="module")
def workdir_all(tmp_path_factory):
    """跑全部代码块（含慢块）时各章共用的工作目录，和上面那个分开：慢块可能改写快块也用的东西。"""
    return tmp_path_factory.mktemp("course-all")


def run_and_check(chapter: Path, workdir: Path, include_slow: bool) -> None:
    result = course_tools.run_chapter(chapter, workdir, include_slow)
    assert result.returncode == 0, f"{chapter.name} 的代码块失败：\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    for where, seconds in course_tools.block_seconds(result.stdout).items():
        assert seconds < BLOCK_LIMIT_S or include_slow, f"{where} 用了 {seconds:.0f} 秒，应标 <!-- slow -->"


def test_the_course_has_its_chapters():
    assert len(CHAPTERS) >= 10
    names = [path.name[:2] for path in CHAPTERS]
    assert names == [f"{i:02d}" for i in range(1, len(CHAPTERS) + 1)], names   # 01、02……连续编号
    for path in CHAPTERS:
        assert course_tools.blocks(path), f"{path.name} 没有可运行的代码块"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[path.stem for path in CHAPTERS])
def test_every_chapter_says_what_it_teaches_and_ends_with_folded_exercises(chapter):
    text = chapter.read_text(encoding="utf-8")
    assert "读完这一章，你会明白" in text.split("\n## ")[0], f"{chapter.name} 开头没写“读完这一章，你会明白”"
    exercises = text.split("\n## 练习", 1)
    assert len(exercises) == 2, f"{chapter.name} 没有“## 练习”一节"
    assert "<details>" in exercises[1] and "</details>" in exercises[1], f"{chapter.name} 的练习没有折叠的答案"
    assert course_tools.IMAGE_LINK.search(text), f"{chapter.name} 没有插图"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[path.stem for path in CHAPTERS])
def test_every_quick_code_block_runs(chapter, workdir):
    run_and_check(chapter, workdir, include_slow=False)


@pytest.mark.slow
@pytest.mark.parametrize("chapter", CHAPTERS, ids=[path.stem for path in CHAPTERS])
def test_every_code_block_runs_slow_ones_included(chapter, workdir_all):
    run_and_check(chapter, workdir_all, include_slow=True)


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[path.stem for path in CHAPTERS])
def test_no_chapter_is_left_with_placeholders(chapter):
    """写课时先留占位、再由 fill-outputs 填真实输出；留到提交的占位（或正文里的 TODO）就是没写完。"""
    assert course_tools.placeholder_blocks(chapter) == [], f"{chapter.name}：跑 course_tools.py fill-outputs"
    text = chapter.read_text(encoding="utf-8")
    assert "TODO" not in text, f"{chapter.name} 第 {text[:text.find('TODO')].count(chr(10)) + 1} 行还有 TODO"


def test_fill_outputs_puts_each_blocks_output_after_it(tmp_path):
    chapter = tmp_path / "01-x.md"
    chapter.write_text("```python\nprint(6 * 7)\n```\n\n```text\n" + course_tools.PLACEHOLDER + "\n```\n\n"
                       "```python\nprint('不跟输出块')\n```\n正文\n\n```text\n示意图，不是输出\n```\n", encoding="utf-8")
    result = course_tools.run_chapter(chapter, tmp_path, include_slow=False)
    assert result.returncode == 0, result.stderr
    assert course_tools.fill_outputs(chapter, result.stdout) == 1
    text = chapter.read_text(encoding="utf-8")
    assert "```text\n42\n```" in text and "示意图，不是输出" in text and course_tools.PLACEHOLDER not in text


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[path.stem for path in CHAPTERS])
def test_every_source_link_names_a_function_at_its_line(chapter):
    assert course_tools.link_problems(chapter) == []
    text = chapter.read_text(encoding="utf-8")
    assert course_tools.SOURCE_LINK.search(text), f"{chapter.name} 没有指向源码的链接"
    # 写错格式的链接（../../towergpt/...py 却不符合约定）会被上面的检查漏掉，所以在这里拦住
    loose = text.count("](../../towergpt/")
    assert loose == len(course_tools.SOURCE_LINK.findall(text)), f"{chapter.name} 有不合约定格式的源码链接"


def test_every_figure_is_made_by_the_figure_script(tmp_path):
    spec = importlib.util.spec_from_file_location("make_figures", COURSE / "make_figures.py")
    make_figures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_figures)
    figures = make_figures.all_figures()
    used = {name for path in CHAPTERS for name in course_tools.IMAGE_LINK.findall(path.read_text(encoding="utf-8"))}
    assert used, "课程里没有图"
    for image in sorted(used):
        name = image.removeprefix("images/")
        assert name in figures, f"{image} 不是 make_figures.py 生成的"
        assert (COURSE / image).is_file(), f"{image} 还没生成（python docs/course/make_figures.py）"
        figures[name](tmp_path / name)
        assert (tmp_path / name).stat().st_size > 1000


def test_the_link_fixer_repairs_a_stale_line_number(tmp_path, monkeypatch):
    chapter = tmp_path / "01-x.md"
    good = course_tools.definition_line(course_tools.REPO / "towergpt/model.py", "GPT.forward")
    assert good is not None
    chapter.write_text("见 [`towergpt/model.py` · `GPT.forward`](../../towergpt/model.py#L1)。\n", encoding="utf-8")
    assert course_tools.link_problems(chapter)
    assert course_tools.fix_links(chapter) == 1
    assert course_tools.link_problems(chapter) == []
    assert f"#L{good})" in chapter.read_text(encoding="utf-8")
