"""The page: ``build_app(cfg) -> gr.Blocks``. Layout and wiring only; the work is in ``handlers``
and ``compare``. Heavy jobs share one queue slot (``concurrency_id="heavy"``): on a CPU two at
once would only make both slow."""
from __future__ import annotations

from functools import partial

import gradio as gr

from . import compare, handlers, jobs, live
from .config import EXAMPLE_TEXT, DemoConfig, default_config
from .web import session_token

CSS = """
.train-bar { height: 14px; border-radius: 7px; background: var(--neutral-200); overflow: hidden; }
.train-bar > div { height: 100%; background: var(--color-accent); transition: width 0.5s; }
#intro p { margin: 0.2em 0; }
"""
HEAVY = {"concurrency_limit": 1, "concurrency_id": "heavy"}
LIVE_SCRIPT = '<script src="/live/live.js" defer></script>'  # the Live tab's client (lipsync.live_server)

INTRO = """# lipsync: your own audio-driven 3D talking face
From one video of a person talking: track a 3D face mesh, normalize pose and lighting, train a
personalized audio-to-face model, then make that person say new words (after *LipSync3D*, Lahiri et
al., CVPR 2021). Everything here runs on this machine's CPU. New here? **Start here** runs a bundled
example end to end; the other tabs do the same with your own video."""


def launch_kwargs(cfg: DemoConfig) -> dict:
    """Settings for ``app.launch``: the security middleware (``demo.web``), the folders whose
    files may be served (sessions and the example, nothing else of the work folder), the upload cap."""
    from starlette.middleware import Middleware

    from .web import DemoSecurity

    return {"allowed_paths": [str(cfg.root / "sessions"), str(cfg.root / "example")],
            "max_file_size": int(cfg.limits.video_mb * 1e6), "css": CSS, "show_error": True, "ssr_mode": False,
            "head": LIVE_SCRIPT,
            "app_kwargs": {"middleware": [Middleware(DemoSecurity, secure_cookies=cfg.secure_cookies,
                                                     session_days=jobs.SESSION_MAX_AGE_DAYS)],
                           "routes": live.live_routes(cfg)}}


def build_app(cfg: DemoConfig | None = None) -> gr.Blocks:
    cfg = cfg or default_config()
    cfg.root.mkdir(parents=True, exist_ok=True)
    bind = lambda fn: partial(fn, cfg)  # noqa: E731

    with gr.Blocks(title="lipsync demo", analytics_enabled=False, delete_cache=(3600, 86400)) as app:
        session = gr.State()
        gr.Markdown(INTRO, elem_id="intro")
        gr.Markdown(f"**Limits:** {cfg.limits.describe()} Your uploads and models are visible only to this browser.")
        with gr.Row():
            speaker = gr.Dropdown(label="Speaker", choices=[], interactive=True, scale=2, elem_id="speaker")
            model = gr.Dropdown(label="Model (for Drive it and Compare)", choices=[], interactive=True, scale=1,
                                elem_id="model")

        with gr.Tabs():
            with gr.Tab("Start here", id="example", elem_id="tab-example"):
                gr.Markdown("The example: GRID speaker s1 (CC BY 4.0). **Run the example** drives the model shipped "
                            "with this demo, trained on 3 minutes of the speaker, over a 3-second clip it never saw. "
                            "**Train it yourself** trains a model on those 3 seconds alone (a few minutes, and a "
                            "rough result: 1-5 minutes of video works best).")
                with gr.Row():
                    ex_text = gr.Textbox(EXAMPLE_TEXT, label="Sentence to speak (offline TTS)", scale=3)
                    with gr.Column(scale=1):
                        ex_run = gr.Button("Run the example", variant="primary", elem_id="run-example")
                        ex_train = gr.Button("Train it yourself on the example", elem_id="train-example")
                with gr.Row():
                    ex_video = gr.Video(label="Result", elem_id="example-video", interactive=False)
                    ex_mesh = gr.Model3D(label="Animated 3D face (.glb)", interactive=False)
                ex_status = gr.Markdown()
                ex_files = gr.File(label="Downloads: video, 3D face, blendshape weights", file_count="multiple",
                                   interactive=False)

            with gr.Tab("Your speaker", id="speaker", elem_id="tab-speaker"):
                gr.Markdown("Upload or record 1-5 minutes of one person talking towards the camera, with sound.")
                with gr.Row():
                    up_video = gr.Video(label="Video of the speaker", sources=["upload", "webcam"], elem_id="upload-video")
                    with gr.Column():
                        up_name = gr.Textbox(label="Name (optional)", placeholder="e.g. Ada, kitchen take")
                        up_run = gr.Button("Preprocess", variant="primary", elem_id="preprocess")
                        sp_summary = gr.Markdown(elem_id="speaker-summary")
                with gr.Row():
                    pv_mesh = gr.Image(label="Tracked mesh on the reference frame", type="filepath")
                    with gr.Column():
                        pv_raw = gr.Image(label="Texture atlas before lighting normalization", type="filepath")
                        pv_norm = gr.Image(label="… and after", type="filepath")
                pv_pose = gr.Image(label="Head pose and mouth opening over time", type="filepath")
                pv_light = gr.Image(label="Lighting removed from each frame", type="filepath")

            with gr.Tab("Train", id="train", elem_id="tab-train"):
                gr.Markdown("**quick**: 2400 steps, about 5-10 minutes on a CPU; **full**: 30000 steps, for a GPU. "
                            "Cancel keeps a checkpoint; **Train** then resumes it. Models stay with the speaker.")
                with gr.Row():
                    preset = gr.Radio([("quick", "quick"), ("full", "full")], value="quick", label="Preset")
                    train_btn = gr.Button("Train", variant="primary", elem_id="train")
                    cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel")
                train_status = gr.HTML(elem_id="train-status")
                curve = gr.Plot(label="Loss", elem_id="loss-curve")

            with gr.Tab("Drive it", id="drive", elem_id="tab-drive"):
                with gr.Row():
                    with gr.Column():
                        source = gr.Radio([("Audio (upload or record)", "audio"), ("Text (offline TTS)", "text")],
                                          value="audio", label="Speech")
                        audio = gr.Audio(label="Speech audio", sources=["upload", "microphone"], type="filepath")
                        text = gr.Textbox(label="Text", placeholder="Type what the speaker should say")
                        target_kind = gr.Radio([("The training video", "training"), ("Another video or a photo", "upload")],
                                               value="training", label="Put the face into")
                        target = gr.File(label="Target video or photo of the same person",
                                         file_types=["video", "image"], type="filepath")
                        motion = gr.Slider(0.5, 1.5, value=1.0, step=0.05, label="Mouth motion",
                                           info="1 = as much as the speaker moves it in the training video; "
                                                "lower is subtler, higher more pronounced", elem_id="mouth-motion")
                        drive_btn = gr.Button("Synthesize", variant="primary", elem_id="synthesize")
                    with gr.Column():
                        out_video = gr.Video(label="Result", interactive=False, elem_id="drive-video")
                        out_mesh = gr.Model3D(label="Animated 3D face (.glb)", interactive=False)
                        out_status = gr.Markdown()
                        out_files = gr.File(label="Downloads: video, 3D face, blendshape weights",
                                            file_count="multiple", interactive=False)

            with gr.Tab("Compare", id="compare", elem_id="tab-compare"):
                gr.Markdown("The same audio through this model and baselines from the evaluation suite, on the "
                            f"last {compare.TEST_SECONDS:g} s of the training video, played in sync in one grid. "
                            "Baselines that train take minutes each with the quick preset (cached afterwards).")
                with gr.Row():
                    with gr.Column():
                        baselines = gr.CheckboxGroup([(v, k) for k, v in compare.BASELINES.items()],
                                                     value=compare.DEFAULT_BASELINES, label="Compare with")
                        base_preset = gr.Radio(["tiny", "quick", "full"], value="quick",
                                               label="Train baselines with (tiny: seconds, a smoke test only)")
                        cmp_mode = gr.Radio([("The clip's own audio (metrics against the real footage)", "self"),
                                             ("Audio (upload or record)", "audio"), ("Text (offline TTS)", "text")],
                                            value="self", label="Driving audio")
                        cmp_audio = gr.Audio(label="Speech audio", sources=["upload", "microphone"], type="filepath")
                        cmp_text = gr.Textbox(label="Text")
                        external = gr.File(label="Result of another system (same clip, same audio)",
                                           file_types=["video"], type="filepath")
                        cmp_btn = gr.Button("Compare", variant="primary", elem_id="compare-run")
                    with gr.Column():
                        grid = gr.Video(label="Side by side", interactive=False, elem_id="compare-video")
                        cmp_notes = gr.Markdown()
                table = gr.Dataframe(label="Metrics (↑ higher is better, ↓ lower is better, →1 closest to 1 is best)", interactive=False)
                cmp_files = gr.File(label="Downloads: grid, test clip, each method's video", file_count="multiple",
                                    interactive=False)

            with gr.Tab("Live", id="live", elem_id="tab-live"):
                gr.Markdown("Talk to the selected speaker's model: it answers with the speaker's face, live, as you "
                            "speak into the microphone (or as the offline TTS speaks what you type). The browser "
                            "asks for the microphone the first time; the page shows the latency from your speech "
                            f"to the picture and the frames received. At most {cfg.limits.live_sessions} live "
                            "streams run at once on this machine.")
                with gr.Row():
                    live_kind = gr.Radio([("The training video", "training"), ("Another video or a photo", "upload")],
                                         value="training", label="Put the face into")
                    live_target = gr.File(label="Target video or photo of the same person", file_types=["video", "image"],
                                          type="filepath")
                live_ready = gr.Button("Get ready", variant="primary", elem_id="live-ready")
                live_panel = gr.HTML(live.idle_panel(), elem_id="live-html")

        # wiring
        overview = [sp_summary, pv_mesh, pv_raw, pv_norm, pv_pose, pv_light]
        training = [curve, train_status]
        refresh_training = dict(fn=bind(handlers.refresh_training), inputs=[session, preset], outputs=training)
        show_current = dict(fn=bind(handlers.select_current), inputs=[session, preset],
                            outputs=[session, model, *overview, *training])

        def on_load(request: gr.Request):
            """The visitor's session from their cookie (``demo.web``), which page scripts cannot read."""
            return handlers.start(cfg, session_token(request.headers))

        app.load(on_load, outputs=[session, speaker, model, ex_video, ex_mesh, ex_files, ex_status]).then(**show_current)
        ex_run.click(bind(handlers.run_example), inputs=[session, ex_text],
                     outputs=[session, speaker, model, ex_video, ex_mesh, ex_files, ex_status], **HEAVY,
                     api_name="run_example").then(**show_current)
        ex_train.click(bind(handlers.train_example), inputs=[session, ex_text],
                       outputs=[session, speaker, model, ex_video, ex_mesh, ex_files, ex_status], **HEAVY,
                       api_name="train_example").then(**show_current)
        up_run.click(bind(handlers.preprocess_speaker), inputs=[session, up_video, up_name],
                     outputs=[session, speaker, model, *overview], **HEAVY, api_name="preprocess").then(**refresh_training)
        speaker.input(bind(handlers.select_speaker), inputs=[session, speaker, preset],
                      outputs=[session, model, *overview, *training])
        preset.change(**refresh_training)
        train_btn.click(bind(handlers.train_speaker), inputs=[session, preset], outputs=[curve, train_status, model],
                        show_progress="minimal", **HEAVY, api_name="train")
        cancel_btn.click(bind(handlers.cancel_training), inputs=[session, preset], outputs=[train_status], queue=False)
        drive_btn.click(bind(handlers.synthesize_speech),
                        inputs=[session, model, source, audio, text, target_kind, target, motion],
                        outputs=[out_video, out_mesh, out_files, out_status], **HEAVY, api_name="synthesize")
        live_ready.click(bind(live.get_ready), inputs=[session, model, live_kind, live_target], outputs=[live_panel], **HEAVY,
                         api_name="live")
        cmp_btn.click(bind(compare.run_comparison),
                      inputs=[session, model, baselines, cmp_mode, cmp_audio, cmp_text, external, base_preset],
                      outputs=[grid, table, cmp_notes, cmp_files], **HEAVY, api_name="compare")
    return app
