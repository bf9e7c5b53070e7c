"""Claim 2 as a figure: FOMAML's gain over zero-shot, and MAMF's over FOMAML, against zero-shot
accuracy, one point per dataset with its seed-level 95 % interval (the estimates of
`mamf.report.claims.claim2`, themselves from `mamf.stats`). Where zero-shot spans chance to high
(the `emoji-levels` datasets), the claim predicts the first rising and the second falling."""

from __future__ import annotations

from pathlib import Path

from mamf.report.claims import LOW_ZERO_SHOT, Claim2
from mamf.report.common import colour
from mamf.report.figures import _whisker, pyplot, save


def zeroshot_figure(judged: list[Claim2], path: Path) -> Path:
    """Two panels over zero-shot accuracy: FOMAML − zero-shot and MAMF − FOMAML (paired)."""
    plt = pyplot()
    panels = [("FOMAML − zero-shot", "fomaml", lambda c: c.fomaml_gain),
              ("MAMF − FOMAML", "mamf", lambda c: c.mamf_gain)]
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.8), dpi=120, sharex=True)
    for ax, (title, method, get) in zip(axes, panels):
        points = sorted(((c.zero_shot, get(c), c.dataset) for c in judged if get(c) is not None),
                        key=lambda p: p[0])
        if points:
            xs = [p[0] for p in points]
            ax.errorbar(xs, [p[1].mean for p in points], yerr=[_whisker(p[1]) for p in points],
                        fmt="o-", capsize=3, color=colour(method), linewidth=0.8)
            for x, e, name in points:
                ax.annotate(name, (x, e.mean), textcoords="offset points", xytext=(4, 4),
                            fontsize=7)
        else:
            ax.text(0.5, 0.5, "no rows", transform=ax.transAxes, ha="center")
        ax.axhline(0, color="black", linewidth=0.8)
        ax.axvline(LOW_ZERO_SHOT, color="grey", linewidth=0.8, linestyle="dotted")
        ax.set_xlabel("zero-shot accuracy (dotted: the claim's 'low' bound)")
        ax.set_ylabel(f"{title} (paired, 95% CI over seeds)")
        ax.set_title(title)
    fig.suptitle("Claim 2: does bi-level optimisation pay only where zero-shot is high?",
                 fontsize=10)
    fig.tight_layout()
    return save(fig, plt, path)
