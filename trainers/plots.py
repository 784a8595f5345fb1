"""Training curves as a PNG (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

from trainers.common import read_metrics


def _pyplot():
    """matplotlib.pyplot on the headless Agg backend (imported only when a plot is drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> None:
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    _pyplot().close(figure)


def plot_curves(runs: dict[str, Path], path: Path) -> None:
    """One panel per run: every `loss/*` (or `loss`/`mse`) series of its metrics.jsonl against the step."""
    figure, axes = _pyplot().subplots(1, len(runs), figsize=(5 * len(runs), 3.6), squeeze=False)
    for axis, (title, metrics_path) in zip(axes[0], runs.items()):
        records = read_metrics(metrics_path)
        keys = [k for k in (records[0] if records else {}) if k.startswith("loss") or k in ("mse", "reconstruction")]
        for key in keys:
            axis.plot([r["step"] for r in records], [r[key] for r in records], label=key)
        axis.set(title=title, xlabel="step", yscale="log")
        axis.grid(alpha=0.3)
        if keys:
            axis.legend()
    _save(figure, path)


def plot_accuracy_vs_steps(scores: dict[int, dict], path: Path, title: str = "") -> None:
    """Prompt-following (colour, shape, position, all three) against the number of sampling steps."""
    steps = sorted(scores)
    figure, axis = _pyplot().subplots(figsize=(5, 3.6))
    for key, label in (("color", "colour"), ("shape", "shape"), ("position", "position"), ("all", "all three")):
        axis.plot(steps, [100 * scores[s][key] for s in steps], marker="o", label=label,
                  linewidth=2.5 if key == "all" else 1.2)
    axis.set(xscale="log", xlabel="ODE steps per token", ylabel="accuracy (%)", ylim=(0, 102), title=title)
    axis.set_xticks(steps, [str(s) for s in steps])
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right")
    _save(figure, path)
