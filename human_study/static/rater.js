const token = location.pathname.split('/').pop();
localStorage.setItem('hs-token', token);
const $ = (id) => document.getElementById(id);
let current = null, shownAt = 0, plays = 0, submitId = null, busy = false, lastPhase = null;

function show(section) {
  for (const s of ['instructions', 'interlude', 'trial', 'done']) $(s).hidden = (s !== section);
}

function progress(p) {
  const total = p.total + p.practice_total, done = p.done + p.practice_done;
  $('bar').max = Math.max(total, 1); $('bar').value = done;
  $('count').textContent = `${p.done} of ${p.total} done`;
}

function uuid() {
  if (crypto.randomUUID) return crypto.randomUUID().replace(/-/g, '');
  const a = new Uint8Array(16); crypto.getRandomValues(a);
  return Array.from(a, (b) => b.toString(16).padStart(2, '0')).join('');
}

function render(state) {
  $('title').textContent = state.title; document.title = state.title;
  progress(state.progress);
  if (state.phase === 'done') { show('done'); return; }
  const started = localStorage.getItem('hs-started-' + token);
  if (!started && state.progress.done === 0 && state.progress.practice_done === 0) {
    $('instructions-text').textContent = state.instructions;
    $('mylink').href = location.href; $('mylink').textContent = location.href;
    $('begin').textContent = state.progress.practice_total ? 'Begin with a short practice' : 'Begin';
    show('instructions');
    $('begin').onclick = () => { localStorage.setItem('hs-started-' + token, '1'); render(state); };
    return;
  }
  if (lastPhase === 'practice' && state.phase === 'main') {
    lastPhase = 'main'; show('interlude'); $('go').onclick = () => render(state); return;
  }
  lastPhase = state.phase;
  showTrial(state.trial);
}

function showTrial(t) {
  current = t; plays = 0; submitId = uuid(); busy = false;
  $('error').textContent = '';
  $('practice-badge').hidden = !t.practice;
  $('question').textContent = t.text;
  const box = $('videos'); box.innerHTML = '';
  const vids = t.media.map((src, i) => {
    const fig = document.createElement('figure');
    if (t.media.length > 1) {
      const cap = document.createElement('figcaption'); cap.textContent = i === 0 ? 'A' : 'B'; fig.appendChild(cap);
    }
    const v = document.createElement('video');
    v.src = src; v.preload = 'auto'; v.playsInline = true; v.setAttribute('playsinline', '');
    v.muted = i > 0;            // one sound track: the videos share the same audio
    v.className = 'stimulus'; v.dataset.slot = String(i);
    fig.appendChild(v); box.appendChild(fig);
    return v;
  });
  const answers = $('answers'); answers.innerHTML = '';
  const buttons = t.choices.map((c) => {
    const b = document.createElement('button');
    b.dataset.choice = c;
    if (t.kind === 'mos') b.textContent = `${c} ${t.scale_labels[Number(c) - 1]}`;
    else b.textContent = c === 'left' ? 'A' : c === 'right' ? 'B' : 'No preference';
    b.disabled = true;
    b.onclick = () => submit(c, buttons);
    answers.appendChild(b);
    return b;
  });
  let ended = 0;
  const lead = vids[0];
  lead.addEventListener('timeupdate', () => {
    for (const v of vids.slice(1)) if (Math.abs(v.currentTime - lead.currentTime) > 0.05) v.currentTime = lead.currentTime;
  });
  lead.addEventListener('ended', () => {
    ended += 1; plays += 1;
    for (const b of buttons) b.disabled = false;
    $('play').textContent = '\u21BB Replay';
  });
  $('play').textContent = '\u25B6 Play';
  $('play').onclick = async () => {
    for (const v of vids) { v.pause(); v.currentTime = 0; }
    try { await Promise.all(vids.map((v) => v.play())); } catch (e) { $('error').textContent = 'The video could not play: ' + e.message; }
  };
  shownAt = performance.now();
  show('trial');
}

async function submit(choice, buttons) {
  if (busy) return;            // a double click sends one request
  busy = true;
  for (const b of buttons) b.disabled = true;
  const body = JSON.stringify({trial_id: current.id, choice, submit_id: submitId,
                               response_ms: Math.round(performance.now() - shownAt), plays});
  for (let attempt = 0; attempt < 8; attempt++) {
    try {
      const r = await fetch(`/api/r/${token}/rate`, {method: 'POST', headers: {'Content-Type': 'application/json'}, body});
      const data = await r.json();
      if (r.ok) { render(data.state); return; }
      if (r.status >= 400 && r.status < 500) { $('error').textContent = data.detail; await load(); return; }
    } catch (e) { /* network error: retry with the same submit_id, which the server de-duplicates */ }
    $('error').textContent = 'Saving... (retrying)';
    await new Promise((res) => setTimeout(res, 500 * (attempt + 1)));
  }
  $('error').textContent = 'Your answer could not be saved; please check your connection and reload the page.';
  busy = false; for (const b of buttons) b.disabled = false;
}

async function load() {
  const r = await fetch(`/api/r/${token}/state`);
  if (!r.ok) { document.body.textContent = (await r.json()).detail; return; }
  render(await r.json());
}
load();
