"""What ``eval.run`` writes besides ``results.json``: ``results.csv``, ``report.md`` with the tables
and the paper's claims checked, ``plots/*.png`` and ``side_by_side.mp4``."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from lipsync.files import atomic_file, atomic_write_text

from .core import EVAL_CRF, Progress, TestClip

# The paper's claims, each as: (title, this method, compared with, metrics that decide it)
CLAIMS = [
    ("Better lip sync than a personalized 2D (Wav2Lip-style) model trained on the same video",
     "lipsync3d", "personalized_2d", ["lmd", "mouth_corr", "articulation", "sync_conf"]),
    ("Better image quality than the personalized 2D model", "lipsync3d", "personalized_2d",
     ["psnr", "ssim", "lpips", "sharpness", "teeth"]),
    ("Pose normalization helps (3D-normalized atlas vs 2D face crop)", "lipsync3d", "no_pose_norm",
     ["lmd", "mouth_corr", "psnr", "ssim", "lpips"]),
    ("Lighting normalization helps", "lipsync3d", "no_lighting_norm", ["psnr", "ssim", "lpips"]),
    ("Auto-regression makes the output temporally stable", "lipsync3d", "no_autoregression", ["flicker", "psnr"]),
    ("The mouth bank gives a sharper mouth that shows its teeth (vs the network's own mouth)", "lipsync3d",
     "no_mouth_bank", ["sharpness", "teeth", "articulation"]),
    ("The model moves the mouth with the speech (vs the mouth held still)", "lipsync3d", "frozen",
     ["lmd", "mouth_corr", "articulation", "sync_conf"]),
]


def _fmt(entry: dict | None, digits: int = 3) -> str:
    if not entry:
        return "—"
    if "unavailable" in entry:
        return "unavailable"
    v = entry["value"]
    ci = entry.get("ci95")
    s = f"{v:.{digits}f}"
    if ci and all(np.isfinite(ci)):
        s += f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
    return s


def _best(results: dict, metric: str, meta: dict) -> str | None:
    from .metrics import goodness

    vals = {m: goodness(r[metric]["value"], meta) for m, r in results.items()
            if m != "ground_truth" and metric in r and "value" in r[metric] and np.isfinite(r[metric]["value"])}
    if not vals:
        return None
    return max(vals, key=vals.get)


def table(results: dict, metrics: dict, labels: dict[str, str] | None = None) -> list[str]:
    names = [k for k in metrics if any(k in r for r in results.values())]
    from .metrics import direction

    lines = ["| method | " + " | ".join(f"{k} ({direction(metrics[k])})" for k in names) + " |",
             "|---|" + "---|" * len(names)]
    best = {k: _best(results, k, metrics[k]) for k in names}
    for m, row in results.items():
        cells = []
        for k in names:
            digits = 2 if metrics[k]["unit"] in ("dB", "frames") else 3
            c = _fmt(row.get(k), digits)
            cells.append(f"**{c}**" if best[k] == m else c)
        lines.append(f"| {(labels or {}).get(m, m)} | " + " | ".join(cells) + " |")
    return lines


def paired_difference(per_clip: dict, a: str, b: str, metric: str, *, seed: int = 0, n_boot: int = 2000,
                      transform=None):
    """Mean over clips of metric(a) - metric(b) (of ``transform`` of each value when given), with a
    95% bootstrap interval over clips."""
    ca, cb = per_clip.get(a, {}), per_clip.get(b, {})
    f = transform or (lambda v: v)
    diffs = [f(ca[c][metric]) - f(cb[c][metric]) for c in ca if c in cb and metric in ca[c] and metric in cb[c]
             and ca[c][metric] is not None and cb[c][metric] is not None
             and np.isfinite(ca[c][metric]) and np.isfinite(cb[c][metric])]
    if not diffs:
        return None
    d = np.asarray(diffs, float)
    if len(d) < 2:
        return {"mean": float(d.mean()), "ci95": None, "clips": 1}
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, len(d), (n_boot, len(d)))].mean(1)
    return {"mean": float(d.mean()), "ci95": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))],
            "clips": int(len(d))}


def check_claims(doc: dict) -> list[dict]:
    """Each claim with a verdict per metric (paired over test clips) and overall."""
    from .metrics import goodness

    out = []
    metrics = doc["metrics"]
    for title, a, b, keys in CLAIMS:
        rows, verdicts = [], []
        if a not in doc["per_clip"] or b not in doc["per_clip"]:
            out.append({"claim": title, "method": a, "baseline": b, "verdict": "not tested",
                        "why": f"{b if a in doc['per_clip'] else a} was not run", "metrics": []})
            continue
        for k in keys:
            if k not in metrics:
                continue
            # a metric with a target is compared by closeness to it: the difference is how much closer a is
            closeness = (lambda v, m=metrics[k]: goodness(v, m)) if metrics[k]["better"] == "target" else None
            d = paired_difference(doc["per_clip"], a, b, k, seed=doc["config"]["seed"], transform=closeness)
            if d is None:
                rows.append({"metric": k, "verdict": "unavailable"})
                continue
            sign = -1 if metrics[k]["better"] == "lower" else 1
            ci = d["ci95"]
            if ci is None:
                v = "inconclusive (one clip)"
            elif sign * ci[0] > 0 and sign * ci[1] > 0:
                v = "holds"
            elif sign * ci[0] < 0 and sign * ci[1] < 0:
                v = "does not hold"
            else:
                v = "inconclusive"
            verdicts.append(v)
            rows.append({"metric": k, "difference": d["mean"], "ci95": ci, "clips": d["clips"], "verdict": v})
        held, against = verdicts.count("holds"), verdicts.count("does not hold")
        if not verdicts:
            overall = "not tested"
        elif held and not against:
            overall = "holds"
        elif against and not held:
            overall = "does not hold"
        elif held and against:
            overall = "mixed"
        else:
            overall = "inconclusive"
        out.append({"claim": title, "method": a, "baseline": b, "verdict": overall, "metrics": rows})
    return out


# ---------------------------------------------------------------------------------------------
# plots

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> None:
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110)
    _plt().close(fig)


def _better_words(meta: dict) -> str:
    return f"closest to {meta['target']:g} is best" if meta["better"] == "target" else f"{meta['better']} is better"


def plot_metrics(doc: dict, path: Path) -> bool:
    plt = _plt()
    results, metrics = doc["results"], doc["metrics"]
    keys = [k for k in metrics if any("value" in r.get(k, {}) for r in results.values())]
    if not keys:
        return False
    cols = min(3, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.2 * rows), squeeze=False)
    for ax, k in zip(axes.flat, keys):
        names = [m for m in results if "value" in results[m].get(k, {})]
        vals = np.array([results[m][k]["value"] for m in names])
        lo = np.array([(results[m][k].get("ci95") or [v, v])[0] for m, v in zip(names, vals)])
        hi = np.array([(results[m][k].get("ci95") or [v, v])[1] for m, v in zip(names, vals)])
        colors = ["#888888" if m == "ground_truth" else "#d62728" if m == "lipsync3d" else "#1f77b4" for m in names]
        ax.bar(range(len(names)), vals, color=colors, capsize=3,
               yerr=[np.nan_to_num(np.clip(vals - lo, 0, None)), np.nan_to_num(np.clip(hi - vals, 0, None))])
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=40, ha="right", fontsize=7)
        ax.set_title(f"{k} ({_better_words(metrics[k])})", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    _save(fig, path)
    return True


def plot_series(series: dict[str, np.ndarray], fps: float, path: Path, *, title: str, ylabel: str,
                x: np.ndarray | None = None, xlabel: str = "seconds") -> bool:
    plt = _plt()
    if not series:
        return False
    fig, ax = plt.subplots(figsize=(9, 3.4))
    for name, y in series.items():
        xs = x if x is not None else np.arange(len(y)) / fps
        style = {"color": "black", "lw": 2.2} if name == "ground_truth" else {"lw": 1.2}
        ax.plot(xs[:len(y)], y, label=name, **style)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    _save(fig, path)
    return True


# ---------------------------------------------------------------------------------------------
# side-by-side video

MOUTH_ZOOM_SPAN = 1.7     # the zoomed mouth shows this many times the clip's widest mouth
MOUTH_ZOOM_SMOOTH = 5     # frames of the moving average that steadies the zoomed window


def mouth_windows(prepared: Path, count: int) -> np.ndarray:
    """float (count, 4) x0, y0, x1, y1 of a 2:1 window around the mouth in each of ``count`` output
    frames laid over the prepared clip's frames (``ping_pong`` order): centred on the lips,
    steadied over ``MOUTH_ZOOM_SMOOTH`` frames, one size for the whole clip. Untracked frames
    take the nearest tracked one's window."""
    from lipsync.prepared import open_prepared
    from lipsync.synthesis.schedule import ping_pong
    from lipsync.topology import load_topology

    lm = np.array(open_prepared(prepared).array("landmarks"))
    lips = lm[:, load_topology().regions["lips_outer"], :2]
    ok = np.isfinite(lips).all(axis=(1, 2))
    if not ok.any():
        return np.full((count, 4), np.nan)
    idx = np.flatnonzero(ok)
    near = idx[np.abs(np.arange(len(lm))[:, None] - idx[None]).argmin(1)]
    centre = lips[near].mean(1)
    k = min(MOUTH_ZOOM_SMOOTH, len(centre))
    pad = np.pad(centre, ((k // 2, k - 1 - k // 2), (0, 0)), mode="edge")
    centre = np.stack([np.convolve(pad[:, j], np.ones(k) / k, mode="valid") for j in range(2)], 1)
    half_w = 0.5 * MOUTH_ZOOM_SPAN * float(np.ptp(lips[ok][..., 0], axis=1).max())
    order = np.minimum(ping_pong(count, len(lm)), len(lm) - 1)
    c = centre[order]
    return np.concatenate([c - [half_w, half_w / 2], c + [half_w, half_w / 2]], 1)


def side_by_side(out: Path, videos: dict[str, list[Path]], audios: list[Path], fps: float, *,
                 mouths: list[Path] | None = None, tile_width: int = 360, progress: Progress | None = None) -> Path | None:
    """One video: the methods' results in a labelled grid, clip after clip, with the audio.

    ``mouths``: the prepared clip under each clip's videos; with it, each tile has the method's
    mouth zoomed below its frame (the same window for every method)."""
    import cv2

    from lipsync.media import FrameReader, load_audio, probe, write_wav
    from lipsync.media import VideoWriter

    names = list(videos)
    if not names:
        return None
    cols = int(np.ceil(np.sqrt(len(names))))
    rows = int(np.ceil(len(names) / cols))
    info0 = probe(videos[names[0]][0])
    tw = min(tile_width, info0.width) // 2 * 2
    th = int(round(info0.height * tw / info0.width / 2)) * 2
    mh = tw // 4 * 2 if mouths else 0  # the zoomed mouth, 2:1
    bar = 22
    cell = bar + th + mh
    width, height = cols * tw, rows * cell
    wav = out.with_name(".side_by_side_audio.wav")
    write_wav(wav, np.concatenate([load_audio(a) for a in audios]))
    try:
        with VideoWriter(out, width, height, fps, wav, crf=EVAL_CRF + 6) as writer:
            for c in range(len(audios)):
                readers = [iter(FrameReader(probe(videos[m][c]))) for m in names]
                count = min(probe(videos[m][c]).frames for m in names)
                windows = mouth_windows(mouths[c], count) if mouths else None
                for i in range(count):
                    canvas = np.full((height, width, 3), 20, np.uint8)
                    for j, (m, rd) in enumerate(zip(names, readers)):
                        frame = next(rd, None)
                        y, x = (j // cols) * cell, (j % cols) * tw
                        if frame is not None:
                            canvas[y + bar:y + bar + th, x:x + tw] = cv2.resize(frame, (tw, th), interpolation=cv2.INTER_AREA)
                            if windows is not None and np.isfinite(windows[i]).all():
                                canvas[y + bar + th:y + cell, x:x + tw] = _zoom(frame, windows[i], tw, mh)
                        cv2.putText(canvas, m, (x + 6, y + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
                    writer.write(canvas)
                if progress:
                    progress("side-by-side video", c + 1, len(audios))
    finally:
        wav.unlink(missing_ok=True)
    return out


def _zoom(frame: np.ndarray, window: np.ndarray, width: int, height: int) -> np.ndarray:
    """The window (x0, y0, x1, y1, sub-pixel) of the frame resampled to width x height (bicubic;
    outside the frame: border pixels repeated)."""
    import cv2

    x0, y0, x1, y1 = window
    m = np.array([[width / (x1 - x0), 0, -x0 * width / (x1 - x0)], [0, height / (y1 - y0), -y0 * height / (y1 - y0)]])
    return cv2.warpAffine(frame, m, (width, height), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)


# ---------------------------------------------------------------------------------------------

def write_csv(path: Path, doc: dict) -> None:
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["setting", "method", "metric", "value", "ci95_low", "ci95_high", "better", "unit", "unavailable"])
        for setting, res in (("self_reenactment", doc["results"]), ("cross_audio", doc.get("cross_audio") or {})):
            for m, row in res.items():
                for k, e in row.items():
                    meta = doc["metrics"].get(k, {})
                    ci = e.get("ci95") or [None, None]
                    w.writerow([setting, m, k, e.get("value"), ci[0], ci[1], meta.get("better"), meta.get("unit"),
                                e.get("unavailable", "")])


def reproduce_command(cfg: dict) -> str:
    """The ``eval.run`` command line that repeats a run of configuration ``cfg`` (a results
    document's ``config``): every option that changes what is measured and differs from its
    default (the methods, the metrics, the test clips, the cross-audio test, the seed, the mouth
    motion)."""
    from .config import DEFAULT_METHODS, EvalConfig
    from .metrics import available_metrics

    default = EvalConfig(video=Path("."), out=Path("."))
    parts = ["python -m eval.run", f"--video {cfg['video']}"]
    if cfg.get("test_clips"):
        parts.append(f"--test-clips {cfg['test_clips']}")
    else:
        if cfg.get("test_fraction", default.test_fraction) != default.test_fraction:
            parts.append(f"--test-fraction {cfg['test_fraction']:g}")
        if cfg.get("clip_seconds", default.clip_seconds) != default.clip_seconds:
            parts.append(f"--clip-seconds {cfg['clip_seconds']:g}")
    if cfg.get("max_test_clips") is not None:
        parts.append(f"--max-test-clips {cfg['max_test_clips']}")
    if cfg.get("methods") and list(cfg["methods"]) != list(DEFAULT_METHODS):
        parts.append("--methods " + " ".join(cfg["methods"]))
    if cfg.get("metrics") and list(cfg["metrics"]) != available_metrics():
        parts.append("--metrics " + " ".join(cfg["metrics"]))
    if cfg.get("cross_audio_test") is False:
        parts.append("--no-cross-audio")
    elif cfg.get("cross_audio"):
        parts.append("--cross-audio " + " ".join(cfg["cross_audio"]))
    if cfg.get("seed", default.seed) != default.seed:
        parts.append(f"--seed {cfg['seed']}")
    if cfg.get("mouth_motion", default.mouth_motion) != default.mouth_motion:
        parts.append(f"--mouth-motion {cfg['mouth_motion']:g}")
    parts.append(f"--preset {cfg['preset']} --out RESULTS")
    return " ".join(parts)


def write_report(path: Path, doc: dict, claims: list[dict], plots: list[str]) -> None:
    cfg, proto = doc["config"], doc["protocol"]
    L = ["# Evaluation report", ""]
    L += [f"Reproduce: `{reproduce_command(cfg)}` (seed {cfg['seed']}, git {doc.get('git_commit') or 'unknown'}).", ""]
    if proto.get("protocol") == "self-reenactment":
        L.append(f"Protocol: self-reenactment. Trained on the first {proto['train_frames']} frames of the video, tested on "
                 f"the last {proto['test_frames']} ({100 * proto['test_fraction']:.0f}%), cut into {len(doc['test_clips'])} "
                 f"clips of about {proto['clip_seconds']:g} s; each method re-makes each clip from its own audio inside its "
                 "own frames (head pose and lighting of the real frames), compared frame by frame with the real clip.")
    else:
        L.append(f"Protocol: trained on the whole video ({proto['train_frames']} frames); tested on "
                 f"{len(doc['test_clips'])} separate clips of the same speaker from {proto.get('test_clips_dir')}; each "
                 "method re-makes each clip from its own audio inside its own frames, compared frame by frame.")
    L += ["", "Values are means over test clips with 95% bootstrap intervals over clips (over frames when there is one "
          "clip). Best method per column in bold (ground truth excluded: it is the ceiling). ↑ higher is better, "
          "↓ lower is better, →1 closest to 1 is best (a ratio to the real video). In the claims, a metric with a "
          "target is compared by the distance from it (a positive difference: the first method is closer).", "", "## Self-reenactment", ""]
    labels = {k: f"{k} ({m['name']})" for k, m in doc["methods"].items() if m.get("name") not in (None, k)}
    L += table(doc["results"], doc["metrics"], labels)
    if doc.get("cross_audio"):
        n_cross = max((len(v) for v in doc.get("cross_audio_videos", {}).values()), default=0)
        L += ["", "## Cross-audio (speech that is not the speaker's; metrics that need no reference)", "",
              f"{n_cross} recordings of other voices, each driving the frames of another test clip; intervals are over "
              "those recordings. Here `ground_truth` is the real frames under speech they do not match: what "
              "unsynchronized real mouth motion scores on the sync measures.", ""]
        L += table(doc["cross_audio"], {k: v for k, v in doc["metrics"].items() if not v["needs_reference"]}, labels)
    L += ["", "## The paper's claims, checked here", "",
          "Each claim compares two methods clip by clip: the mean difference over test clips with a 95% bootstrap "
          "interval; it *holds* when the interval excludes zero in the claimed direction and *does not hold* when it "
          "excludes zero the other way.", ""]
    for c in claims:
        L.append(f"- **{c['claim']}** ({c['method']} vs {c['baseline']}): **{c['verdict']}**"
                 + (f" — {c['why']}" if c.get("why") else ""))
        for r in c["metrics"]:
            if "difference" in r:
                ci = r["ci95"]
                cis = f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else ""
                L.append(f"  - {r['metric']}: difference {r['difference']:+.4f}{cis} over {r['clips']} clips: {r['verdict']}")
            else:
                L.append(f"  - {r['metric']}: {r['verdict']}")
    L += ["", "## Metrics", ""]
    for k, m in doc["metrics"].items():
        L.append(f"- `{k}` ({m['unit']}; {_better_words(m)}{'; needs the real frames' if m['needs_reference'] else ''}): "
                 f"{m['description']}" + (f" Needs: {m['requires']}." if m.get("requires") else ""))
    if doc["unavailable_metrics"] or doc["unavailable_methods"]:
        L += ["", "## Unavailable here", ""]
        for k, why in doc["unavailable_metrics"].items():
            L.append(f"- metric `{k}`: {why}")
        for k, why in doc["unavailable_methods"].items():
            L.append(f"- method `{k}`: {why}")
    L += ["", "## Methods", ""]
    for k, m in doc["methods"].items():
        facts = ", ".join(f"{a} {m[a]}" for a in ("train_seconds", "steps", "cached") if a in m)
        L.append(f"- `{labels.get(k, k)}`: {m['description']}" + (f" ({facts})" if facts else ""))
    if plots:
        L += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    if (path.parent / "side_by_side.mp4").is_file():
        L += ["", "Side-by-side video of the methods: [side_by_side.mp4](side_by_side.mp4)."]
    t = doc.get("timings_s", {})
    L += ["", "## Timings", "", ", ".join(f"{k} {v:.0f} s" for k, v in t.items()) + f" on {doc['machine']['cpus']} CPU cores.", ""]
    atomic_write_text(path, "\n".join(L), what="report")


def _floats(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], float)


def write_outputs(out: Path, doc: dict, clips: list[TestClip], series: dict[str, dict] | None = None, *,
                  make_video: bool = True,
                  progress: Progress | None = None) -> None:
    series = series or {}
    plots_dir = out / "plots"
    plots_dir.mkdir(exist_ok=True)
    plots = []
    if plot_metrics(doc, plots_dir / "metrics.png"):
        plots.append("plots/metrics.png")
    mouth = {m: _floats(d["mouth"]) for m, d in series.items()}
    if series and "ground_truth" not in mouth:
        ref = next((d["reference_mouth"] for d in series.values() if "reference_mouth" in d), None)
        if ref is not None:
            mouth = {"ground_truth": _floats(ref), **mouth}
    if clips and plot_series(mouth, clips[0].fps, plots_dir / "mouth_opening.png", ylabel="mouth opening (gap / width)",
                             title=f"Mouth opening over time on {clips[0].name} (re-tracked from each output)"):
        plots.append("plots/mouth_opening.png")
    curves = {m: _floats(d["curve"]) for m, d in series.items() if d.get("curve")}
    if curves:
        lags = np.asarray(next(iter(series.values()))["lags"], float)
        if plot_series(curves, 1.0, plots_dir / "sync_curve.png", x=lags,
                       xlabel="audio lag (frames; > 0: the video lags the audio)", ylabel="audio-mouth similarity",
                       title=f"Sync expert's similarity by offset on {clips[0].name}"):
            plots.append("plots/sync_curve.png")
    claims = check_claims(doc)
    doc["claims"] = claims
    if make_video and clips:
        shown = clips[:3]
        videos = {m: [out / per[c.name]["video"] for c in shown] for m, per in doc["per_clip"].items()
                  if all(c.name in per for c in shown)}
        side_by_side_video = out / "side_by_side.mp4"
        if videos:
            side_by_side(side_by_side_video, videos, [c.audio for c in shown], shown[0].fps,
                         mouths=[c.prepared for c in shown], progress=progress)
    write_csv(out / "results.csv", doc)
    write_report(out / "report.md", doc, claims, plots)
