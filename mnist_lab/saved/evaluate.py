"""Evaluate a saved run, or classify the user's own images with it.

    python experiments/evaluate.py RUN_DIR [key=value ...] [--weights best|final] [--out DIR]
    python experiments/evaluate.py study=NAME [storage=URL] [key=value ...]
    python experiments/evaluate.py RUN_DIR digit.png more.jpg folder/ ...

Without images: the model is rebuilt from the run's recorded config with its saved weights, and
its loss and accuracy on the validation and test sets are printed next to the record's figures
(the same data and weights give the same numbers), with per-class test accuracy and the confusion
matrix; `confusion.png`, `samples.png` and `metrics.json` go to `--out` (default RUN_DIR/eval).
With images (files or folders of PNG/JPEG): one line per image, its predicted class and
probability, and `predictions.png` showing the inputs as the model saw them. The output folder is
checked before anything is evaluated.

`study=NAME` evaluates the best trial of an Optuna study (best by the study's objective, the
validation accuracy) through its `run_dir` attribute; `storage` defaults to the one the project's
search configs use. Bad input is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

from mnist_lab import signals
from mnist_lab.config.schema import REPO_ROOT
from mnist_lab.data.dataset import DataTensors
from mnist_lab.errors import LabError, OutputError
from mnist_lab.job.build import build
from mnist_lab.job.figures import (
    confusion_matrix,
    predictions,
    save_confusion,
    save_sample_grid,
)
from mnist_lab.records.files import atomic_write_text
from mnist_lab.saved.run import SavedRun, best_trial_run_dir, load_weights, open_run
from mnist_lab.train.evaluation import evaluate

# The storage the project's studies use by default (one source: the search config).
SEARCH_CONFIG = REPO_ROOT / "conf" / "hparams_search" / "mlp_optuna.yaml"
EVAL_DIR = "eval"


def default_storage() -> str:
    return OmegaConf.load(SEARCH_CONFIG).hydra.sweeper.storage


@dataclass
class Evaluation:
    metrics: dict  # val/loss, val/acc, test/loss, test/acc: what the run's epochs measure
    confusion: torch.Tensor  # counts[true, predicted] on the test set
    data: DataTensors
    test_pred: torch.Tensor

    @property
    def per_class(self) -> list[float]:
        """Test accuracy of each class."""
        return (self.confusion.diag() / self.confusion.sum(1).clamp_min(1)).tolist()


def measure(run: SavedRun) -> Evaluation:
    """Loss and accuracy as the run measured them: its data, model, loss and batch size."""
    built = build(run.cfg)
    learner, data = built.member.learner, built.data
    load_weights(run, learner.model, data.test_x.device)
    pred = predictions(learner.model, data)
    return Evaluation(
        metrics=evaluate(learner.model, learner.eval_loss, data, run.cfg.data.eval_batch_size),
        confusion=confusion_matrix(data.test_y.cpu(), pred, data.facts.n_classes),
        data=data,
        test_pred=pred,
    )


def report(run: SavedRun, result: Evaluation) -> str:
    recorded = run.recorded()
    lines = [
        f"run {run.run_dir}: its {run.which} weights (epoch {run.epoch}, {run.weights.name}), "
        f"evaluated on {result.data.test_x.device}",
        f"{'':6}{'loss':>8}{'acc':>8}    record:{'loss':>8}{'acc':>8}",
    ]
    for split in ("val", "test"):
        loss, acc = result.metrics[f"{split}/loss"], result.metrics[f"{split}/acc"]
        rec = (recorded[f"{split}/loss"], recorded[f"{split}/acc"])
        shown = "".join(f"{v:>8.4f}" if v is not None else f"{'-':>8}" for v in rec)
        lines.append(f"{split:6}{loss:>8.4f}{acc:>8.4f}{'':11}{shown}")
    pairs = [(k, result.metrics[k], v) for k, v in recorded.items() if v is not None]
    differ = [k for k, got, want in pairs if f"{got:.4f}" != f"{want:.4f}"]
    if pairs:
        lines.append(
            f"differs from the record in {', '.join(differ)} (other data, device or version?)"
            if differ
            else "matches the record to 4 decimals"
        )
    names = result.data.facts.class_names
    per_class = "  ".join(f"{n}: {a:.2%}" for n, a in zip(names, result.per_class, strict=True))
    lines.append(f"per-class test accuracy: {per_class}")
    lines.append("test confusion matrix (rows: true class, columns: predicted):")
    cell = max(6, *(len(n) + 1 for n in names))
    lines.append(" " * cell + "".join(f"{n:>{cell}}" for n in names))
    for name, row in zip(names, result.confusion.tolist(), strict=True):
        lines.append(f"{name:>{cell}}" + "".join(f"{v:>{cell}}" for v in row))
    return "\n".join(lines)


def writable_folder(out: Path) -> None:
    """`out` made if needed and written to once (a temp file, removed), so a folder that cannot
    take the outputs is refused before the evaluation runs, not after it printed."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise OutputError(f"cannot write {out}: {e.strerror or e}") from None


def write_outputs(run: SavedRun, result: Evaluation, out: Path) -> list[Path]:
    """confusion.png, samples.png (as the run draws them) and metrics.json, each atomically."""
    save_confusion(result.confusion, result.data.facts.class_names, out / "confusion.png")
    save_sample_grid(result.data, result.test_pred, out / "samples.png")
    summary = {
        "run_dir": str(run.run_dir),
        "weights": run.weights.name,
        "epoch": run.epoch,
        "metrics": result.metrics,
        "per_class_test_acc": result.per_class,
        "confusion": result.confusion.tolist(),
        "config": OmegaConf.to_container(run.cfg, enum_to_str=True),
    }
    atomic_write_text(out / "metrics.json", json.dumps(summary, indent=2) + "\n")
    return [out / "confusion.png", out / "samples.png", out / "metrics.json"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other bad input
        raise LabError(message)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(
        prog="evaluate.py",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:5]),
    )
    parser.add_argument("args", nargs="*", help="RUN_DIR or study=NAME, key=value, images")
    parser.add_argument("--weights", choices=("best", "final"), help="default: the record's best")
    parser.add_argument("--out", type=Path, help=f"output folder (default RUN_DIR/{EVAL_DIR})")
    args = parser.parse_intermixed_args(argv)
    args.study = args.storage = args.run_dir = None
    args.overrides, args.images = [], []
    for token in args.args:
        key, eq, value = token.partition("=")
        if eq and key in ("study", "storage"):
            setattr(args, key, value)
        elif eq and not Path(token).exists():
            args.overrides.append(token)
        elif args.run_dir is None and args.study is None:
            args.run_dir = Path(token)
        else:
            args.images.append(Path(token))
    if args.run_dir is not None and args.study is not None:  # study= came after RUN_DIR
        args.images.insert(0, args.run_dir)
        args.run_dir = None
    if args.run_dir is None and args.study is None:
        raise LabError("give a run folder or study=NAME")
    if args.storage is not None and args.study is None:
        raise LabError("storage= goes with study=NAME")
    return args


def main(argv: list[str] | None = None) -> int:
    signals.install()
    try:
        args = parse(argv)
        run_dir = args.run_dir
        if args.study is not None:
            storage = args.storage or default_storage()
            run_dir, number = best_trial_run_dir(args.study, storage)
            print(f"study {args.study}: best trial {number}, run folder {run_dir}")
        run = open_run(run_dir, args.overrides, args.weights)
        out = args.out or run.run_dir / EVAL_DIR
        writable_folder(out)
        if args.images:
            from mnist_lab.saved.predict import predict_files

            lines, picture = predict_files(run, args.images, out)
            print("\n".join(lines))
            print(f"wrote {picture}")
            return 0
        result = measure(run)
        written = write_outputs(run, result, out)  # before printing: a closed pipe loses nothing
        print(report(run, result))
        print("wrote " + ", ".join(str(p) for p in written))
    except LabError as e:
        print(f"evaluate: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `evaluate.py RUN | head`
        return signals.stdout_closed()
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: one line and 130 / 143, as run.py
        _, code = signals.stop_status(e)
        print(f"evaluate: stopped by {'SIGTERM' if code == 143 else 'SIGINT'}", file=sys.stderr)
        return code
    return 0
