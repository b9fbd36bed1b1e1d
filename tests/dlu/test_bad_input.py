"""Bad input to every ``dlu`` command: one line naming the problem, non-zero exit, no traceback, no data lost.

Each parametrized case runs ``dlu.cli.main`` in a scratch folder that already holds a user's files
(a run, a trace, a generated core, a note) and checks: exit code != 0; stderr is exactly one line
that contains the expected words; no ``Traceback``; every file that existed before is unchanged and
no temporary file or folder is left behind. The classes follow issue 16: data lost, silent wrong
results, hangs/runaway memory, tracebacks. Faults that need real processes (SIGINT, SIGKILL, two
concurrent runs) are at the end.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dlu.cli import main

BIN = Path(sys.executable).parent
DLU = str(BIN / "dlu")
QUICK = ["--model", "mlp", "--epochs", "1", "--limit-train", "64", "--quiet", "--no-plots"]


@pytest.fixture(scope="module")
def trace_dir(tmp_path_factory) -> Path:
    """A real two-iteration dfp16 trace (RUN/trace) to corrupt."""
    root = tmp_path_factory.mktemp("trace")
    rc = main(["train", *QUICK, "--trace-iters", "0,1", "--out", str(root), "--name", "run"])
    assert rc == 0
    return root / "run" / "trace"


def _snapshot(root: Path) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = None if p.is_dir() else p.read_bytes()
    return out


def _scene(root: Path, trace_dir: Path) -> None:
    """The user's files every case starts from."""
    import shutil

    (root / "notes").mkdir()
    (root / "notes" / "keep.txt").write_text("my notes\n")
    (root / "afile").write_text("a file, not a folder\n")
    shutil.copytree(trace_dir.parent, root / "runs" / "run")
    (root / "mnist" / "train-images-idx3-ubyte").mkdir(parents=True)  # a folder where an IDX file belongs
    (root / "mnist" / "train-labels-idx1-ubyte").write_bytes(b"")


def _toml(root: Path, name: str, text: str) -> str:
    p = root / name
    p.write_text(text)
    return name


def _trace_edit(root: Path, name: str, edit) -> str:
    import shutil

    dst = root / name
    shutil.copytree(root / "runs" / "run" / "trace", dst)
    edit(dst)
    return name


def _manifest_edit(fn):
    def edit(d: Path) -> None:
        m = json.loads((d / "manifest.json").read_text())
        fn(m)
        (d / "manifest.json").write_text(json.dumps(m))
    return edit


def _truncate(d: Path) -> None:
    p = d / "arrays.npz"
    b = p.read_bytes()
    p.write_bytes(b[: len(b) // 2])


def _flip_member(d: Path) -> None:
    """Flip bits inside the first compressed member's data (the zip directory stays intact)."""
    p = d / "arrays.npz"
    b = bytearray(p.read_bytes())
    start = 30 + int.from_bytes(b[26:28], "little") + int.from_bytes(b[28:30], "little")  # first local header
    for i in range(start + 8, start + 40):
        b[i] ^= 0x5A
    p.write_bytes(bytes(b))


def _results(root: Path, edit) -> str:
    """A results JSON of a real replay, edited."""
    if not (root / "good.json").exists():
        assert main(["replay", "runs/run/trace", "--timing-only", "--quiet", "--out", str(root / "good.json")]) == 0
    d = json.loads((root / "good.json").read_text())
    edit(d)
    (root / "bad.json").write_text(json.dumps(d))
    return "bad.json"


# (id, argv builder(root) -> list, words expected in the one line)
CORE_TYPES = [
    ("lanes-str", '[core]\nlanes = "8"\n', "lanes='8'"),
    ("lanes-float", "[core]\nlanes = 8.0\n", "lanes=8.0"),
    ("lanes-bool", "[core]\nlanes = true\n", "lanes=True"),
    ("widths-str", '[core]\nwidths = "8"\n', "widths='8'"),
    ("preset-list", '[core]\npreset = ["tiny"]\n', "preset=['tiny']"),
    ("extra-table", "[core]\nlanes = 8\n[extra]\nx = 1\n", "['extra']"),
    ("lanes-huge", "[core]\nlanes = 4096\n", "lanes=4096"),
    ("spad-huge", "[core]\nspad_words = 1073741824\n", "spad_words=1073741824"),
    ("spad-bits", "[core]\nspad_words = 65536\n", "2 MiB"),
    ("tids-huge", "[core]\ntensor_ids = 100000\n", "tensor_ids=100000"),
]

CASES = []
for cid, text, words in CORE_TYPES:
    CASES += [
        pytest.param(lambda r, t=text: ["gen", "--config", _toml(r, "c.toml", t), "--out", "gen"], words,
                     id=f"types-gen-{cid}"),
        pytest.param(lambda r, t=text: ["replay", "runs/run/trace", "--core", _toml(r, "c.toml", t), "--out", "x.json"],
                     words, id=f"types-replay-{cid}"),
        pytest.param(lambda r, t=text: ["scale", "--core", _toml(r, "c.toml", t)], words, id=f"types-scale-{cid}"),
        pytest.param(lambda r, t=text: ["train", *QUICK, "--core", _toml(r, "c.toml", t), "--out", "runs"], words,
                     id=f"types-train-{cid}"),
    ]

CASES += [
    # data lost
    pytest.param(lambda r: ["gen", "--config", "tiny", "--out", "notes"], "did not write", id="lost-gen-user-folder"),
    pytest.param(lambda r: ["gen", "--config", "tiny", "--out", "afile"], "is a file", id="lost-gen-out-file"),
    pytest.param(lambda r: ["gen", "--config", "tiny", "--out", "afile/sub"], "is a file", id="lost-gen-under-file"),
    pytest.param(lambda r: ["train", *QUICK, "--out", "runs", "--name", "run"], "exists", id="lost-train-exists"),
    # silent wrong results
    pytest.param(lambda r: ["train", *QUICK, "--precision", "dfp16", "--core",
                            _toml(r, "w8.toml", "[core]\nwidths = [8]\n"), "--out", "runs"], "16-bit",
                 id="silent-width-core-lacks"),
    pytest.param(lambda r: ["train", *QUICK, "--workers", "2", "--memplan", "reorder", "--out", "runs"], "--memplan",
                 id="silent-workers-memplan"),
    pytest.param(lambda r: ["train", *QUICK, "--workers", "2", "--trace-iters", "0", "--out", "runs"], "--trace-iters",
                 id="silent-workers-trace"),
    pytest.param(lambda r: ["replay", _trace_edit(r, "t", _manifest_edit(
        lambda m: m["iterations"].append(m["iterations"][0]))), "--out", "x.json"], "listed twice",
        id="silent-trace-repeated-iteration"),
    pytest.param(lambda r: ["scale", "--sensitivity", "--plot", "p.png"], "--plot", id="silent-scale-sensitivity-plot"),
    # hangs and runaway memory
    pytest.param(lambda r: ["train", *QUICK, "--trace-iters", "0-1000000000", "--out", "runs"], "past the end",
                 id="hang-trace-iters-huge"),
    pytest.param(lambda r: ["train", *QUICK, "--limit-train", "100000", "--out", "runs"], "--limit-train",
                 id="train-limit-too-big"),
    pytest.param(lambda r: ["scale", "--batch", "100000000"], "--batch", id="hang-scale-batch-huge"),
    # tracebacks: output paths
    pytest.param(lambda r: ["train", *QUICK, "--out", "afile"], "is a file", id="out-train-file"),
    pytest.param(lambda r: ["train", *QUICK, "--out", "/proc/dlu-test"], "cannot write", id="out-train-unwritable"),
    pytest.param(lambda r: ["bench", "--seeds", "1", "--epochs", "1", "--out", "notes"], "is a folder",
                 id="out-bench-folder"),
    pytest.param(lambda r: ["bench", "--seeds", "1", "--epochs", "1", "--out", "afile/x.md"], "is a file",
                 id="out-bench-under-file"),
    pytest.param(lambda r: ["replay", "runs/run/trace", "--out", "notes"], "is a folder", id="out-replay-folder"),
    pytest.param(lambda r: ["replay", "runs/run/trace", "--out", "/proc/x.json"], "cannot write",
                 id="out-replay-unwritable"),
    pytest.param(lambda r: ["report", "runs/run/trace", "--out", "afile"], "is a file", id="out-report-file"),
    pytest.param(lambda r: ["memplan", "lenet5", "--plot", "notes"], "is a folder", id="out-memplan-folder"),
    pytest.param(lambda r: ["memplan", "lenet5", "--plot", "plot.txt"], "image format", id="out-memplan-format"),
    pytest.param(lambda r: ["scale", "--md", "notes"], "is a folder", id="out-scale-md-folder"),
    pytest.param(lambda r: ["scale", "--plot", "afile/p.png"], "is a file", id="out-scale-plot-under-file"),
    pytest.param(lambda r: ["gen", "--config", "tiny", "--out", "/proc/dlu-gen"], "cannot write",
                 id="out-gen-unwritable"),
    # tracebacks: configs and data
    pytest.param(lambda r: ["train", *QUICK, "--precision", "dfp16", "--config",
                            _toml(r, "p.toml", "[precision]\nweight = 16\n"), "--out", "runs"], "precision.weight",
                 id="types-precision-weight-int"),
    pytest.param(lambda r: ["gen", "--config", "notes", "--out", "gen"], "folder", id="config-is-folder"),
    pytest.param(lambda r: ["train", *QUICK, "--data", "mnist:mnist", "--out", "runs"], "is a folder",
                 id="idx-file-is-folder"),
    pytest.param(lambda r: ["train", *QUICK, "--data", "mnist:afile", "--out", "runs"], "is a file",
                 id="idx-dir-is-file"),
    # tracebacks: traces
    pytest.param(lambda r: ["replay", _trace_edit(r, "t", _truncate), "--out", "x.json"], "arrays.npz",
                 id="trace-npz-truncated"),
    pytest.param(lambda r: ["replay", _trace_edit(r, "t", _flip_member), "--out", "x.json"], "arrays.npz",
                 id="trace-npz-bit-flipped"),
    pytest.param(lambda r: ["replay", _trace_edit(r, "t", _manifest_edit(lambda m: m.update(iterations=[]))),
                            "--out", "x.json"], "iterations is empty", id="trace-iterations-empty"),
    pytest.param(lambda r: ["replay", _trace_edit(r, "t", _manifest_edit(
        lambda m: m["meta"].update(tensor_names=5))), "--out", "x.json"], "meta.tensor_names",
        id="trace-meta-tensor-names"),
    pytest.param(lambda r: ["report", _trace_edit(r, "t", _manifest_edit(
        lambda m: m["meta"].update(image_hwc="8x8"))), "--out", "rep"], "meta.image_hwc", id="trace-meta-hwc"),
    pytest.param(lambda r: ["replay", "notes", "--out", "x.json"], "manifest.json", id="trace-not-a-trace"),
    pytest.param(lambda r: ["replay", _trace_edit(r, "t", _manifest_edit(lambda m: m.update(threshold=-5))),
                            "--out", "x.json"], "manifest.threshold", id="trace-threshold"),
    pytest.param(lambda r: ["replay", _trace_edit(r, "t", _manifest_edit(lambda m: m.update(seed=2**40))),
                            "--out", "x.json"], "manifest.seed", id="trace-seed"),
    # tracebacks: results JSON given to report
    pytest.param(lambda r: ["report", _results(r, lambda d: d.update(totals=5)), "--out", "rep"], "totals",
                 id="results-totals-int"),
    pytest.param(lambda r: ["report", _results(r, lambda d: d.update(tensors=[])), "--out", "rep"], "tensors",
                 id="results-tensors-list"),
    pytest.param(lambda r: ["report", _results(r, lambda d: d["by_layer_pass"].append({"x": 1})), "--out", "rep"],
                 "by_layer_pass", id="results-group-fields"),
    # usage errors are one line too
    pytest.param(lambda r: ["train", "--epochs", "0"], "--epochs", id="usage-epochs-0"),
    pytest.param(lambda r: ["gen"], "--out", id="usage-gen-no-out"),
]


@pytest.mark.parametrize(("argv", "words"), CASES)
def test_bad_input_is_one_line_and_loses_nothing(tmp_path, monkeypatch, capsys, trace_dir, argv, words):
    monkeypatch.chdir(tmp_path)
    _scene(tmp_path, trace_dir)
    args = argv(tmp_path)
    before = _snapshot(tmp_path)
    try:
        rc = main(args)
    except SystemExit as exc:  # argparse usage errors
        rc = exc.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc not in (0, None), f"{args}: exit code {rc}"
    assert "Traceback" not in err
    assert len(lines) == 1, f"{args}: stderr is {len(lines)} lines:\n{err}"
    assert words in lines[0], f"{args}: {lines[0]!r} does not name {words!r}"
    after = _snapshot(tmp_path)
    for k, v in before.items():
        assert after.get(k, "gone") == v, f"{args}: {k} changed or vanished"
    left = [k for k in after if k not in before]
    assert not [k for k in left if ".tmp-" in k or ".lock" in k or ".old-" in k], left


def test_gen_replaces_its_own_output_and_force_replaces_a_user_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["gen", "--config", "tiny", "--out", "g"]) == 0
    first = _snapshot(tmp_path / "g")
    assert main(["gen", "--config", "tiny", "--out", "g"]) == 0  # a previous dlu gen output: replaced
    assert _snapshot(tmp_path / "g").keys() == first.keys()
    (tmp_path / "g" / "mine.txt").write_text("x")
    assert main(["gen", "--config", "tiny", "--out", "g"]) == 2  # not any more: it holds a user's file
    assert "mine.txt" in capsys.readouterr().err
    assert main(["gen", "--config", "tiny", "--out", "g", "--force"]) == 0
    assert not (tmp_path / "g" / "mine.txt").exists()


# ---------------------------------------------------------------------------------------
# Faults with real processes
# ---------------------------------------------------------------------------------------


def _run_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.strip()]


def test_sigint_is_one_line_exit_130_and_leaves_outputs_intact(tmp_path):
    # 6 s: past start-up even on a loaded machine (a SIGINT during the interpreter's own start-up,
    # before dlu.cli.main runs, is Python's; the training takes minutes)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "metrics.json").write_text('{"old": true}')
    p = subprocess.Popen([DLU, "train", "--model", "mlp", "--epochs", "200", "--quiet", "--no-plots", "--out",
                          str(tmp_path), "--name", "old", "--force"], stderr=subprocess.PIPE, text=True)
    time.sleep(6)  # imports done, training under way
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert _run_lines(err) == ["dlu train: interrupted"], err
    assert json.loads((tmp_path / "old" / "metrics.json").read_text()) == {"old": True}
    assert sorted(q.name for q in tmp_path.iterdir()) == ["old"]  # no temporaries, no lock


_PUBLISHER = """
import sys, os
from pathlib import Path
from reference.outputs import publish_dir, temp_dir_beside
final = Path(sys.argv[1])
k = 0
while True:
    k += 1
    tmp = temp_dir_beside(final)
    for i in range(20):  # a run of 20 files, the marker last
        (tmp / f"f{i}").write_bytes(os.urandom(2048))
    (tmp / "complete").write_text(str(k))
    publish_dir(tmp, final, replace=True)
"""


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "rename-aside"])
def test_sigkill_while_replacing_leaves_a_complete_run(tmp_path, exchange):
    """SIGKILL a process that replaces a run directory over and over, at random moments: the final
    path always holds one complete version, and the next run sweeps what the killed one left."""
    from reference.outputs import sweep_stale

    seed = 1606
    rng = random.Random(seed)
    final = tmp_path / "run"
    code = _PUBLISHER if exchange else _PUBLISHER.replace(
        "from reference.outputs import", "import reference.outputs as o; o._renameat2 = lambda *a: False\n"
                                         "from reference.outputs import")
    for trial in range(6):
        p = subprocess.Popen([sys.executable, "-c", code, str(final)], cwd=Path(__file__).parents[2])
        t0 = time.monotonic()
        while not final.exists() and time.monotonic() - t0 < 60:  # the first version is in place
            time.sleep(0.01)
        time.sleep(rng.random() * 0.5)  # then somewhere in the replacing loop
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
        sweep_stale(final)  # what the next run does first
        assert (final / "complete").is_file(), f"seed {seed} trial {trial}: no complete run at {final}"
        assert len(list(final.iterdir())) == 21, f"seed {seed} trial {trial}"
        assert [q.name for q in tmp_path.iterdir()] == ["run"], f"seed {seed} trial {trial}: left behind"


def test_sweep_restores_a_run_renamed_aside_by_a_killed_process(tmp_path):
    from reference.outputs import sweep_stale

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    old = tmp_path / f".run.old-{dead.pid}-abc"
    old.mkdir()
    (old / "metrics.json").write_text("{}")
    tmp = tmp_path / f".run.tmp-{dead.pid}-def"
    tmp.mkdir()
    lines = sweep_stale(tmp_path / "run")
    assert (tmp_path / "run" / "metrics.json").is_file()
    assert [q.name for q in tmp_path.iterdir()] == ["run"]
    assert len(lines) == 2 and any("restored" in ln for ln in lines)


def test_two_concurrent_runs_for_one_path_exactly_one_wins(tmp_path):
    cmd = [DLU, "train", *QUICK, "--out", str(tmp_path), "--name", "same"]
    ps = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in ps]
    codes = sorted(p.returncode for p in ps)
    assert codes[0] == 0 and codes[1] != 0, outs
    loser = outs[[p.returncode for p in ps].index(codes[1])][1]
    assert len(_run_lines(loser)) == 1 and "Traceback" not in loser, loser
    assert "same" in loser
    assert sorted(q.name for q in tmp_path.iterdir()) == ["same"]
    assert json.loads((tmp_path / "same" / "metrics.json").read_text())["data"]["train"] == 64


def test_limit_train_and_core_are_honoured_without_and_with_workers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "core.toml").write_text("[core]\nlanes = 4\n")
    assert main(["train", *QUICK, "--core", "core.toml", "--out", "runs", "--name", "one"]) == 0
    m = json.loads((tmp_path / "runs" / "one" / "metrics.json").read_text())
    assert m["data"]["train"] == 64 and m["train_config"]["core"] == "core.toml" and m["core"]["lanes"] == 4
    p = subprocess.run([DLU, "train", *QUICK, "--workers", "2", "--core", "core.toml", "--out", "runs", "--name",
                        "two"], capture_output=True, text=True, timeout=240, check=False, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    m = json.loads((tmp_path / "runs" / "two" / "metrics.json").read_text())
    assert m["data"]["train"] == 64 and m["train_config"]["core"] == "core.toml" and m["core"]["lanes"] == 4


def test_workers_bad_argument_fails_before_mpi_starts(tmp_path):
    t0 = time.monotonic()
    p = subprocess.run([DLU, "train", *QUICK, "--workers", "2", "--data", "mnist:/nonexistent", "--out",
                        str(tmp_path)], capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 2
    assert _run_lines(p.stderr) == ["dlu train: error: data: mnist directory /nonexistent does not exist"]
    assert "rank" not in p.stderr  # no rank started
    assert time.monotonic() - t0 < 60



def test_sigint_of_a_workers_run_is_one_line_and_130(tmp_path):
    # as a terminal's Ctrl-C: SIGINT to the whole process group (launcher, mpiexec, ranks)
    p = subprocess.Popen([DLU, "train", "--workers", "2", "--model", "mlp", "--epochs", "100", "--quiet", "--out",
                          str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    time.sleep(12)
    os.killpg(p.pid, signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert _run_lines(err) == ["dlu train: interrupted"], err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fields", [
    dict(lanes=128, widths=[8, 16, 32], tensor_ids=1024, hist_bins=256, counter_bits=48),
    dict(lanes=128, widths=[32], tensor_ids=1, hist_bins=4, counter_bits=16),
    dict(lanes=1, spad_words=1 << 16, spad_banks=8),
])
def test_the_largest_accepted_configs_have_a_register_map(fields):
    """The config bounds are what the register map can hold (its windows do not overlap)."""
    from hw.regmap import address_bits, register_map
    from reference.config import MAX_SPAD_BITS, CoreConfig

    cfg = CoreConfig(**fields)
    assert register_map(cfg) and address_bits(cfg) <= 32
    assert cfg.spad_banks * cfg.spad_words * cfg.word_bits <= MAX_SPAD_BITS


def test_one_past_each_bound_is_refused_naming_the_field():
    from reference.config import CoreConfig

    for fields, name in ((dict(lanes=256, widths=[32]), "lanes=256"), (dict(tensor_ids=1025), "tensor_ids=1025"),
                         (dict(lanes=2, spad_words=1 << 17), "spad_words=131072"),
                         (dict(lanes=8, spad_words=1 << 14, spad_banks=5), "spad_words=16384")):
        with pytest.raises(ValueError, match=name):
            CoreConfig(**fields)


def test_sigkill_during_train_force_leaves_the_old_or_the_new_run(tmp_path):
    seed = 16
    rng = random.Random(seed)
    old = tmp_path / "run"
    old.mkdir()
    (old / "metrics.json").write_text('{"old": true}')
    for trial in range(3):
        p = subprocess.Popen([DLU, "train", *QUICK, "--out", str(tmp_path), "--name", "run", "--force"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(2 + rng.random() * 6)  # before, during or after the run's rename: each must be safe
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
        m = json.loads((old / "metrics.json").read_text())  # complete: old marker, or a whole new run
        assert m == {"old": True} or m["final"]["test_acc"] is not None, f"seed {seed} trial {trial}"
    q = subprocess.run([DLU, "train", *QUICK, "--out", str(tmp_path), "--name", "run", "--force"],
                       capture_output=True, text=True, timeout=240, check=False)
    assert q.returncode == 0, q.stderr
    assert [x.name for x in tmp_path.iterdir()] == ["run"]  # the killed runs' temporaries are gone


@pytest.mark.slow
def test_a_hung_rank_ends_the_job_within_the_default_timeout(tmp_path):
    from reference.parallel_cli import DEFAULT_TIMEOUT_S

    t0 = time.monotonic()
    p = subprocess.run([DLU, "train", *QUICK, "--workers", "2", "--limit-train", "128", "--fail-rank", "1",
                        "--fail-mode", "hang", "--out", str(tmp_path)], capture_output=True, text=True,
                       timeout=DEFAULT_TIMEOUT_S + 120, check=False)
    took = time.monotonic() - t0
    assert p.returncode != 0 and "did not complete within 60 s" in p.stderr
    assert took < DEFAULT_TIMEOUT_S + 60, took
    assert list(tmp_path.iterdir()) == []


def _fsize_limit(nbytes: int):
    def set_limit() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return set_limit


def test_a_full_disk_is_one_line_and_keeps_the_old_run(tmp_path):
    """A file-size limit (RLIMIT_FSIZE: writes fail with EFBIG, as on a full disk) while --force
    replaces a run: one line naming the run directory, the old run intact, no temporary left."""
    old = tmp_path / "run"
    old.mkdir()
    (old / "metrics.json").write_text('{"old": true}')
    p = subprocess.run([DLU, "train", *QUICK, "--trace-iters", "0,1", "--out", str(tmp_path), "--name", "run",
                        "--force"], capture_output=True, text=True, timeout=240, check=False,
                       preexec_fn=_fsize_limit(20_000))
    assert p.returncode == 2, p.stderr
    assert _run_lines(p.stderr) == [f"dlu train: error: train: run directory {old}: could not be written: "
                                    "File too large"], p.stderr
    assert json.loads((old / "metrics.json").read_text()) == {"old": True}
    assert [x.name for x in tmp_path.iterdir()] == ["run"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a mode-0555 folder (the /proc cases cover root)")
def test_a_read_only_out_folder_is_refused_before_the_work(tmp_path, monkeypatch, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    monkeypatch.chdir(tmp_path)
    try:
        assert main(["train", *QUICK, "--out", "ro"]) == 2
        assert main(["bench", "--out", "ro/b.md"]) == 2
    finally:
        ro.chmod(0o755)
    lines = _run_lines(capsys.readouterr().err)
    assert len(lines) == 2 and all("cannot write in ro" in ln for ln in lines), lines
