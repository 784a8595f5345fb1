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


#: the AR trainer's weighted sums of its per-head validation losses (the per-head series are plotted)
TOTALS = ("validation/loss", "fit/loss")


def _is_loss(key: str) -> bool:
    return key.startswith("loss") or key in ("mse", "reconstruction")


def plot_curves(runs: dict[str, Path], path: Path) -> None:
    """One panel per run: every `loss/*` (or `loss`/`mse`) series of its metrics.jsonl against the step,
    and its twins measured on held-out items (`validation/...`, dashed) and on as many training items
    (`fit/...`, dotted), where the run logged them: the gap between the two is memorising."""
    figure, axes = _pyplot().subplots(1, len(runs), figsize=(5 * len(runs), 3.6), squeeze=False)
    for axis, (title, metrics_path) in zip(axes[0], runs.items()):
        records = read_metrics(metrics_path)
        keys = list(dict.fromkeys(k for r in records for k in r
                                  if _is_loss(k) or (k.startswith(("validation/", "fit/")) and _is_loss(k.split("/", 1)[1])
                                                     and k not in TOTALS)))
        for key in keys:
            points = [(r["step"], r[key]) for r in records if key in r]
            measured = key.startswith(("validation/", "fit/"))  # EMA weights on held-out / training items
            axis.plot(*zip(*points), label=key, linestyle={"v": "--", "f": ":"}.get(key[0], "-"),
                      marker="o" if measured else None, markersize=3)
        axis.set(title=title, xlabel="step", yscale="log")
        axis.grid(alpha=0.3)
        if keys:
            axis.legend(fontsize=7)
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
