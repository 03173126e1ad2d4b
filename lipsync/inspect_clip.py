"""``lipsync inspect``: a short human summary of a prepared clip."""
from __future__ import annotations

from .prepared import PreparedClip


def summarize(clip: PreparedClip) -> str:
    m = clip.info
    pose, light = m.pose, m.lighting
    lines = [
        f"prepared clip   {clip.path}",
        f"source          {m.source}",
        f"video           {m.width}x{m.height}, {m.fps:g} fps, {m.frames} frames ({m.duration_s:.1f} s)",
        f"usable frames   {100 * m.valid_fraction:.1f}% ({m.usable_s:.1f} s; {m.interpolated_frames} interpolated, "
        f"{m.excluded_frames} excluded, of which {m.appearance_outliers} unlike the face; "
        f"tracked in {100 * m.tracked_fraction:.1f}%)",
        f"shots           {len(m.cuts) + 1} (cuts found in the footage: {len(m.cuts)})",
        f"face            {m.face_width_px:.0f} px wide; up to {m.faces_seen_max} face(s) seen",
        f"audio sync      {_sync_line(m.sync)}",
        f"reference frame {m.reference_frame} (t = {m.reference_frame / m.fps:.2f} s)",
        "head pose       yaw {:+.1f}..{:+.1f} deg, pitch {:+.1f}..{:+.1f} deg, roll {:+.1f}..{:+.1f} deg".format(
            *pose["yaw_deg"], *pose["pitch_deg"], *pose["roll_deg"]),
        f"atlas           {m.atlas_size}x{m.atlas_size} texels",
        "lighting        skin brightness change over time (std) {:.3f} -> {:.3f}; residual vs reference {:.3f} -> {:.3f}; "
        "left/right asymmetry {:.3f} -> {:.3f} (log units, before -> after)".format(
            light["temporal_std_before"], light["temporal_std_after"], light["residual_before"],
            light["residual_after"], light["asymmetry_before"], light["asymmetry_after"]),
        "time            {:.1f} s ({:.0f} frames/s)".format(m.timings_s["total"], m.frames_per_second or 0),
    ]
    for w in m.warnings:
        lines.append(f"warning         {w}")
    return "\n".join(lines)


def _sync_line(sync: dict) -> str:
    if sync.get("applied"):
        offs = [sh[2] for sh in sync.get("shots", [])] or [sync["a_s"]]
        return (f"re-aligned: the sound was {min(offs):+.2f} to {max(offs):+.2f} s off the lips "
                f"(speech/lip correlation {sync['correlation_before']:.2f} -> {sync['correlation_after']:.2f})")
    if sync.get("correlation_before") is None:
        return "not measured"
    return (f"kept as it is (speech/lip correlation {sync['correlation_before']:.2f}; "
            f"{sync.get('evidence_s', 0):.0f} s of evidence)")
