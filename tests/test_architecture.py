"""Architecture rules (docs/DESIGN.md, "Layout" and "Compatibility tiers").

* ``cloud/`` and ``edge/`` import ``shared/``, never each other; ``shared/`` imports neither.
* ``shared/`` and ``edge/`` use no torch API newer than torch 1.10 (the Jetson TX2 stack).
* ``shared`` does no I/O at import time and importing it pulls in neither app.

The checks read the source with ``ast`` (comments and docstrings never trigger them) and name the file
and line of every violation. Each checker is also run on a small snippet, so a broken checker cannot
pass vacuously.
"""
import ast
import os
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APPS = ("cloud", "edge", "shared")
# package -> top-level packages of this project it must never import
FORBIDDEN_IMPORTS = {"cloud": ("edge",), "edge": ("cloud",), "shared": ("cloud", "edge")}
TX2_TIER = ("shared", "edge")

# torch APIs newer than torch 1.10 (a name matches itself and anything below it: torch.func.vmap).
# torch.cuda.amp (1.6) and torch.inference_mode (1.9) are fine.
NEW_TORCH_APIS = {
    "torch.compile": "torch 2.0",
    "torch.func": "torch 2.0",
    "torch.export": "torch 2.1",
    "torch.vmap": "torch 2.0",
    "torch.library": "torch 1.12 (public)",
    "torch.amp": "torch 1.10 has only torch.cuda.amp / torch.cpu.amp",
    "torch.nn.functional.scaled_dot_product_attention": "torch 2.0",
}
NEW_KEYWORDS = {"weights_only": "torch.load(weights_only=...) is torch 1.13"}


def _py_files(package):
    out = []
    for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, package)):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py"))
    return out


def _parse(path):
    with open(path, encoding="utf-8") as f:
        return ast.parse(f.read(), filename=path)


def _rel(path):
    return os.path.relpath(path, ROOT)


# ------------------------------------------------------------------------------------- imports

def absolute_imports(tree):
    """``(line, top-level package)`` of every absolute import, including
    ``importlib.import_module("x.y")`` and ``__import__("x")`` with a constant name."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, a.name.split(".")[0]) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                out.append((node.lineno, node.module.split(".")[0]))
        elif isinstance(node, ast.Call) and node.args:
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else None
            arg = node.args[0]
            if name in ("import_module", "__import__") and isinstance(arg, ast.Constant) \
                    and isinstance(arg.value, str) and not arg.value.startswith("."):
                out.append((node.lineno, arg.value.split(".")[0]))
    return out


def test_import_checker_sees_every_form():
    src = textwrap.dedent("""
        import edge
        import edge.cli as ec, os
        from edge import finetune
        from edge.finetune import x
        from . import edge
        from .edge import y
        import importlib
        importlib.import_module("edge.cli")
        __import__("edge")
        def f():
            import cloud.quality
    """)
    found = absolute_imports(ast.parse(src))
    assert [line for line, top in found if top == "edge"] == [2, 3, 4, 5, 9, 10]
    assert (12, "cloud") in found and (3, "os") in found


@pytest.mark.parametrize("package", APPS)
def test_packages_do_not_import_each_other(package):
    files = _py_files(package)
    assert files, "no .py files under {}/".format(package)
    bad = ["{}:{}: imports {}".format(_rel(p), line, top)
           for p in files for line, top in absolute_imports(_parse(p))
           if top in FORBIDDEN_IMPORTS[package]]
    assert not bad, "{}/ must not import {}:\n{}".format(package, " or ".join(FORBIDDEN_IMPORTS[package]),
                                                         "\n".join(bad))


# ------------------------------------------------------------------------- torch 1.10 denylist

def _dotted(node):
    """``a.b.c`` for a Name/Attribute chain, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _matches(name):
    for api, why in NEW_TORCH_APIS.items():
        if name == api or name.startswith(api + "."):
            return api, why
    return None


def new_api_uses(tree):
    """``(line, what, why)`` for every torch API newer than 1.10, every ``weights_only=`` keyword and
    ``from __future__ import annotations``. Names bound by ``import torch.nn.functional as F`` or
    ``from torch import nn`` are resolved, so ``F.scaled_dot_product_attention`` is caught too."""
    aliases = {}  # local name -> dotted module/object name
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    aliases[a.asname] = a.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for a in node.names:
                aliases[a.asname or a.name] = node.module + "." + a.name
    out = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "__future__" and any(a.name == "annotations" for a in node.names):
                out.append((node.lineno, "from __future__ import annotations", "Python 3.7"))
            names = [node.module] + [node.module + "." + a.name for a in node.names]
        elif isinstance(node, (ast.Attribute, ast.Name)):
            name = _dotted(node)
            if name:
                head, _, rest = name.partition(".")
                names = [aliases[head] + ("." + rest if rest else "")] if head in aliases else [name]
        elif isinstance(node, ast.Call):
            out.extend((node.lineno, k.arg + "=", NEW_KEYWORDS[k.arg]) for k in node.keywords
                       if k.arg in NEW_KEYWORDS)
        for name in names:
            hit = _matches(name)
            if hit:
                out.append((node.lineno, hit[0], hit[1]))
    return sorted(set(out))


def test_denylist_checker_catches_each_api_and_spares_old_ones():
    src = textwrap.dedent("""
        from __future__ import annotations
        import torch
        import torch.nn.functional as F
        from torch import nn
        from torch.func import vmap
        import torch.export
        m = torch.compile(nn.Linear(2, 2))
        y = F.scaled_dot_product_attention(q, k, v)
        z = nn.functional.scaled_dot_product_attention(q, k, v)
        with torch.amp.autocast("cuda"):
            pass
        w = torch.vmap(f)
        lib = torch.library.Library("x", "DEF")
        sd = torch.load(path, weights_only=True)
        # torch.compile in a comment is fine
        with torch.cuda.amp.autocast():
            pass
        with torch.inference_mode():
            pass
        s = "torch.compile"
    """)
    found = {(line, what) for line, what, _ in new_api_uses(ast.parse(src))}
    assert found == {
        (2, "from __future__ import annotations"), (6, "torch.func"), (7, "torch.export"),
        (8, "torch.compile"), (9, "torch.nn.functional.scaled_dot_product_attention"),
        (10, "torch.nn.functional.scaled_dot_product_attention"), (11, "torch.amp"), (13, "torch.vmap"),
        (14, "torch.library"), (15, "weights_only="),
    }, sorted(found)


@pytest.mark.parametrize("package", TX2_TIER)
def test_tx2_tier_uses_no_torch_api_newer_than_1_10(package):
    files = _py_files(package)
    assert files, "no .py files under {}/".format(package)
    bad = ["{}:{}: {} ({})".format(_rel(p), line, what, why)
           for p in files for line, what, why in new_api_uses(_parse(p))]
    assert not bad, "{}/ must run on torch 1.10 / Python 3.6:\n{}".format(package, "\n".join(bad))


# ------------------------------------------------------------------------ import-time behaviour

# Imports shared and every submodule in a fresh interpreter with an audit hook that records file opens
# (other than code), sockets and subprocesses made by code in shared/ itself; prints one JSON line.
_IMPORT_PROBE = r"""
import importlib, json, os, pkgutil, sys, time
ROOT = os.path.join(os.path.abspath(sys.argv[1]), "shared") + os.sep
EVENTS = ("open", "socket.connect", "socket.bind", "subprocess.Popen", "os.system", "urllib.Request")
CODE = (".py", ".pyc", ".so", ".pth")
io_calls = []
def hook(event, args):
    if event not in EVENTS or (event == "open" and str(args[0]).endswith(CODE)):
        return
    f = sys._getframe(1)
    while f is not None and f.f_code.co_filename.startswith("<"):  # the import machinery
        f = f.f_back
    if f is not None and os.path.abspath(f.f_code.co_filename).startswith(ROOT):
        io_calls.append("{}:{}: {} {!r}".format(f.f_code.co_filename, f.f_lineno, event, args[:2]))
sys.addaudithook(hook)
t0 = time.time()
import shared
after_shared = sorted(m for m in sys.modules if m.split(".")[0] in ("cloud", "edge"))
mods = ["shared"] + [m.name for m in pkgutil.walk_packages(shared.__path__, "shared.")]
for m in mods:
    importlib.import_module(m)
print(json.dumps({"seconds": time.time() - t0, "modules": mods, "io": io_calls,
                  "apps_after_shared": after_shared,
                  "apps_after_all": sorted(m for m in sys.modules if m.split(".")[0] in ("cloud", "edge"))}))
"""


@pytest.fixture(scope="module")
def import_probe():
    import json
    env = dict(os.environ, PYTHONPATH=ROOT)
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", _IMPORT_PROBE, ROOT], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    assert proc.returncode == 0, "importing shared failed:\n" + proc.stderr[-4000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["wall"] = time.time() - t0
    return res


def test_shared_imports_cleanly_and_quickly(import_probe):
    mods = import_probe["modules"]
    assert {"shared.data", "shared.models", "shared.training", "shared.manifest"} <= set(mods), mods
    # torch's own import dominates (~2 s here); 30 s is for a loaded 2-core CI box, not a target
    assert import_probe["seconds"] < 30, import_probe["seconds"]


def test_shared_does_no_io_at_import(import_probe):
    assert not import_probe["io"], "I/O at import time:\n" + "\n".join(import_probe["io"])


def test_importing_shared_pulls_in_neither_app(import_probe):
    assert import_probe["apps_after_shared"] == []
    assert import_probe["apps_after_all"] == []


def test_design_docs_live_in_the_repo():
    """The project carries its own design docs, and no file cites one outside the repository."""
    import re
    for doc in ("docs/DESIGN.md", "docs/REFERENCE.md", "docs/security.md"):
        assert os.path.getsize(os.path.join(ROOT, doc)) > 2000, doc
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    bad = []
    for f in files:
        if not f.endswith((".py", ".md", ".sh", ".toml", ".proto", ".service", ".example")):
            continue
        with open(os.path.join(ROOT, f), encoding="utf-8") as fh:
            text = fh.read()
        for m in re.finditer(r"[\w./`-]*(DESIGN|REFERENCE)\.md", text):
            ref = m.group(0).strip("`")
            local = (f.startswith("docs/") or f == "tests/test_architecture.py") and ref in ("DESIGN.md",
                                                                                              "REFERENCE.md")
            if not (ref.endswith("docs/" + m.group(1) + ".md") or local):
                bad.append("{}: {}".format(f, ref))
        if "../shared/" in text and f != "tests/test_architecture.py":
            bad.append("{}: ../shared/".format(f))
    assert not bad, bad


def test_contract_literals_live_in_shared_contract():
    """The file names and ONNX names the cloud and the edge exchange are spelled once, in
    ``shared/contract.py``: no string constant of ``cloud/`` or ``edge/`` (docstrings aside) repeats them."""
    from shared import contract
    names = {v for k, v in vars(contract).items() if k.isupper() and isinstance(v, str) and "." in v}
    assert {"encoders.pt", "model.onnx", "finetuned.pt", "manifest.json", "aligned_imu.onnx"} <= names
    bad = []
    for app in ("cloud", "edge"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, app)):
            for fn in files:
                if not fn.endswith(".py"):
                    continue
                path = os.path.join(dirpath, fn)
                with open(path, encoding="utf-8") as f:
                    tree = ast.parse(f.read())
                docs = {id(n.body[0].value) for n in ast.walk(tree)
                        if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                        and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
                for node in ast.walk(tree):
                    if isinstance(node, ast.Constant) and node.value in names and id(node) not in docs:
                        bad.append("{}:{} {!r}".format(os.path.relpath(path, ROOT), node.lineno, node.value))
    assert not bad, bad
