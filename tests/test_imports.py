"""The repository's import architecture, checked from the source (ast) and by copying files alone.

Layout: concept files (one paper concept each, plus the leaves ckpt.py, checkpoint plumbing, and sampling.py, the
sampling step both policies share) import numpy / torch / ... and at most the few repository files in ALLOWED below;
the toy package (toy/: the laptop-scale world, its models, its evaluation, its reproduction script) imports concept
files and is never imported by them; train.py and its seam backbones.py import it only inside a function (when the toy
world is asked for). The benches (bench/) are imported by nothing. No import cycle anywhere, counting imports inside
functions and under `if __name__ == "__main__":`. The speed and memory machinery (perf/: the fast decode paths, the
synthetic real-size models and the memory estimate) imports concept files and the seam (whose table of models it
builds); the loop's files (train.py, backbones.py), the scripts and the tests import it, no concept file does.
Modules are named as Python imports them: `toy.world`, `bench.janus`, `perf.fast_sample`.

Run: pytest -q tests/test_imports.py   (the ast part takes milliseconds; the copy-alone part starts one Python per
concept file, a few at a time, ~20 s on 2 cores)
"""
import ast
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("toy", "bench", "perf")                                             # the three sub-packages


def _modules():
    """Every top-level *.py, and every PACKAGE/*.py as PACKAGE.name (its __init__.py as PACKAGE)."""
    out = {f[:-3]: f for f in os.listdir(ROOT) if f.endswith(".py")}
    for p in PACKAGES:
        for f in os.listdir(os.path.join(ROOT, p)):
            if f.endswith(".py"):
                out[p if f == "__init__.py" else f"{p}.{f[:-3]}"] = os.path.join(p, f)
    return out


FILES = _modules()                                                               # module -> path under ROOT
MODULES = sorted(FILES)
CONCEPTS = ("vq", "policy", "rewards", "ranke", "shift", "vapi", "data", "eval_fid", "ckpt", "janus",
            "text_encoders", "sampling")
ROOT_FILES_MAX = 16              # `ls *.py` at the root: method files, entry points, the seam, the loop's plumbing
LEAVES = ("ckpt", "sampling")   # import no repository module, so any file may import them
TOY, BENCH, PERF = "toy", "bench", "perf"
in_package = lambda m, p: m == p or m.startswith(p + ".")
# Every repository import a concept file may make, with the reason. main_only: allowed only in the file's
# `if __name__ == "__main__":` self-check (the file itself copies without it).
ALLOWED = {
    ("vq", "ckpt"): (False, "load_vq / LPIPS read upstream weight files with ckpt.read_state_dict / load_strict"),
    ("policy", "ckpt"): (False, "load_gpt reads LlamaGen GPT weights with ckpt.read_state_dict / load_strict"),
    ("janus", "ckpt"): (False, "load_janus reads Janus-Pro weights with ckpt.read_state_dict / resolve / load_strict"),
    ("janus", "vq"): (False, "Janus's gen_vision_model is vq.VQModel (LlamaGen VQ-16 keys); load_janus builds it"),
    ("policy", "sampling"): (False, "the samplers and token_logprobs use the shared step rule (CFG, top-k/p, draw)"),
    ("janus", "sampling"): (False, "the samplers and token_logprobs use the shared step rule (CFG, top-k/p, draw)"),
    ("eval_fid", "rewards"): (False, "the CLIP score and HPS v2.1 models are rewards.py's open_clip loaders"),
    ("eval_fid", "ckpt"): (False, "its command line probes the hub (ckpt.offline_if_unreachable) before loading weights"),
    ("vapi", "ranke"): (True, "the self-check trains with ranke.group_advantages / ranke.policy_loss"),
}


# ------------------------------------------------------------------------------------------- the static graph
def _is_main_guard(node):
    """`if __name__ == "__main__":` (either operand order)."""
    t = node.test
    if not (isinstance(t, ast.Compare) and len(t.ops) == 1 and isinstance(t.ops[0], ast.Eq)):
        return False
    sides = [t.left, t.comparators[0]]
    return (any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides)
            and any(isinstance(s, ast.Constant) and s.value == "__main__" for s in sides))


class _Imports(ast.NodeVisitor):
    """Collects (imported top-level module, where) with where in {"module", "main", "function"}: "function" = inside a
    def / lambda / class body method, "main" = under the module-level __main__ guard, "module" = anything else."""

    def __init__(self):
        self.found, self._func, self._main = [], 0, 0

    def _add(self, name):
        """The longest repository module that `name` (a.b.c) names, else its top-level package or module."""
        if name:
            parts = name.split(".")
            hit = next((".".join(parts[:k]) for k in range(len(parts), 0, -1) if ".".join(parts[:k]) in FILES), parts[0])
            self.found.append((hit, "function" if self._func else "main" if self._main else "module"))

    def visit_Import(self, node):
        for a in node.names:
            self._add(a.name)

    def visit_ImportFrom(self, node):
        if node.level == 0 and node.module:
            for a in node.names:      # `from toy import world` imports the module toy.world
                self._add(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in FILES else node.module)

    def visit_Call(self, node):          # importlib.import_module("x") / __import__("x") with a constant name
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
        if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            self._add(node.args[0].value)
        self.generic_visit(node)

    def _in_function(self, node):
        self._func += 1
        self.generic_visit(node)
        self._func -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _in_function

    def visit_If(self, node):
        if not self._func and _is_main_guard(node):
            self._main += 1
            for child in node.body:
                self.visit(child)
            self._main -= 1
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)


def _graph():
    """{module: {repo module it imports: set of places}} over every module in FILES (self-imports ignored)."""
    g = {}
    for m in MODULES:
        with open(os.path.join(ROOT, FILES[m]), encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=FILES[m])
        v = _Imports()
        v.visit(tree)
        g[m] = {}
        for name, where in v.found:
            if name in MODULES and name != m:
                g[m].setdefault(name, set()).add(where)
    return g


GRAPH = _graph()


def _cycles(g):
    """Every elementary cycle reachable by DFS (enough to name one per strongly connected knot), as lists."""
    out, state, stack = [], {}, []

    def dfs(u):
        state[u] = 1
        stack.append(u)
        for w in sorted(g.get(u, ())):
            if state.get(w) == 1:
                out.append(stack[stack.index(w):] + [w])
            elif w not in state:
                dfs(w)
        stack.pop()
        state[u] = 2

    for u in sorted(g):
        if u not in state:
            dfs(u)
    return out


def _fmt(edges):
    return "; ".join(f"{a} -> {b} ({'/'.join(sorted(w))})" for a, b, w in edges)


def test_the_graph_sees_the_files():
    for m in CONCEPTS + ("train",):
        assert m in MODULES, f"{m}.py is missing from the repository root"
    for m in ("toy.world", "toy.models", "toy.eval", "toy.report", "toy.reproduce", "bench.sampler",
              "perf.fast_sample", "perf.synthetic"):
        assert m in MODULES, f"{FILES.get(m, m)} is missing"
    assert not [f for f in os.listdir(ROOT) if f.startswith(("toy_", "bench_")) and f.endswith(".py")], \
        "the toy world lives in toy/, the benches in bench/"
    assert len([m for m in MODULES if "." not in m and m not in PACKAGES]) <= ROOT_FILES_MAX, \
        "the root holds the method, its entry points, the seam and the loop's plumbing only"


def test_no_import_cycle():
    cycles = _cycles(GRAPH)
    assert not cycles, ("import cycles (function-level and __main__ imports count): "
                        + " | ".join(" -> ".join(c) for c in cycles))


def test_concept_files_import_only_the_allow_list():
    bad, misplaced = [], []
    for m in CONCEPTS:
        for dep, where in GRAPH[m].items():
            if (m, dep) not in ALLOWED:
                bad.append((m, dep, where))
            elif ALLOWED[(m, dep)][0] and where != {"main"}:
                misplaced.append((m, dep, where))
    assert not bad, f"concept files import repository modules outside ALLOWED (add a reason there or remove): {_fmt(bad)}"
    assert not misplaced, f"imports allowed only in the __main__ self-check appear elsewhere: {_fmt(misplaced)}"
    for leaf in LEAVES:
        assert GRAPH[leaf] == {}, f"{leaf}.py is a leaf every file may import: it must import no repository module"
    stale = [k for k in ALLOWED if k[1] not in GRAPH[k[0]]]
    assert not stale, f"ALLOWED lists imports that no longer exist (remove them): {stale}"


def test_concept_files_never_import_toy_bench_or_perf():
    bad = [(m, dep, where) for m in CONCEPTS for dep, where in GRAPH[m].items()
           if in_package(dep, TOY) or in_package(dep, BENCH) or in_package(dep, PERF)]
    assert not bad, "a concept file imports toy/, bench/ or perf/: " + _fmt(bad)


def test_perf_builds_on_concept_files_and_the_seam_not_on_the_loop():
    """perf/ imports concept files, the seam backbones.py (synthetic.py builds its MODELS rows) and itself; never
    train.py, the toy or the benches."""
    bad = [(m, dep, where) for m, deps in GRAPH.items() if in_package(m, PERF) for dep, where in deps.items()
           if not (dep in CONCEPTS or dep == "backbones" or in_package(dep, PERF))]
    assert not bad, "perf/ may import only concept files, backbones.py and itself: " + _fmt(bad)


def test_toy_is_imported_only_by_itself_and_lazily_by_train_and_its_seam():
    bad = []
    for m, deps in GRAPH.items():
        if in_package(m, TOY) or in_package(m, BENCH):
            continue
        for dep, where in deps.items():
            if in_package(dep, TOY) and (m not in ("train", "backbones") or where != {"function"}):
                bad.append((m, dep, where))
    assert not bad, ("only toy/ (and the benches) may import the toy package, and train.py / backbones.py only "
                     "inside a function: " + _fmt(bad))


def test_bench_is_imported_by_nothing():
    bad = [(m, dep, where) for m, deps in GRAPH.items() if not in_package(m, BENCH)
           for dep, where in deps.items() if in_package(dep, BENCH)]
    assert not bad, "bench/ holds timing scripts; nothing imports them: " + _fmt(bad)


def test_toy_imports_concept_files_not_the_other_way():
    """The toy package builds on the method: each toy module imports concept files (directly or through toy/)."""
    uses = {dep for m, deps in GRAPH.items() if in_package(m, TOY) for dep in deps}
    assert set(CONCEPTS) & uses, "toy/ is expected to build on the concept files"


# ------------------------------------------------------------------------------------------- copy alone
def _deps_to_copy(m):
    """m's repository dependencies outside its own __main__ self-check, transitively (every one is in ALLOWED)."""
    todo, seen = [m], set()
    while todo:
        u = todo.pop()
        for dep, where in GRAPH[u].items():
            if where - {"main"} and dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return sorted(seen - {m})


_PROBE = ("import importlib, os, sys; m = importlib.import_module(sys.argv[1]); here = os.path.realpath(os.getcwd()); "
          "repo = [k for k, v in sys.modules.items() if os.path.dirname(os.path.realpath(getattr(v, '__file__', None)"
          " or '/')) == os.path.realpath(sys.argv[2])]; "   # a top-level repository file (not a venv inside the repo)
          "assert os.path.realpath(m.__file__).startswith(here + os.sep), m.__file__; "
          "assert not repo, f'loaded from the repository: {repo}'")


@pytest.mark.slow
def test_each_concept_file_imports_alone_with_its_allowed_deps(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")

    def probe(m):
        d = tmp_path / m
        d.mkdir()
        files = [m] + _deps_to_copy(m)
        for f in files:
            shutil.copy(os.path.join(ROOT, f + ".py"), d / (f + ".py"))
        res = subprocess.run([sys.executable, "-c", _PROBE, m, ROOT], cwd=d, env=env, capture_output=True, text=True,
                             timeout=300)
        return m, files, res

    with ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2))) as pool:
        results = list(pool.map(probe, CONCEPTS))
    failed = [f"{m} (copied with {files[1:] or 'nothing'}): {res.stderr.strip().splitlines()[-1:]}"
              for m, files, res in results if res.returncode != 0]
    assert not failed, "concept files that do not import alone:\n" + "\n".join(failed)


@pytest.mark.parametrize("m", CONCEPTS)
def test_allowed_deps_are_concept_files(m):
    """A concept file's copy set never drags in train.py, the toy wing, or a file outside the concept list."""
    for dep in _deps_to_copy(m):
        assert dep in CONCEPTS, f"{m} needs {dep}.py, which is not a concept file"
