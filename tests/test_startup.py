"""The light commands import only what they use: a fresh process records which heavy packages each one loaded.

Timing lives in benchmarks/startup.py; here the cause of slow start-up (importing torch, Lightning, MONAI for a
help text or a table) is asserted directly, so it cannot creep back unnoticed.
"""

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "lightning", "monai", "timm", "kornia", "lightly", "torchvision", "sympy", "itk", "matplotlib",
         "sklearn", "segmentation_models_pytorch")

PROBE = """
import json, sys
from medtransfer.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(m for m in sys.modules if m in {heavy})))
"""


def imported_by(*argv: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE.format(heavy=set(HEAVY)), *argv], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from medtransfer.bench.store import ResultStore

    folder = tmp_path_factory.mktemp("exp")
    store = ResultStore(folder)
    for seed in (0, 1):
        store.start(f"r{seed}", {"seed": seed}, dict(dataset="d", init="random", strategy="linear", fraction=1.0,
                                                      seed=seed))
        store.finish(f"r{seed}", {"auc": 0.6 + seed / 10}, {}, {}, {})
    return folder


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["results", "--help"], ["zoo", "--help"]])
def test_help_imports_no_heavy_package(argv):
    assert imported_by(*argv) == []


def test_results_imports_no_training_package(store):
    assert imported_by("results", str(store)) == []


def test_report_imports_matplotlib_but_no_training_package(store, tmp_path):
    loaded = imported_by("report", str(store), "--baseline", "random/linear", "--output", str(tmp_path / "r"))
    assert "matplotlib" in loaded and not {"torch", "lightning", "monai", "timm"} & set(loaded)


def test_describe_2d_backbone_needs_no_monai():
    loaded = imported_by("describe", "resnet_tiny")
    assert "torch" in loaded and "monai" not in loaded and "lightning" not in loaded
