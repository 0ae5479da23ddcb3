// The Passmesh prompt: shows what the site asks for and the matching passkeys, takes the PIN
// when verification is wanted, and reports the person's decision to the service worker.
// `document.body.dataset.state` says where it is ("loading", "ready", "working", "done"), which
// is also what automated tests wait for before clicking.
'use strict';
(() => {
  const KEEPALIVE_MS = 5000;
  const promptId = new URLSearchParams(location.search).get('id');
  const $ = (id) => document.getElementById(id);
  let info = null;

  function send(message) {
    return new Promise((resolve) => {
      chrome.runtime.sendMessage({ promptId, ...message }, (reply) => {
        resolve(chrome.runtime.lastError ? { gone: true } : reply || { gone: true });
      });
    });
  }

  function selected() {
    const checked = document.querySelector('input[name=passkey]:checked');
    return checked ? checked.value : null;
  }

  async function decide(action) {
    if (action === 'approve' && info && info.uv === 'required' && !$('pin').value) {
      $('message').textContent = 'This site requires verification: enter the device PIN.';
      $('pin').focus();
      return;
    }
    $('message').textContent = '';
    document.body.dataset.state = 'working';
    $('approve').disabled = true;
    const reply = await send({
      op: 'decide',
      action,
      credentialId: selected(),
      pin: action === 'approve' ? $('pin').value : '',
    });
    if (reply && reply.retry) {
      $('message').textContent = reply.message || 'Try again.';
      $('pin').value = '';
      $('approve').disabled = false;
      document.body.dataset.state = 'ready';
      return;
    }
    document.body.dataset.state = 'done';
    window.close();
  }

  async function load() {
    info = await send({ op: 'info' });
    if (!info || info.gone) {
      document.body.dataset.state = 'done';
      window.close();
      return;
    }
    $('origin').textContent = info.origin;
    if (info.op === 'create') {
      $('title').textContent = `Create a passkey for ${info.rpId}`;
      const user = info.user || {};
      $('detail').textContent = `Account: ${user.displayName || ''} (${user.name || ''})`;
      $('approve').textContent = 'Create passkey';
      $('approve').disabled = false;
    } else {
      $('title').textContent = `Sign in to ${info.rpId}`;
      $('detail').textContent = 'Choose a passkey:';
      const list = $('passkeys');
      info.passkeys.forEach((p, i) => {
        const item = document.createElement('li');
        const label = document.createElement('label');
        const radio = document.createElement('input');
        radio.type = 'radio';
        radio.name = 'passkey';
        radio.value = p.credentialId;
        radio.checked = i === 0;
        label.append(radio, ` ${p.userDisplayName || p.userName || '(no name)'}`);
        if (p.userName && p.userDisplayName) label.append(` — ${p.userName}`);
        if (p.label) label.append(` [${p.label}]`);
        item.append(label);
        list.append(item);
      });
      $('empty').hidden = info.passkeys.length > 0;
      $('approve').textContent = 'Sign in';
      $('approve').disabled = info.passkeys.length === 0;
    }
    $('pin-row').hidden = info.uv === 'discouraged';
    if (info.uv === 'required') $('pin').required = true;
    document.body.dataset.state = 'ready';
    if (!$('approve').disabled) $('approve').focus();
  }

  // Firefox suspends an idle background page (after 30 s by default), and the pending request
  // lives there: each message counts as activity, so ping while the person is deciding.
  setInterval(async () => {
    const reply = await send({ op: 'keepalive' });
    if (reply && reply.gone && document.body.dataset.state !== 'done') {
      document.body.dataset.state = 'done';
      window.close();
    }
  }, KEEPALIVE_MS);

  $('approve').addEventListener('click', () => decide('approve'));
  $('other').addEventListener('click', () => decide('fallback'));
  $('cancel').addEventListener('click', () => decide('cancel'));
  $('pin').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !$('approve').disabled) decide('approve');
  });
  load();
})();
