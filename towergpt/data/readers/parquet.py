""".parquet 读取器：列式存储，只读需要的列、一次一批（record batch），内存有界 / Parquet reader.

编号是行序号（从 1 开始）。pyarrow 是可选依赖（pip install towergpt[parquet]），用到时才导入。
    read_parquet_column  预训练：一个字符串列，null 是坏记录
    read_parquet_rows    对话、偏好数据：每行变成 {列名: 值}
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from towergpt.data.readers.records import BadRecord, Item, first_line, json_type_name
from towergpt.errors import TowerGPTError, where


def _open_parquet(path: Path):
    """打开 Parquet 文件，返回 (pyarrow 模块, ParquetFile)。

    pyarrow 是可选依赖：没装时给出安装方法，而不是 ImportError 的 traceback。
    """
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise TowerGPTError(
            f"{path}: 读取 .parquet 需要 pyarrow，请运行 pip install towergpt[parquet]"
            f" / reading Parquet needs pyarrow: pip install towergpt[parquet]"
        ) from None
    try:
        return pa, pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise TowerGPTError(f"{path}: 不是有效的 Parquet 文件 / not a valid Parquet file: {first_line(err)}") from None


def _parquet_batches(path: Path, pa, parquet_file, columns: list[str] | None) -> Iterator:
    """一批一批（record batch）地读；读到一半出错（文件损坏）时说清楚读到了第几行。

    Parquet 是列式存储，只读需要的列、一次一批，内存同样有界。
    """
    batches = parquet_file.iter_batches(batch_size=1024, columns=columns)
    row = 0
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowException, OSError) as err:
            raise TowerGPTError(f"{path} 第 {row} 行之后 / after row {row}: 读取失败 / read error: {first_line(err)}") from None
        if batch is None:
            return
        yield batch
        row += batch.num_rows


def read_parquet_column(path: Path, field: str) -> Iterator[Item]:
    """Parquet 的一个字符串列：编号是行序号（从 1 开始）。"""
    pa, parquet_file = _open_parquet(path)
    schema = parquet_file.schema_arrow
    if field not in schema.names:
        raise TowerGPTError(
            f"{where(path, field=field)}: Parquet 里没有这一列，现有的列 / no such column, columns are: {schema.names}"
        )
    column_type = schema.field(field).type
    if not (pa.types.is_string(column_type) or pa.types.is_large_string(column_type)
            or _is_string_view(pa, column_type)):
        raise TowerGPTError(
            f"{where(path, field=field)}: 这一列的类型是 {column_type}，需要字符串"
            f" / column type is {column_type}, expected string"
        )
    row = 0
    for batch in _parquet_batches(path, pa, parquet_file, [field]):
        for value in batch.column(0).to_pylist():
            row += 1
            if isinstance(value, str):
                yield row, value
            else:  # 字符串列里唯一可能的非字符串是空值 null
                yield BadRecord(
                    f"{path} 行/row {row} 字段/field '{field}'",
                    f"值是 {json_type_name(value)}，需要字符串 / value is {json_type_name(value)}, expected a string",
                )


def read_parquet_rows(path: Path) -> Iterator[Item]:
    """Parquet 的整行：每行变成 {列名: 值}，列表、结构体列变成 Python 的 list / dict。"""
    pa, parquet_file = _open_parquet(path)
    row = 0
    for batch in _parquet_batches(path, pa, parquet_file, None):
        for record in batch.to_pylist():
            row += 1
            yield row, record


def _is_string_view(pa, column_type) -> bool:
    """较新的 pyarrow 还有 string_view 类型；旧版本没有这个判断函数。"""
    check = getattr(pa.types, "is_string_view", None)
    return bool(check and check(column_type))
