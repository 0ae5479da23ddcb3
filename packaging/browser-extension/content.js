// Passmesh, isolated world: relays the page-world script's requests to the service worker and
// its answers back. It adds nothing about who is asking: the service worker takes the origin
// from the browser's sender information.
(() => {
  'use strict';
  const CHANNEL = 'passmesh-v1';
  window.addEventListener('message', (event) => {
    const data = event.data;
    if (event.source !== window || !data || data.channel !== CHANNEL || data.dir !== 'toExtension') {
      return;
    }
    const id = String(data.id);
    const reply = (answer) =>
      window.postMessage({ channel: CHANNEL, dir: 'toPage', id, answer }, '*');
    if (data.op === 'cancel') {
      chrome.runtime.sendMessage({ op: 'cancel', id }, () => void chrome.runtime.lastError);
      return;
    }
    if (data.op !== 'create' && data.op !== 'get') return;
    try {
      chrome.runtime.sendMessage({ op: data.op, id, options: data.options }, (answer) => {
        // No service worker (extension reloading…): let the browser answer.
        if (chrome.runtime.lastError || !answer) reply({ kind: 'fallback' });
        else reply(answer);
      });
    } catch (e) {
      reply({ kind: 'fallback' });
    }
  });
})();
