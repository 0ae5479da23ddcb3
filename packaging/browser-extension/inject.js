// Passmesh, page world (MAIN), run at document_start before any page script.
//
// Replaces navigator.credentials.create/get. Only `publicKey` requests without conditional
// mediation are taken; everything else, and every request the extension hands back
// ("fallback": daemon not running, the person chose another device), goes to the browser's own
// WebAuthn. Requests travel by window.postMessage to content.js (isolated world), which relays
// them to the service worker; the origin is added there from the browser's sender information,
// never from anything this script sends.
(() => {
  'use strict';
  const credentials = navigator.credentials;
  if (!credentials || typeof PublicKeyCredential === 'undefined') return;

  const CHANNEL = 'passmesh-v1';
  const nativeCreate = credentials.create.bind(credentials);
  const nativeGet = credentials.get.bind(credentials);
  const pending = new Map();
  let nextId = 1;

  // --- base64url ---------------------------------------------------------------------------
  function toB64u(bytes) {
    let s = '';
    for (let i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
    return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }
  function fromB64u(text) {
    const b64 = text.replace(/-/g, '+').replace(/_/g, '/');
    const bin = atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4));
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out.buffer;
  }
  function bytesOf(source) {
    if (source instanceof ArrayBuffer) return new Uint8Array(source);
    if (ArrayBuffer.isView(source)) {
      return new Uint8Array(source.buffer, source.byteOffset, source.byteLength);
    }
    return null;
  }

  // Options as WebAuthn L3 JSON: every BufferSource becomes base64url; the AbortSignal stays here.
  function jsonify(value) {
    const bytes = bytesOf(value);
    if (bytes) return toB64u(bytes);
    if (Array.isArray(value)) return value.map(jsonify);
    if (value && typeof value === 'object') {
      const out = {};
      for (const key of Object.keys(value)) {
        const v = value[key];
        if (v === undefined || typeof v === 'function') continue;
        out[key] = jsonify(v);
      }
      return out;
    }
    return value;
  }

  // --- credential objects ------------------------------------------------------------------
  // Objects whose prototype is the real PublicKeyCredential/Authenticator*Response prototype,
  // so `instanceof` holds; the prototype's getters only work on browser-made objects, so own
  // properties shadow each of them.
  function define(target, props) {
    for (const [key, value] of Object.entries(props)) {
      Object.defineProperty(target, key, {
        value,
        enumerable: typeof value !== 'function',
        configurable: true,
        writable: false,
      });
    }
    return target;
  }
  function clone(value) {
    return JSON.parse(JSON.stringify(value));
  }

  function makeCredential(json, kind) {
    const r = json.response || {};
    let response;
    if (kind === 'create') {
      const authenticatorData = fromB64u(r.authenticatorData);
      const publicKey = r.publicKey ? fromB64u(r.publicKey) : null;
      response = define(Object.create(AuthenticatorAttestationResponse.prototype), {
        clientDataJSON: fromB64u(r.clientDataJSON),
        attestationObject: fromB64u(r.attestationObject),
        getAuthenticatorData: () => authenticatorData.slice(0),
        getPublicKey: () => (publicKey ? publicKey.slice(0) : null),
        getPublicKeyAlgorithm: () => r.publicKeyAlgorithm,
        getTransports: () => (r.transports || []).slice(),
        toJSON: () => clone(r),
      });
    } else {
      response = define(Object.create(AuthenticatorAssertionResponse.prototype), {
        clientDataJSON: fromB64u(r.clientDataJSON),
        authenticatorData: fromB64u(r.authenticatorData),
        signature: fromB64u(r.signature),
        userHandle: r.userHandle ? fromB64u(r.userHandle) : null,
        toJSON: () => clone(r),
      });
    }
    return define(Object.create(PublicKeyCredential.prototype), {
      id: json.id,
      rawId: fromB64u(json.rawId),
      type: 'public-key',
      authenticatorAttachment: json.authenticatorAttachment || null,
      response,
      getClientExtensionResults: () => clone(json.clientExtensionResults || {}),
      toJSON: () => clone(json),
    });
  }

  // --- relay -------------------------------------------------------------------------------
  window.addEventListener('message', (event) => {
    const data = event.data;
    if (event.source !== window || !data || data.channel !== CHANNEL || data.dir !== 'toPage') {
      return;
    }
    const entry = pending.get(data.id);
    if (!entry) return;
    pending.delete(data.id);
    entry(data.answer || { kind: 'fallback' });
  });

  function ask(op, options, signal) {
    const id = `${nextId++}-${Math.random().toString(36).slice(2)}`;
    return new Promise((resolve) => {
      pending.set(id, resolve);
      if (signal) {
        signal.addEventListener('abort', () => {
          if (!pending.delete(id)) return;
          window.postMessage({ channel: CHANNEL, dir: 'toExtension', id, op: 'cancel' }, '*');
          resolve({ kind: 'abort' });
        });
      }
      window.postMessage({ channel: CHANNEL, dir: 'toExtension', id, op, options }, '*');
    });
  }

  async function run(op, options, fallback) {
    const signal = options.signal;
    if (signal && signal.aborted) {
      throw new DOMException('The operation was aborted.', 'AbortError');
    }
    let request;
    try {
      request = jsonify(options.publicKey);
    } catch (e) {
      return fallback(options);
    }
    const answer = await ask(op, request, signal);
    switch (answer.kind) {
      case 'credential':
        return makeCredential(answer.credential, op);
      case 'error':
        throw new DOMException(answer.message || answer.name, answer.name || 'NotAllowedError');
      case 'abort':
        throw new DOMException('The operation was aborted.', 'AbortError');
      default:
        return fallback(options);
    }
  }

  function handled(options) {
    return !!(options && options.publicKey && options.mediation !== 'conditional');
  }

  const create = function create(options) {
    return handled(options) ? run('create', options, nativeCreate) : nativeCreate(options);
  };
  const get = function get(options) {
    return handled(options) ? run('get', options, nativeGet) : nativeGet(options);
  };
  // Own properties on the CredentialsContainer instance: the prototype stays untouched.
  Object.defineProperty(credentials, 'create', { value: create, configurable: true, writable: true });
  Object.defineProperty(credentials, 'get', { value: get, configurable: true, writable: true });
})();
