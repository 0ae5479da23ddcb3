// Passmesh service worker (Chromium) / background script (Firefox).
//
// For each create/get from a page it: takes the origin from the browser's sender information,
// asks the native host which passkeys exist for the rpId (this also tells whether the daemon
// runs at all), opens the prompt window, and on approval sends the request with that origin
// (and the PIN, if one was typed) to the host. Cancel, closing the window or the timeout give
// NotAllowedError; "use another device" and an unreachable daemon hand the request back to the
// browser's own WebAuthn.
'use strict';

const HOST = 'com.passmesh.native';
const DEFAULT_TIMEOUT_MS = 300000;
const MAX_TIMEOUT_MS = 600000;

// promptId -> { key, promptId, op, origin, rpId, options, passkeys, uv, windowId, done, finish, timer }
const requests = new Map();
let nextPromptId = 1;

function nativeCall(message) {
  return new Promise((resolve) => {
    try {
      chrome.runtime.sendNativeMessage(HOST, message, (reply) => {
        const error = chrome.runtime.lastError;
        if (error || !reply) {
          resolve({ ok: false, unavailable: true, error: { name: 'NotReadableError', message: error ? error.message : 'no reply' } });
        } else {
          resolve(reply);
        }
      });
    } catch (e) {
      resolve({ ok: false, unavailable: true, error: { name: 'NotReadableError', message: String(e) } });
    }
  });
}

// The origin of the frame that sent the message, as the browser reports it.
function senderOrigin(sender) {
  let origin = sender.origin;
  if (!origin && sender.url) {
    try {
      origin = new URL(sender.url).origin;
    } catch (e) {
      origin = null;
    }
  }
  if (!origin || !/^https?:\/\//.test(origin)) return null;
  return origin;
}

function errorAnswer(error) {
  return { kind: 'error', name: (error && error.name) || 'UnknownError', message: (error && error.message) || '' };
}

function uvWanted(op, options) {
  if (op === 'create') {
    return (options.authenticatorSelection && options.authenticatorSelection.userVerification) || 'preferred';
  }
  return options.userVerification || 'preferred';
}

async function begin(message, sender) {
  const origin = senderOrigin(sender);
  if (!origin || !sender.tab) return { kind: 'fallback' };
  const options = message.options || {};
  const host = new URL(origin).hostname;
  const rpId = (message.op === 'create' ? options.rp && options.rp.id : options.rpId) || host;

  const listed = await nativeCall({ id: 1, type: 'list', origin, rpId });
  if (!listed.ok) {
    return listed.unavailable ? { kind: 'fallback' } : errorAnswer(listed.error);
  }
  let passkeys = listed.passkeys || [];
  if (message.op === 'get' && Array.isArray(options.allowCredentials) && options.allowCredentials.length) {
    const allowed = new Set(options.allowCredentials.map((c) => c.id));
    passkeys = passkeys.filter((p) => allowed.has(p.credentialId));
  }

  const key = `${sender.tab.id}:${sender.frameId || 0}:${message.id}`;
  const pageWindowId = sender.tab.windowId;
  const promptId = String(nextPromptId++);
  const timeout = Math.min(Number(options.timeout) > 0 ? Number(options.timeout) : DEFAULT_TIMEOUT_MS, MAX_TIMEOUT_MS);
  return new Promise((resolve) => {
    const request = {
      key, promptId, op: message.op, origin, rpId, options, passkeys,
      uv: uvWanted(message.op, options), windowId: null, done: false,
    };
    request.finish = (answer) => {
      if (request.done) return;
      request.done = true;
      clearTimeout(request.timer);
      requests.delete(promptId);
      const windowId = request.windowId;
      request.windowId = null;
      if (windowId === null) {
        resolve(answer);
        return;
      }
      chrome.windows.remove(windowId, () => {
        void chrome.runtime.lastError;
        if (answer.kind !== 'fallback') {
          resolve(answer);
          return;
        }
        // Firefox lets a page use its own WebAuthn only while the page's window is the active
        // one (NotAllowedError otherwise): hand the request back only once the prompt is gone,
        // and make sure the page's window has the focus (the person may have moved on).
        chrome.windows.update(pageWindowId, { focused: true }, () => {
          void chrome.runtime.lastError;
          resolve(answer);
        });
      });
    };
    request.timer = setTimeout(
      () => request.finish({ kind: 'error', name: 'NotAllowedError', message: 'The request timed out.' }),
      timeout,
    );
    requests.set(promptId, request);
    chrome.windows.create(
      { url: chrome.runtime.getURL(`prompt.html?id=${promptId}`), type: 'popup', width: 440, height: 560, focused: true },
      (win) => {
        if (chrome.runtime.lastError || !win) {
          request.finish({ kind: 'error', name: 'NotAllowedError', message: 'The Passmesh prompt could not be shown.' });
          return;
        }
        request.windowId = win.id;
        if (request.done) chrome.windows.remove(win.id, () => void chrome.runtime.lastError);
      },
    );
  });
}

async function decide(request, decision) {
  if (decision.action === 'fallback') return request.finish({ kind: 'fallback' });
  if (decision.action !== 'approve') {
    return request.finish({ kind: 'error', name: 'NotAllowedError', message: 'The request was cancelled.' });
  }
  const options = JSON.parse(JSON.stringify(request.options));
  if (request.op === 'get') {
    const chosen = request.passkeys.find((p) => p.credentialId === decision.credentialId);
    if (!chosen) return { retry: true, message: 'Choose a passkey.' };
    options.allowCredentials = [{ type: 'public-key', id: chosen.credentialId }];
  }
  const message = { id: 2, type: request.op, origin: request.origin, options };
  if (decision.pin) message.pin = String(decision.pin);
  const reply = await nativeCall(message);
  if (reply.ok) return request.finish({ kind: 'credential', credential: reply.credential });
  if (reply.unavailable) return request.finish({ kind: 'fallback' });
  // A wrong PIN may be typed again; the daemon counts the attempts.
  if (decision.pin && reply.error && reply.error.name === 'NotAllowedError' && /pin/i.test(reply.error.message || '')) {
    return { retry: true, message: reply.error.message };
  }
  return request.finish(errorAnswer(reply.error));
}

function isPrompt(sender) {
  return sender.id === chrome.runtime.id && typeof sender.url === 'string' &&
    sender.url.startsWith(chrome.runtime.getURL('prompt.html'));
}

chrome.runtime.onMessage.addListener((message, sender, sendResponse) => {
  if (sender.id !== chrome.runtime.id || !message) return false;
  if (isPrompt(sender)) {
    const request = requests.get(String(message.promptId));
    if (!request) {
      sendResponse({ gone: true });
      return false;
    }
    if (message.op === 'info') {
      sendResponse({
        op: request.op,
        origin: request.origin,
        rpId: request.rpId,
        user: request.op === 'create' ? request.options.user : null,
        uv: request.uv,
        passkeys: request.passkeys.map((p) => ({
          credentialId: p.credentialId, userName: p.userName, userDisplayName: p.userDisplayName, label: p.label,
        })),
      });
      return false;
    }
    if (message.op === 'keepalive') {
      sendResponse({ ok: true });
      return false;
    }
    if (message.op === 'decide') {
      decide(request, message).then((r) => sendResponse(r || { done: true }));
      return true;
    }
    return false;
  }
  if (message.op === 'cancel') {
    for (const request of requests.values()) {
      if (sender.tab && request.key === `${sender.tab.id}:${sender.frameId || 0}:${message.id}`) {
        request.finish({ kind: 'abort' });
      }
    }
    return false;
  }
  if (message.op === 'create' || message.op === 'get') {
    begin(message, sender).then(sendResponse, (e) => sendResponse(errorAnswer({ name: 'UnknownError', message: String(e) })));
    return true;
  }
  return false;
});

// Closing the prompt window is a cancel.
chrome.windows.onRemoved.addListener((windowId) => {
  for (const request of requests.values()) {
    if (request.windowId === windowId) {
      request.windowId = null;
      request.finish({ kind: 'error', name: 'NotAllowedError', message: 'The prompt was closed.' });
    }
  }
});
