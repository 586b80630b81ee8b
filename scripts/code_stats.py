"""Size of the package's code: lines per file (median, p90, max), the longest class and function.

python scripts/code_stats.py [folder]      (default: metarun/)
"""

from __future__ import annotations

import ast
import statistics
import sys
from pathlib import Path


def _spans(tree: ast.AST, kind: type) -> list[tuple[int, str]]:
    return [
        (node.end_lineno - node.lineno + 1, node.name)
        for node in ast.walk(tree)
        if isinstance(node, kind)
    ]


def main(folder: Path) -> None:
    files = sorted(folder.rglob("*.py"))
    lengths = sorted(len(path.read_text().splitlines()) for path in files)
    classes, functions = [], []
    for path in files:
        tree = ast.parse(path.read_text())
        classes += [(n, f"{path}:{name}") for n, name in _spans(tree, ast.ClassDef)]
        functions += [
            (n, f"{path}:{name}")
            for n, name in _spans(tree, (ast.FunctionDef, ast.AsyncFunctionDef))
        ]
    p90 = lengths[min(len(lengths) - 1, int(0.9 * len(lengths)))]
    print(
        f"{len(files)} files; lines per file: median {statistics.median(lengths):g}, p90 {p90}, "
        f"max {lengths[-1]}"
    )
    print("longest class: {} lines ({})".format(*max(classes)))
    print("longest function: {} lines ({})".format(*max(functions)))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "metarun"))
