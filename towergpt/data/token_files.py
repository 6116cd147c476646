"""旧名字：数据集打开 token 文件的工具已并入 data/data_format.py（磁盘格式的唯一出处）。

sft_dataset.py、pretrain_dataset.py、dpo_dataset.py 还从这里导入；它们改为从 data_format 导入之后，
这个文件就可以删掉。这里不再有任何自己的代码。
"""

from towergpt.data.data_format import SPLITS, check_dataset_args, check_file_size, open_memmap, prepare_command

__all__ = ["SPLITS", "check_dataset_args", "check_file_size", "open_memmap", "prepare_command"]
