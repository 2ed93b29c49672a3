"""benchmarks/gpu_check.py: its dry run (tiny sizes, CPU) measures every row without Ray, and its
table is appended to the results file (so the script cannot rot while no GPU is around)."""

import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_check  # noqa: E402

# Runs the script as `python benchmarks/gpu_check.py`, with `import ray` made to fail.
NO_RAY = ("import runpy, sys; sys.modules['ray'] = None; sys.argv = ['gpu_check.py'] + sys.argv[1:]; "
          "runpy.run_path('benchmarks/gpu_check.py', run_name='__main__')")


@pytest.mark.slow
def test_dry_run_measures_every_row_without_ray(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## other (benchmarks/other.py)\n\nkept\n")
    out = subprocess.run([sys.executable, "-c", NO_RAY, "--dry_run", "--results_file", str(results)],
                         cwd=REPO, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    text = results.read_text()
    assert "## other (benchmarks/other.py)\n\nkept\n" in text
    assert "## gpu_check (benchmarks/gpu_check.py)" in text and "dry run" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    names = [row.split(" | ")[0] for row in rows]
    assert any("JAX brush engine" in n for n in names)
    assert any("policy update" in n for n in names)
    assert sum("discriminator update" in n for n in names) == 2   # WGAN-GP and SN-GAN
    assert any("fused runtime" in n for n in names)
    for row in rows:
        rate = row.split(" | ")[1]
        assert float(rate.split()[0].replace(",", "")) > 0, row


def test_runs_append_under_their_section(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# R\n\n## a (benchmarks/a.py)\n\nA\n\n## b (benchmarks/b.py)\n\nB\n")
    gpu_check.append_results("### run 1\n\n| x |", results)
    gpu_check.append_results("### run 2\n\n| y |", results)
    text = results.read_text()
    assert text.index("## a") < text.index("## b") < text.index("### run 1") < text.index("### run 2")
    assert text.count("## gpu_check (benchmarks/gpu_check.py)") == 1
    results.write_text(text.replace("## b (benchmarks/b.py)\n\nB\n", "") + "\n## c (benchmarks/c.py)\n\nC\n")
    gpu_check.append_results("### run 3", results)
    text = results.read_text()
    assert text.index("### run 2") < text.index("### run 3") < text.index("## c")
    assert text.endswith("## c (benchmarks/c.py)\n\nC\n")


def test_without_a_gpu_it_says_so_and_points_to_the_dry_run():
    with pytest.raises(SystemExit, match="--dry_run"):
        gpu_check.main([])


def test_missing_packages_are_named_with_the_pip_command(monkeypatch):
    monkeypatch.setitem(gpu_check.REQUIRED, "no_such_module_xyz", "no-such-package")
    assert gpu_check.missing_packages() == ["no-such-package"]
    with pytest.raises(SystemExit, match="pip install no-such-package"):
        gpu_check.main(["--dry_run"])
