"""segzoo.utils: the one allocator opt-in rule shared by every entry point."""

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
