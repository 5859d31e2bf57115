"""Dependencies point down (CLI -> system -> shared pieces -> kernels), read from the source with `ast`:
no library module imports a `cli` module, inference code never imports training code, and no module reaches into
another module's private (`_name`) functions. Imports inside functions count too."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SOURCES = sorted(p for top in ("qrjax", "pallas_kernels") for p in (ROOT / top).rglob("*.py"))
OURS = ("qrjax", "pallas_kernels")
# training code: the shared trainer (its model export excepted: inference loads models through it) and every
# system's train.py
TRAINING_EXEMPT = {"qrjax.train", "qrjax.train.export"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_training(module: str) -> bool:
    return module not in TRAINING_EXEMPT and (module.startswith("qrjax.train.") or module.endswith(".train"))


def imports(path: Path) -> list[tuple[int, str, tuple[str, ...]]]:
    """(line, module, imported names) of every import of our packages in the file, top-level or not."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, ()) for a in node.names if a.name.startswith(OURS)]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(OURS):
            names = tuple(a.name for a in node.names)
            out.append((node.lineno, node.module, names))
            # `from qrjax.watermark import train` imports the submodule
            out += [(node.lineno, f"{node.module}.{n}", ()) for n in names if n in ("cli", "train")]
    return out


def test_the_walk_sees_the_package():
    names = {module_name(p) for p in SOURCES}
    assert {"qrjax.cli", "qrjax.watermark.cli", "qrjax.watermark.train", "qrjax.train.export",
            "pallas_kernels.error_bounded"} <= names


def import_problems(path: Path, me: str) -> list[str]:
    # a system package's __init__ may offer its train_and_evaluate (lazily: tests/train/test_export.py checks that
    # importing the inference modules loads no training module)
    package_face = path.name == "__init__.py"
    is_cli = me.endswith(".cli") or me in ("qrjax.cli", "qrjax.__main__")
    problems = []
    for line, module, names in imports(path):
        if not is_cli and (module == "qrjax.cli" or module.endswith(".cli")):
            problems.append(f"line {line}: a library module imports the CLI module {module}")
        if not (is_cli or package_face or is_training(me)) and is_training(module):
            problems.append(f"line {line}: inference code imports the training module {module}")
        private = [n for n in names if n.startswith("_") and not n.startswith("__")]
        if private:
            problems.append(f"line {line}: imports private names {private} from {module}")
    return problems


def private_problems(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    aliases = set()  # names bound to our modules: `import x.y as z`, `from qrjax import tiling`
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases |= {a.asname or a.name.split(".")[0] for a in node.names if a.name.startswith(OURS)}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(OURS):
            aliases |= {a.asname or a.name for a in node.names}
    return [f"line {n.lineno}: {n.value.id}.{n.attr}" for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in aliases
            and n.attr.startswith("_") and not n.attr.startswith("__")]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_dependencies_point_down(path):
    problems = import_problems(path, module_name(path))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_calls_into_another_modules_private_functions(path):
    problems = private_problems(path)
    assert not problems, "reaches into another module's private names:\n" + "\n".join(problems)


def test_the_checks_can_fail(tmp_path):
    bad = tmp_path / "probe.py"
    bad.write_text("from qrjax.watermark.cli import main\nfrom qrjax.diffusion import train\n"
                   "from qrjax.ecc.bitcode import _helper\nfrom qrjax import tiling\ntiling._private()\n")
    found = "\n".join(import_problems(bad, "qrjax.watermark.embed"))
    assert "imports the CLI module qrjax.watermark.cli" in found
    assert "inference code imports the training module qrjax.diffusion.train" in found
    assert "imports private names ['_helper']" in found
    assert private_problems(bad) == ["line 5: tiling._private"]
    assert [p for p in import_problems(bad, "qrjax.watermark.cli") if "private" not in p] == []  # a CLI may
