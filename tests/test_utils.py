"""segzoo.utils: the one allocator opt-in rule shared by every entry point; atomic writes."""

import os

import pytest

import segzoo.utils as utils


@pytest.mark.parametrize(
    "value, tuned, warns", [(None, False, False), ("default", False, False), ("reuse", True, False),
                            (" REUSE ", True, False), ("jemalloc", False, True)],
)  # fmt: skip
def test_cpu_allocator_from_env(monkeypatch, recwarn, value, tuned, warns):
    calls = []
    monkeypatch.setattr(utils, "tune_cpu_allocator", lambda: calls.append(1) or True)
    if value is None:
        monkeypatch.delenv(utils.ALLOCATOR_ENV, raising=False)
    else:
        monkeypatch.setenv(utils.ALLOCATOR_ENV, value)
    assert utils.cpu_allocator_from_env() is tuned
    assert calls == ([1] if tuned else [])
    assert any("SEGZOO_CPU_ALLOCATOR='jemalloc' ignored" in str(w.message) for w in recwarn) is warns


def test_every_entry_point_uses_the_same_rule(monkeypatch, tmp_path):
    """`segzoo` and `python -m segzoo.demo` both go through cpu_allocator_from_env, only when run as the program."""
    import segzoo.cli
    import segzoo.demo

    seen = []
    monkeypatch.setattr(utils, "cpu_allocator_from_env", lambda: seen.append("rule") or False)
    monkeypatch.setattr(segzoo.demo, "cpu_allocator_from_env", utils.cpu_allocator_from_env)
    monkeypatch.setattr("sys.argv", ["segzoo", "--version"])
    assert segzoo.cli.main() == 0
    assert segzoo.cli.main(["--version"]) == 0  # called from Python: the process is not ours, nothing changes
    assert seen == ["rule"]
    monkeypatch.setattr(segzoo.cli, "main", lambda argv: seen.append(argv[0]) or 1)  # stop the demo after `fit`
    monkeypatch.setattr("sys.argv", ["demo", "--out", str(tmp_path)])
    assert segzoo.demo.main() == 1
    assert segzoo.demo.main(["--out", str(tmp_path)]) == 1
    assert seen == ["rule", "rule", "fit", "fit"]


def test_atomic_outputs_get_normal_permissions(tmp_path):
    from segzoo.utils import _UMASK, atomic_dir, atomic_write_text

    path = atomic_write_text(tmp_path / "a" / "out.json", "{}")
    assert path.read_text() == "{}"
    assert path.stat().st_mode & 0o777 == 0o666 & ~_UMASK  # not mkstemp's private 0o600
    with atomic_dir(tmp_path / "case") as folder:
        (folder / "x.txt").write_text("x")
    assert (tmp_path / "case").stat().st_mode & 0o777 == 0o777 & ~_UMASK  # not mkdtemp's 0o700
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left behind


@pytest.mark.parametrize(
    "env, applied",
    [({}, True), ({"MALLOC_MMAP_THRESHOLD_": "65536"}, False), ({"LD_PRELOAD": "libjemalloc.so.2"}, False)],
)
def test_tune_cpu_allocator_respects_the_users_choice(env, applied):
    import subprocess
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "SEGZOO_CPU")) and k != "LD_PRELOAD"}
    # a preload library that is not installed only makes ld.so print a warning; the variable is what counts
    code = "from segzoo.utils import tune_cpu_allocator; print(tune_cpu_allocator())"
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(applied)
