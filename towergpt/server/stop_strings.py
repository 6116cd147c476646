"""`stop` 参数：生成的文字里一旦出现某个停止字符串，就在它前面截断并结束。

难点在流式输出：停止字符串可能被拆在两次输出之间（例如 stop="。\\n"，这次生成了“。”，下次才是“\\n”）。
所以末尾“可能是某个停止字符串开头”的那一小段先扣住不发，等下一段文字到来再决定。
"""

from __future__ import annotations


class StopStrings:
    """逐段喂入生成的文字，返回可以安全发给客户端的部分，以及是否遇到了停止字符串。"""

    def __init__(self, stops: tuple[str, ...] | list[str]):
        self.stops = [stop for stop in stops if stop]
        self.pending = ""        # 扣住未发的文字：它可能是某个停止字符串的开头

    def feed(self, piece: str) -> tuple[str, bool]:
        """喂入新的一段文字，返回 (现在可以发出的文字, 是否已遇到停止字符串)。"""
        text = self.pending + piece
        hits = [text.find(stop) for stop in self.stops if stop in text]
        if hits:
            self.pending = ""
            return text[:min(hits)], True             # 最早出现的那个停止字符串之前的部分
        keep = self._longest_partial_match(text)
        self.pending = text[len(text) - keep:]
        return text[:len(text) - keep], False

    def flush(self) -> str:
        """生成正常结束时，扣住的那段已经不可能凑成停止字符串了，全部发出。"""
        text, self.pending = self.pending, ""
        return text

    def _longest_partial_match(self, text: str) -> int:
        """text 末尾最长的、恰好是某个停止字符串“开头一部分”的长度。"""
        longest = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest
