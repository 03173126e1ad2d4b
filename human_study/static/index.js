(async () => {
  const $ = (id) => document.getElementById(id);
  const info = await (await fetch('/api/study')).json();
  $('title').textContent = info.title;
  document.title = info.title;
  const saved = localStorage.getItem('hs-token');
  if (saved && /^[A-Za-z0-9_-]{20,64}$/.test(saved)) {
    $('resume').hidden = false;
    $('resume-link').href = '/r/' + saved;
  }
  const start = $('start');
  if (!info.open_enrollment) { start.hidden = true; $('closed').hidden = false; return; }
  if (info.full) { start.hidden = true; $('full').hidden = false; return; }
  // the invitation's link may carry the code (/?code=...); otherwise the rater types it
  const given = new URLSearchParams(location.search).get('code');
  if (info.needs_code) { $('code-row').hidden = false; if (given) $('code').value = given; }
  start.disabled = false;  // enabled once the page knows how to join (a click before then did nothing)
  start.onclick = async () => {
    start.disabled = true;
    const payload = info.needs_code ? {code: $('code').value.trim()} : {};
    const r = await fetch('/api/join', {method: 'POST', headers: {'Content-Type': 'application/json'},
                                        body: JSON.stringify(payload)});
    const body = await r.json();
    if (!r.ok) {
      $('error').textContent = body.detail; start.disabled = false;
      if (r.status === 403 && /all the raters/.test(body.detail)) { start.hidden = true; $('full').hidden = false; }
      return;
    }
    localStorage.setItem('hs-token', body.token);
    location.href = body.url;
  };
})();
