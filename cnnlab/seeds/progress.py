"""The sweep's progress line: seeds done, failed, running and queued, seconds per seed and the ETA;
rewritten in place on a terminal, a new line per finished seed elsewhere."""

import sys


def format_seconds(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    def __init__(self, name: str, total: int, stream=None) -> None:
        self.name, self.total = name, total
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.last = ""
        self._shown: tuple[int, int] | None = None

    def line(self, done: int, failed: int, running: int, eta: float | None, per_seed: float | None) -> str:
        todo = self.total - done - failed - running
        text = f"[{self.name}] {done}/{self.total} done, {failed} failed, {running} running, {todo} queued"
        if per_seed is not None:
            text += f" | {per_seed:.1f} s/seed"
        text += f" | ETA {format_seconds(eta)}" if eta is not None else " | ETA after the first seed"
        return text

    def show(self, done: int, failed: int, running: int, eta: float | None, per_seed: float | None) -> None:
        text = self.line(done, failed, running, eta, per_seed)
        if self.tty:
            self.stream.write("\r\033[K" + text)
            self.stream.flush()
        elif (done, failed) != self._shown:
            self._shown = (done, failed)
            print(text, file=self.stream, flush=True)
        self.last = text

    def close(self) -> None:
        if self.tty and self.last:
            self.stream.write("\n")
            self.stream.flush()
