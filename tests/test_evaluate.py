"""experiments/evaluate.py on a real run: figures equal to the record, predictions, bad input."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
import zlib

import optuna
import pytest
import torch
from PIL import Image, ImageDraw

from mnist_lab.config.schema import REPO_ROOT
from mnist_lab.data.deskew import deskew
from mnist_lab.models.build import build_model
from mnist_lab.records.format import WEIGHTS_FILES
from mnist_lab.saved import predict
from mnist_lab.saved.evaluate import main
from mnist_lab.saved.predict import is_dark_on_light, predict_files, read_gray, to_mnist
from mnist_lab.saved.run import open_run
from mnist_lab.signals import Terminated

RUN_PY = REPO_ROOT / "experiments" / "run.py"
EVALUATE_PY = REPO_ROOT / "experiments" / "evaluate.py"
QUICK = ["epochs=1", "data.train_subset=2000", "trainer.device=cpu", "trainer.save_figures=false"]


def cli(args, cwd):
    proc = subprocess.run(
        [sys.executable, str(EVALUATE_PY), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    proc.output = proc.stdout + proc.stderr
    return proc


def train(root, *overrides):
    """One real run (1 epoch on 2,000 images, best and final weights) in `root`/run."""
    run_dir = root / "run"
    proc = subprocess.run(
        [
            sys.executable,
            str(RUN_PY),
            *QUICK,
            "trainer.save_weights=both",
            f"hydra.run.dir={run_dir}",
            *overrides,
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return run_dir


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run shared by the tests."""
    return train(tmp_path_factory.mktemp("trained"))


def copy_run(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    return run


def record(run_dir):
    return json.loads((run_dir / "result.json").read_text())


def figures(output, split):
    """(loss, acc) as measured and as recorded, from the printed table."""
    match = re.search(rf"^{split}\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)$", output, re.M)
    assert match, output
    return tuple(map(float, match.groups()))


def test_a_run_saves_weights_that_load_safely(trained):
    result = record(trained)
    assert result["status"] == "completed" and result["stopped_early"] is None
    # One epoch: the best epoch is the final one, so `both` writes one file and names it twice.
    assert result["weights"] == {"best": WEIGHTS_FILES["final"], "final": WEIGHTS_FILES["final"]}
    assert not (trained / WEIGHTS_FILES["best"]).exists()
    state = torch.load(trained / WEIGHTS_FILES["final"], weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    run = open_run(trained)
    assert (run.facts.in_features, run.facts.n_classes) == (784, 10)  # the run's dataset's
    model = build_model(run.cfg.model, torch.device("cpu"), 784, 10)
    model.load_state_dict(state)  # strict: every key and shape matches the recorded config


def test_evaluate_prints_the_records_figures_and_writes_its_files(trained, tmp_path):
    run = copy_run(trained, tmp_path)
    proc = cli([run], cwd=tmp_path)
    assert proc.returncode == 0, proc.output
    final = record(run)["final"]
    for split in ("val", "test"):
        loss, acc, rec_loss, rec_acc = figures(proc.stdout, split)
        assert f"{acc:.4f}" == f"{final[f'{split}/acc']:.4f}" == f"{rec_acc:.4f}"
        assert f"{loss:.4f}" == f"{final[f'{split}/loss']:.4f}" == f"{rec_loss:.4f}"
    assert "matches the record to 4 decimals" in proc.stdout
    assert "per-class test accuracy: 0: " in proc.stdout
    assert "test confusion matrix" in proc.stdout
    written = json.loads((run / "eval" / "metrics.json").read_text())
    assert written["metrics"]["test/acc"] == pytest.approx(final["test/acc"], abs=5e-5)
    assert sum(map(sum, written["confusion"])) == 10_000
    for name in ("confusion.png", "samples.png"):
        with Image.open(run / "eval" / name) as image:
            assert image.format == "PNG" and min(image.size) > 100


def draw(kind, dark_on_light, path, size=(80, 100)):
    paper, ink = (250, 15) if dark_on_light else (0, 255)
    image = Image.new("L", size, paper)
    pen = ImageDraw.Draw(image)
    if kind == "1":
        pen.line([(40, 12), (40, 88)], fill=ink, width=8)
    else:  # a 7: top bar and a diagonal
        pen.line([(15, 15), (65, 15)], fill=ink, width=8)
        pen.line([(65, 15), (30, 88)], fill=ink, width=8)
    image.save(path)
    return path


def test_predict_prints_one_digit_per_file_and_draws_what_the_model_saw(trained, tmp_path):
    run = copy_run(trained, tmp_path)
    folder = tmp_path / "digits"
    folder.mkdir()
    drawn = [
        draw("1", True, folder / "one_dark.png"),
        draw("7", False, folder / "seven_light.png"),
    ]
    jpeg = draw("7", True, tmp_path / "seven_dark.jpg")
    proc = cli([run, folder, jpeg, "--out", tmp_path / "out"], cwd=tmp_path)
    assert proc.returncode == 0, proc.output
    lines = [line for line in proc.stdout.splitlines() if not line.startswith("wrote ")]
    assert [line.split(": ")[0] for line in lines] == [str(p) for p in [*drawn, jpeg]]
    for line in lines:
        assert re.fullmatch(r".+: [0-9] \(\d{1,3}\.\d%\)", line), line
    with Image.open(tmp_path / "out" / "predictions.png") as image:
        assert image.format == "PNG"


def test_digits_are_prepared_like_mnist_whatever_their_polarity(tmp_path):
    dark = read_gray(draw("7", True, tmp_path / "dark.png"))
    light = read_gray(draw("7", False, tmp_path / "light.png"))
    assert is_dark_on_light(dark) and not is_dark_on_light(light)
    a, b = to_mnist(dark), to_mnist(light)
    assert a.shape == (28, 28) and torch.allclose(a, b, atol=0.05)
    assert a[0].max() == 0 and a[:, 0].max() == 0  # black background, digit inside the frame
    rows, cols = torch.nonzero(a > 0.1, as_tuple=True)
    assert max(rows.max() - rows.min(), cols.max() - cols.min()) + 1 <= 20  # fits 20x20
    mass = a.sum()
    centre = (
        (a.sum(1) * torch.arange(28)).sum() / mass,
        (a.sum(0) * torch.arange(28)).sum() / mass,
    )
    assert all(abs(c - 13.5) <= 1.0 for c in centre)


def test_best_trial_of_a_study(trained, tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    for value, run_dir in ((0.5, tmp_path / "worse"), (0.9, trained)):
        trial = study.ask()
        trial.set_user_attr("run_dir", str(run_dir))
        study.tell(trial, value)
    assert main(["study=s", f"storage={url}", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert f"study s: best trial 1, run folder {trained}" in out
    assert figures(out, "test")[1] == pytest.approx(record(trained)["final"]["test/acc"], abs=5e-5)


def break_record(run, change):
    result = record(run)
    change(result)
    (run / "result.json").write_text(json.dumps(result))


def huge_png(path, width=14_000, height=14_000):
    """A black PNG of width x height pixels: 0.2 MB on disk, 196 MB decoded (a decompression
    bomb, as Pillow calls it)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    packer, row = zlib.compressobj(9), bytes(width + 1)  # filter byte 0, then black pixels
    pixels = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels)
    path.write_bytes(png + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize(
    "case, message",
    [
        ("not_a_run", "is not a run folder (no result.json)"),
        ("half_written", "result.json is unreadable or half-written"),
        ("older_schema", "was written by a version that saved no weights"),
        ("no_weights", "the run saved no weights (status completed, trainer.save_weights=none)"),
        ("no_best", "no best weights (trainer.save_weights=final); it saved: final"),
        ("missing_file", "weights_final.pt: named by the record but missing"),
        ("shape_mismatch", "does not match the run's model config (size mismatch for 0.weight"),
        ("not_weights", "not a readable weights file"),
        ("unknown_key", "does not fit this version's schema or the overrides"),
        ("no_study", "no such study in sqlite:///"),
        ("no_database", "no such database file"),
        ("decompression_bomb", "bomb.png: too large to read safely (Image size (196000000 pixels)"),
        ("read_only_out", "Read-only file system"),
        ("out_is_a_file", "taken.txt: File exists"),
        ("out_below_a_file", "taken.txt/eval: Not a directory"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(trained, tmp_path, capsys, request, case, message):
    run = copy_run(trained, tmp_path)
    args = [str(run)]
    if case == "not_a_run":
        args = [str(tmp_path)]
    elif case == "half_written":
        (run / "result.json").write_text('{"status": "comp')
    elif case == "older_schema":
        break_record(run, lambda r: r.pop("weights"))
    elif case == "no_weights":

        def no_weights(r):
            r["weights"] = {"best": None, "final": None}
            r["config"]["trainer"]["save_weights"] = "none"

        break_record(run, no_weights)
    elif case == "no_best":

        def final_only(r):
            r["weights"]["best"] = None
            r["config"]["trainer"]["save_weights"] = "final"

        break_record(run, final_only)
        args += ["--weights", "best"]
    elif case == "missing_file":
        (run / WEIGHTS_FILES["final"]).unlink()
    elif case == "shape_mismatch":
        args.append("model.hidden_sizes=[64]")
    elif case == "not_weights":
        (run / WEIGHTS_FILES["final"]).write_bytes(b"not a zip file")
    elif case == "unknown_key":
        args.append("model.widht=3")
    elif case in ("no_study", "no_database"):
        url = f"sqlite:///{tmp_path}/optuna.db"
        if case == "no_study":
            optuna.create_study(study_name="other", storage=url)
        args = ["study=nope", f"storage={url}"]
    elif case == "decompression_bomb":
        args.append(str(huge_png(tmp_path / "bomb.png")))
    elif case == "read_only_out":
        args += ["--out", str(request.getfixturevalue("read_only_folder") / "eval")]
    elif case in ("out_is_a_file", "out_below_a_file"):
        taken = tmp_path / "taken.txt"
        taken.write_text("a file where the output folder should be\n")
        args += ["--out", str(taken if case == "out_is_a_file" else taken / "eval")]
    assert main(args) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith("evaluate: error: ") and err.count("\n") == 1, err
    assert message in err
    if case.startswith(("read_only", "out_")):  # refused before evaluating: nothing printed
        assert captured.out == "" and err.startswith("evaluate: error: cannot write ")


SAVED_RUN_TARGETS = {
    "model": lambda r: r["config"]["model"].update(_target_="this.s"),
    "optimizer": lambda r: r["config"]["optimizer"].update(_target_="this.SGD"),
    "dataset": lambda r: r["config"]["data"]["dataset"].update(_target_="this.d"),
    "free-form": lambda r: r["config"].update(preset={"note": {"_target_": "this.s"}}),
}


@pytest.mark.parametrize("where", [*SAVED_RUN_TARGETS, "override"])
def test_a_saved_run_naming_a_class_outside_the_allow_list_is_refused_unimported(
    trained, tmp_path, capsys, where
):
    """A run folder is data: a `_target_` that is not one of the project's models or dataset
    loaders or a torch.optim optimizer is refused in one line, and its module never imported
    (`this` prints the Zen of Python when imported: nothing here imports it otherwise)."""
    assert "this" not in sys.modules
    run = copy_run(trained, tmp_path)
    args = [str(run)]
    if where == "override":
        args.append("model._target_=this.s")
    else:
        break_record(run, SAVED_RUN_TARGETS[where])
    assert main(args) == 2
    captured = capsys.readouterr()
    assert "this" not in sys.modules and captured.out == ""
    assert captured.err.startswith("evaluate: error: ") and captured.err.count("\n") == 1
    assert "='this." in captured.err and "a saved run is data" in captured.err


def test_a_saved_run_naming_a_moved_model_path_still_loads(trained, tmp_path, capsys):
    """The allow-list knows the model paths of the layout before rooms (records.reading)."""
    run = copy_run(trained, tmp_path)
    break_record(run, lambda r: r["config"]["model"].update(_target_="mnist_lab.models.MLP"))
    assert main([str(run), "--out", str(tmp_path / "out")]) == 0, capsys.readouterr().err
    assert "matches the record to 4 decimals" in capsys.readouterr().out


def test_bad_input_from_the_command_line_has_no_traceback(tmp_path):
    proc = cli([tmp_path / "nothing"], cwd=tmp_path)
    assert proc.returncode == 2
    assert (
        proc.stderr
        == f"evaluate: error: {tmp_path / 'nothing'} is not a run folder (no result.json)\n"
    )


@pytest.mark.parametrize(
    ("error", "code", "name"),
    [(KeyboardInterrupt("SIGINT"), 130, "SIGINT"), (Terminated("SIGTERM"), 143, "SIGTERM")],
)
def test_a_stopped_evaluation_says_so_in_one_line(monkeypatch, capsys, tmp_path, error, code, name):
    def stopped(*args, **kwargs):
        raise error

    monkeypatch.setattr("mnist_lab.saved.evaluate.open_run", stopped)
    assert main([str(tmp_path)]) == code
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"evaluate: stopped by {name}"]


def test_a_deskewed_run_is_evaluated_and_predicted_on_deskewed_digits(tmp_path, monkeypatch):
    run = train(tmp_path, "data.deskew=true")
    proc = cli([run], cwd=tmp_path)
    assert proc.returncode == 0, proc.output
    assert "matches the record to 4 decimals" in proc.stdout
    # The same weights on undeskewed digits are another measurement, and say so.
    plain = cli([run, "data.deskew=false", "--out", tmp_path / "plain"], cwd=tmp_path)
    assert plain.returncode == 0, plain.output
    assert "differs from the record in" in plain.stdout
    # The user's digits are deskewed too, and the picture shows them as the model saw them.
    drawn = [draw("1", True, tmp_path / "one.png"), draw("7", False, tmp_path / "seven.png")]
    seen = {}
    monkeypatch.setattr(predict, "save_prediction_grid", lambda images, *_: seen.update(x=images))
    lines, _ = predict_files(open_run(run), drawn, tmp_path / "out")
    assert len(lines) == 2
    expected = deskew(torch.stack([to_mnist(read_gray(f)) for f in drawn]))
    assert torch.allclose(seen["x"], expected)
    assert not torch.allclose(expected[1], to_mnist(read_gray(drawn[1])), atol=0.05)  # the 7 leans
