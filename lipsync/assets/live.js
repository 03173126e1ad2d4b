// The live page's client of protocol lipsync-live/1 (see lipsync/live_server.py): microphone or
// spoken text in, the talking face out, with the measured latency and frame counts shown.
// Works inside any page holding the panel markup (#live-panel: the demo's Live tab, or the
// /live page of `lipsync serve`); event handlers are delegated, so the panel may appear later.
(() => {
  const CHUNK_S = 0.02;  // microphone audio goes out in 20 ms messages
  const MIC_RATE = 16000;  // the model's rate: 16-bit samples at 16 kHz are 256 kbit/s on the wire
  let live = null;       // the running stream
  let playback = null;   // one AudioContext plays every spoken text's sound
  const $ = (id) => document.getElementById(id);

  function say(message, kind) {
    const box = $("live-message");
    if (box) { box.textContent = message; box.dataset.kind = kind || "info"; }
  }

  function percentile(values, q) {
    if (!values.length) return NaN;
    const s = values.slice().sort((a, b) => a - b);
    return s[Math.min(s.length - 1, Math.floor(q * s.length))];
  }

  function showStats() {
    if (!live || !$("live-stats")) return;
    const lat = live.latencies;
    const spoken = live.pc ? Math.max(0, (performance.now() - live.t0) / 1000 - live.ready.lookahead_ms / 1000) : live.sentSamples / live.rate;
    const expected = live.ready ? Math.floor(spoken * live.ready.fps) : 0;
    const parts = [`frames ${live.frames}` + (live.mode === "mic" ? ` of ${expected} spoken` : ""),
                   `late ${live.late}`];
    if (lat.length) {
      const what = live.pc ? "latency (audio in to frame out, on the server)" : "latency (speech to picture)";
      parts.push(`${what} ${Math.round(lat[lat.length - 1])} ms, p50 ${Math.round(percentile(lat, 0.5))}, ` +
                 `p95 ${Math.round(percentile(lat, 0.95))}`);
    }
    if (live.ready) parts.push(`model lookahead ${Math.round(live.ready.lookahead_ms)} ms`);
    $("live-stats").textContent = parts.join(" · ");
    const el = $("live-stats");
    el.dataset.frames = String(live.frames);
    el.dataset.expected = String(expected);
    el.dataset.latencyP50 = String(percentile(lat, 0.5));
  }

  function stop(message) {
    const s = live;
    live = null;
    if (!s) return;
    if (s.timer) clearInterval(s.timer);
    if (s.stream) s.stream.getTracks().forEach((t) => t.stop());
    if (s.ws && s.ws.readyState === WebSocket.OPEN) {
      try { s.ws.send(JSON.stringify({ type: "end" })); } catch (e) { /* closing */ }
    }
    if (s.channel && s.channel.readyState === "open") {
      try { s.channel.send(JSON.stringify({ type: "end" })); } catch (e) { /* closing */ }
    }
    if (s.pc) setTimeout(() => s.pc.close(), 3000);  // the last frames play out first
    if (s.audio && s.mode === "mic") s.audio.close();
    if (message) say(message);
    const btn = $("live-stop");
    if (btn) btn.disabled = true;
  }

  function frame(s, buffer) {
    const view = new DataView(buffer);
    const n = view.getUint32(0);
    const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, n)));
    const jpeg = new Uint8Array(buffer, 4 + n, header.image_bytes);
    const pcm = new Int16Array(buffer.slice(4 + n + header.image_bytes, 4 + n + header.image_bytes + header.audio_bytes));
    s.frames += 1;
    // latency as the speaker sees it: from sending the audio chunk that holds the frame's first sample
    const first = Math.floor(header.index * s.rate / s.ready.fps);
    while (s.sent.length > 1 && s.sent[1][0] <= first) s.sent.shift();
    const latency = s.mode === "mic" && s.sent.length && s.sent[0][0] <= first
      ? performance.now() - s.sent[0][1] : header.latency_ms;
    s.latencies.push(latency);
    if (s.latencies.length > 2000) s.latencies.splice(0, 1000);
    if (s.mode === "text") play(s, header, pcm);
    createImageBitmap(new Blob([jpeg], { type: "image/jpeg" })).then((bitmap) => {
      const at = s.mode === "text" ? s.playStart + header.time - s.audio.currentTime : 0;
      setTimeout(() => {
        if (header.index < s.drawn) return;
        s.drawn = header.index;
        s.canvas.getContext("2d").drawImage(bitmap, 0, 0);
      }, Math.max(0, at * 1000));
    });
    showStats();
  }

  function play(s, header, pcm) {
    // spoken text: each frame's own audio, scheduled so picture and sound stay together
    const rate = s.ready.audio_rate;
    if (s.playStart === null || s.playStart + header.time < s.audio.currentTime + 0.02) {
      s.playStart = s.audio.currentTime + 0.08 - header.time;  // (re)start with a small buffer
    }
    const buf = s.audio.createBuffer(1, pcm.length, rate);
    const ch = buf.getChannelData(0);
    for (let i = 0; i < pcm.length; i++) ch[i] = pcm[i] / 32768;
    const src = s.audio.createBufferSource();
    src.buffer = buf;
    src.connect(s.audio.destination);
    src.start(s.playStart + header.time);
  }

  // the panel's mouth-motion setting; undefined (the server's default, 1) when the box is empty
  function mouthMotion() {
    const value = parseFloat(($("live-motion") || {}).value);
    return Number.isFinite(value) ? value : undefined;
  }

  async function start(mode) {
    stop();
    const panel = $("live-panel");
    if (!panel) return;
    if (panel.dataset.ticketRequired === "1" && !panel.dataset.ticket) {
      say("Press Get ready first: it loads the model and the target for this page.", "error");
      return;
    }
    const text = mode === "text" ? ($("live-text") || {}).value || "" : "";
    if (mode === "text" && !text.trim()) { say("Type something for the speaker to say.", "error"); return; }
    const s = { mode, frames: 0, late: 0, latencies: [], sent: [], sentSamples: 0, drawn: -1, ready: null,
                playStart: null, canvas: $("live-canvas") };
    s.audio = mode === "mic" ? micContext() : (playback = playback || new AudioContext());
    live = s;
    if (mode === "mic") {
      if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
        stop();
        say("This browser offers no microphone to this page (it must be opened over HTTPS or from localhost).", "error");
        return;
      }
      try {
        s.stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true } });
      } catch (err) {
        stop();
        say(`No microphone: the browser did not allow it (${err.name}). Allow the microphone for this page and press Start again.`, "error");
        return;
      }
    }
    const transport = ($("live-transport") || {}).value || "ws";
    $("live-video").style.display = "none"; s.canvas.style.display = "";
    if (transport === "webrtc") {
      try { await startRtc(s, panel, text); } catch (err) { stop(); say(`WebRTC failed: ${err}`, "error"); }
      return;
    }
    if (mode === "mic") {
      s.source = micSource(s);
      await s.audio.audioWorklet.addModule(panel.dataset.capture || "/live/capture.js");
    }
    s.rate = mode === "mic" ? Math.round(s.audio.sampleRate) : 16000;
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + (panel.dataset.ws || "/live/ws");
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    s.ws = ws;
    say("Connecting...");
    ws.onopen = () => ws.send(JSON.stringify({ type: "start", sample_rate: s.rate, format: "s16le",
                                               ticket: panel.dataset.ticket || undefined, mouth_motion: mouthMotion() }));
    ws.onmessage = (event) => {
      if (typeof event.data !== "string") { frame(s, event.data); return; }
      const msg = JSON.parse(event.data);
      if (msg.type === "ready") {
        s.ready = msg;
        s.canvas.width = msg.width; s.canvas.height = msg.height;
        const stopBtn = $("live-stop");
        if (stopBtn) stopBtn.disabled = false;
        if (mode === "mic") {
          capture(s);
          say("Live: speak now.");
        } else {
          ws.send(JSON.stringify({ type: "say", text }));
          ws.send(JSON.stringify({ type: "end" }));
          say("Speaking...");
        }
      } else {
        message(s, msg);
      }
    };
    ws.onclose = () => { if (live === s) { live = null; const b = $("live-stop"); if (b) b.disabled = true; } };
    ws.onerror = () => say("The connection to the live server failed.", "error");
  }

  function message(s, msg) {
    if (msg.type === "frame") {  // WebRTC: the frame itself came on the video track
      s.frames += 1;
      s.latencies.push(msg.latency_ms);
      if (s.latencies.length > 2000) s.latencies.splice(0, 1000);
    } else if (msg.type === "warning") {
      say(msg.message, "warning");
    } else if (msg.type === "error") {
      say(msg.message, "error");
    } else if (msg.type === "end") {
      s.late = msg.late_frames;
      say(`Finished: ${msg.frames} frames` + (msg.audio_s !== undefined ? ` for ${msg.audio_s.toFixed(1)} s of speech` : "") +
          `, ${msg.late_frames} late, none dropped.`);
    }
    showStats();
  }

  async function startRtc(s, panel, text) {
    const pc = new RTCPeerConnection();
    s.pc = pc;
    const channel = pc.createDataChannel("lipsync");
    s.channel = channel;
    if (s.stream) s.stream.getAudioTracks().forEach((t) => pc.addTrack(t, s.stream));
    else pc.addTransceiver("audio", { direction: "recvonly" });
    pc.addTransceiver("video", { direction: "recvonly" });
    const video = $("live-video");
    video.style.display = ""; s.canvas.style.display = "none";
    video.muted = s.mode === "mic";  // no echo of the speaker's own voice
    video.srcObject = new MediaStream();
    pc.ontrack = (event) => video.srcObject.addTrack(event.track);
    channel.onmessage = (event) => message(s, JSON.parse(event.data));
    channel.onopen = () => { if (s.mode === "text") channel.send(JSON.stringify({ type: "say", text })); };
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((resolve) => {
      if (pc.iceGatheringState === "complete") { resolve(); return; }
      pc.addEventListener("icegatheringstatechange", () => { if (pc.iceGatheringState === "complete") resolve(); });
    });
    say("Connecting...");
    const resp = await fetch(panel.dataset.offer || "/live/offer", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: "offer", ticket: panel.dataset.ticket || undefined,
                            mouth_motion: mouthMotion() }) });
    const answer = await resp.json();
    if (!resp.ok) { stop(); say(answer.message, "error"); return; }
    s.ready = answer;
    s.t0 = performance.now();
    await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
    const stopBtn = $("live-stop");
    if (stopBtn) stopBtn.disabled = false;
    say(s.mode === "mic" ? "Live: speak now." : "Speaking...");
  }

  // The microphone is captured at the model's 16 kHz: the browser resamples it, and the stream
  // is a third of 48 kHz's. A browser that cannot make such a context, or connect a microphone
  // of another rate to it, captures at its own rate; the server resamples then.
  function micContext() {
    try { return new AudioContext({ sampleRate: MIC_RATE }); } catch (err) { return new AudioContext(); }
  }

  function micSource(s) {
    try {
      return s.audio.createMediaStreamSource(s.stream);
    } catch (err) {
      s.audio.close();
      s.audio = new AudioContext();
      return s.audio.createMediaStreamSource(s.stream);
    }
  }

  function capture(s) {
    const source = s.source;
    const node = new AudioWorkletNode(s.audio, "lipsync-capture");
    const mute = s.audio.createGain();
    mute.gain.value = 0;  // the worklet runs, nothing is played back (no echo of the speaker's voice)
    source.connect(node); node.connect(mute); mute.connect(s.audio.destination);
    let pending = [], count = 0;
    const step = Math.round(CHUNK_S * s.rate);
    node.port.onmessage = (event) => {
      if (live !== s || s.ws.readyState !== WebSocket.OPEN) return;
      pending.push(event.data); count += event.data.length;
      if (count < step) return;
      const out = new Int16Array(count);  // s16le: samples in [-1, 1] times 32768, clipped
      let at = 0;
      for (const part of pending) {
        for (let i = 0; i < part.length; i++) out[at++] = Math.max(-32768, Math.min(32767, Math.round(part[i] * 32768)));
      }
      pending = []; count = 0;
      s.sent.push([s.sentSamples, performance.now()]);
      s.sentSamples += out.length;
      s.ws.send(out.buffer);
    };
  }

  document.addEventListener("click", (event) => {
    const id = event.target && event.target.id;
    if (id === "live-mic") start("mic");
    else if (id === "live-say") start("text");
    else if (id === "live-stop") stop("Stopped.");
  });
  window.lipsyncLive = { start, stop, state: () => live };
})();
