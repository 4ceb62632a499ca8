"""benchmarks/readme_tables.py: README's demo table is rewritten from a results store, with the machine it ran on."""

import importlib.util
from pathlib import Path

import pytest

from medtransfer.bench.store import ResultStore, config_hash
from medtransfer.errors import MedtransferError

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "benchmarks" / "readme_tables.py")
readme_tables = importlib.util.module_from_spec(spec)
spec.loader.exec_module(readme_tables)
START, END = readme_tables.START, readme_tables.END


def fake_store(folder) -> ResultStore:
    """random and simclr, end_to_end, 10 %, seeds 0 and 1; simclr's seed 1 stored a warning."""
    store = ResultStore(folder)
    for init in ("random", "simclr"):
        for seed in (0, 1):
            config = {"init": init, "seed": seed, "fraction": 0.1}
            store.start(config_hash(config), config, {"dataset": "synthetic2d", "init": init,
                                                      "strategy": "end_to_end", "fraction": 0.1, "seed": seed})
            auc = (0.6 if init == "random" else 0.8) + 0.02 * seed
            store.finish(config_hash(config), {"auc": auc}, {}, {}, {"fit_s": 1.5, "test_s": 0.25},
                         extra={"warnings": ["selected epoch predicts one class"] if (init, seed) == ("simclr", 1)
                                else []})
    return store


def test_cpu_model_is_read_from_cpuinfo():
    info = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC  7B13 64-Core Processor\n"
    assert readme_tables.cpu_model(info) == "AMD EPYC 7B13 64-Core Processor"
    assert readme_tables.cpu_model("processor : 0\n")  # no model name: the platform's answer, never empty


def test_demo_block_is_what_results_prints_plus_machine_and_compute(tmp_path):
    block = readme_tables.demo_block(fake_store(tmp_path).rows(status=None), "auc", "TESTCPU, 2 cores")
    lines = block.splitlines()
    assert lines[0] == "```" and lines[1].startswith("auc: mean ± std over seeds")
    assert lines[2].split() == ["dataset", "init", "strategy", "10%"]
    assert lines[3].split() == ["synthetic2d", "random", "end_to_end", "0.610", "±", "0.014", "(n=2)"]
    assert lines[4].split() == ["synthetic2d", "simclr", "end_to_end", "0.810", "±", "0.014", "(n=2,", "1",
                                "warned)*"]
    assert "  synthetic2d | simclr | end_to_end | 10% | seed 1: selected epoch predicts one class" in lines
    assert lines[-1].startswith("Machine: TESTCPU, 2 cores. 4 finished fine-tuning runs, 7 s of fit + test")


def test_rewrite_replaces_only_the_marked_block_and_is_idempotent():
    readme = f"# title\n\nbefore\n{START}\nold table\n{END}\nafter\n"
    once = readme_tables.rewrite(readme, "new table\n")
    assert once == f"# title\n\nbefore\n{START}\nnew table\n{END}\nafter\n"
    assert readme_tables.rewrite(once, "new table\n") == once
    for broken in ("no markers", f"{END}\n{START}\n", f"{START}\n{START}\n{END}\n"):
        with pytest.raises(MedtransferError, match="exactly one"):
            readme_tables.rewrite(broken, "x")


def test_main_rewrites_a_readme_from_a_store(tmp_path, capsys):
    fake_store(tmp_path / "demo")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{START}\nstale\n{END}\nrest\n", encoding="utf-8")
    assert readme_tables.main(["--folder", str(tmp_path / "demo"), "--readme", str(readme)]) == 0
    text = readme.read_text(encoding="utf-8")
    assert "stale" not in text and "0.810 ± 0.014" in text and "Machine: " in text and "torch " in text
    assert text.startswith("intro\n") and text.endswith(f"{END}\nrest\n")
    assert readme_tables.main(["--folder", str(tmp_path / "none"), "--readme", str(readme)]) == 2
    assert "run `make demo` first" in capsys.readouterr().err


def test_the_project_readme_has_the_markers():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert text.count(START) == 1 and text.count(END) == 1 and text.index(START) < text.index(END)
