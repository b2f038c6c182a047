"""python scripts/check_sizes.py PATH ...: files over 400 lines and functions over 60 lines;
``run.py`` (the checkout's shim) over 60 lines, and more than 8 modules at the top of ``mpcl/``
(their place is a subpackage: ``mpcl/bench``, ``mpcl/config``, ...).

The body of a numba-compiled kernel (a function decorated with ``numba.njit``/``njit``, also
when nested in the factory that compiles it) is not counted. Exit 1 if anything is over."""

import ast
import pathlib
import sys

MAX_FILE, MAX_FUNCTION = 400, 60
MAX_SHIM, MAX_TOP_MODULES = 60, 8


def jitted(node: ast.AST) -> bool:
    return any("njit" in ast.unparse(d) or "numba.jit" in ast.unparse(d) for d in node.decorator_list)


def length(node: ast.AST) -> int:
    inner = sum(n.end_lineno - n.lineno + 1 for n in ast.walk(node)
                if n is not node and isinstance(n, ast.FunctionDef) and jitted(n))
    return node.end_lineno - node.lineno + 1 - inner


def main(args: list[str]) -> int:
    paths, over = [], []
    for a in args:
        p = pathlib.Path(a)
        paths += sorted(p.rglob("*.py")) if p.is_dir() else [p]
        top = sorted(p.glob("*.py")) if p.name == "mpcl" and p.is_dir() else []
        if len(top) > MAX_TOP_MODULES:
            over.append(f"{p}: {len(top)} top-level modules (at most {MAX_TOP_MODULES})")
    for f in paths:
        text = f.read_text()
        limit = MAX_SHIM if f.name == "run.py" else MAX_FILE
        if text.count("\n") > limit:
            over.append(f"{f}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            function = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not jitted(node)
            if function and length(node) > MAX_FUNCTION:
                over.append(f"{f}:{node.lineno} {node.name}: {length(node)} lines")
    print("\n".join(over + [f"{len(paths)} files: " + (f"{len(over)} over the limits" if over else "ok")]))
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
