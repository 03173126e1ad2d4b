const $ = (id) => document.getElementById(id);
async function refresh() {
  const r = await fetch('/admin/api/progress');
  if (r.status === 401) { $('login').hidden = false; $('panel').hidden = true; return; }
  const p = await r.json();
  $('login').hidden = true; $('panel').hidden = false;
  $('summary').textContent = `${p.title}: ${p.raters} raters (${p.finished} finished), ${p.ratings} ratings; ` +
    `attention: ${p.attention.flagged_raters} of ${p.attention.checked_raters} checked raters flagged.`;
  const body = $('per-question').querySelector('tbody'); body.innerHTML = '';
  for (const row of p.per_question) {
    const tr = document.createElement('tr');
    for (const k of ['question_id', 'methods', 'assigned', 'rated']) { const td = document.createElement('td'); td.textContent = row[k]; tr.appendChild(td); }
    body.appendChild(tr);
  }
}
$('login-form').onsubmit = async (e) => {
  e.preventDefault();
  const r = await fetch('/admin/login', {method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify({secret: $('secret').value})});
  $('error').textContent = r.ok ? '' : (await r.json()).detail;
  refresh();
};
$('logout').onclick = async () => { await fetch('/admin/logout', {method: 'POST'}); refresh(); };
$('invite').onclick = async () => {
  const r = await fetch('/admin/api/invites', {method: 'POST', headers: {'Content-Type': 'application/json'},
    body: JSON.stringify({count: Number($('n-invites').value), label: $('invite-label').value || null})});
  const data = await r.json();
  if (!r.ok) { $('error').textContent = data.detail; return; }
  // links are root-relative unless the server was given its public address
  $('links').value = data.links.map((u) => (u.startsWith('/') ? location.origin + u : u)).join('\n'); refresh();
};
refresh(); setInterval(refresh, 10000);
