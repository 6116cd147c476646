"""让 `python -m towergpt ...` 与命令 `towergpt ...` 等价。"""

from towergpt.cli import main

if __name__ == "__main__":
    main()
