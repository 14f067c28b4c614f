/*
 * bastion.js — the Bastion browser client (docs/protocol.md, versions 1 and 2).
 *
 * No build step, no dependency: load it with
 *   <script src="/bastion/bastion.js"></script>
 * and use the global `Bastion`:
 *
 *   Bastion.login("alice", "s3cret")            // Promise of the session's user
 *   Bastion.login("alice", "s3cret", false, "123456")  // with two-step sign-in: after a SecondFactorRequired
 *   Bastion.passkeyOptions()                    // a passkey login's options, then
 *   Bastion.passkeyLogin(credentialJSON)        // Promise of the session's user
 *   Bastion.safe_call("add", "Play with Fanery")  // positional args
 *   Bastion.safe_call("update", {id, vsn, done: true})  // one plain object: kwargs
 *   Bastion.logout()
 *
 * Every call returns a Promise of the result. A failure rejects with the
 * server's error object {exc, err, status, ...} after calling the handler
 * `Bastion.exc[exc]` (or `Bastion.exc.Error` when there is none for that
 * name). Failures the client itself detects use these `exc` names:
 * InsecureContext (no WebCrypto), NetworkError, InvalidResponseSignature,
 * ServerFailure (an unsigned 5xx: a proxy's 502, a 500 before the MAC
 * verified; with `request_id`, the answer's X-Request-Id; the call may have run),
 * UnknownSession (with `local: true`) for a call made while logged out, and
 * ExpiredSession (with `local: true`) for a call of a session whose expiry,
 * as the last answer set it, has passed: such a call is never sent. After an
 * UnknownSession or ExpiredSession, signed or not, the session is forgotten,
 * so a page sends a dead session's sid once at most (docs/security.md).
 *
 * Calls are signed with HMAC-SHA256 (WebCrypto) exactly as section 4 says,
 * and every answer to a signed call is verified (`Server-Authorization`)
 * unless its status is one the server cannot sign (steps 1-8), in which case
 * only the status is acted upon.
 *
 * By default the client logs in with protocol version 2 (section 16): an
 * ephemeral ECDH P-256 key pair made for the login, whose private key cannot
 * leave WebCrypto, and the session's four keys derived with HKDF straight
 * into non-extractable CryptoKeys: no key is ever sent, and the page never
 * holds key bytes. Every call's arguments and every answer are then sealed
 * (AES-256-GCM). `Bastion.configure({version: 1})` logs in the version-1
 * way (the server sends the key, imported at once as a non-extractable
 * CryptoKey); `{encrypt: false}` keeps version 2's keys but sends plain
 * calls. A version-2 login answered the version-1 way (something on the way
 * removed the key agreement) is refused with DowngradeRefused, and the
 * session whose key travelled is ended at once.
 *
 * The session's keys are kept in IndexedDB under a random per-tab id;
 * sessionStorage keeps only {sid, expires, user, offset, idle, seen, kid}, so
 * a reload of the tab stays logged in. `Bastion.ready` is a Promise of the
 * session restored at start-up. Without IndexedDB the session lives in this
 * page's memory only.
 */
(function (global) {
  "use strict";

  var SCHEME = "Bastion-HMAC";
  var STORE_KEY = "bastion.session";
  var SERVICE_NAME = /^[A-Za-z_][A-Za-z0-9_.-]{0,127}$/;
  var B64URL = /^[A-Za-z0-9_-]*$/;

  // Answers of steps 1-8 of section 4, which the server cannot sign: name -> status.
  // (InvalidCall answers a query string at step 5; RequestTimeout headers or a body
  // that did not arrive in time; ServiceUnavailable a session store that cannot be
  // reached at step 7.) Only their status is acted upon.
  var UNSIGNED = {
    InvalidHost: 400,
    RequireSSL: 403,
    Abusive: 429,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    InvalidCall: 400,
    RequestTimeout: 408,
    Unauthorized: 401,
    UnknownSession: 401,
    ExpiredSession: 401,
    InvalidSignature: 401,
    ServiceUnavailable: 503
  };
  // After these the session is gone for good: forget it, signed or not, so that no later call
  // of this page sends its sid again (each would be one more refusal for the server to weigh).
  var SESSION_ENDED = { UnknownSession: true, ExpiredSession: true };
  // Signed refusals of steps 9 and 10: the server did not slide the session's idle expiry for them.
  // Every other answer it signed (a Forbidden, a NotFound, a service's error) passed step 10 and did.
  var NOT_SLID = { StaleCall: true, ReplayedCall: true, UnknownSession: true, ExpiredSession: true };
  // Seconds past its idle timeout, counted on this page's clock from the last answer that slid the session,
  // after which a session is taken as ended without asking: the server slid it before that answer left, so
  // its idle expiry has passed too. (A wrong clock offset changes nothing here; a session that reached its
  // absolute lifetime is still asked about, and the server says so.)
  var EXPIRY_MARGIN = 2;

  // Version 2 (section 16).
  var SEALED_TYPE = "application/vnd.bastion.sealed";
  var P256 = { name: "ECDH", namedCurve: "P-256" };
  var IV_BYTES = 12;
  var MIN_ENVELOPE = 28;  // an IV and a tag around an empty plaintext
  var options = { version: 2, encrypt: true };

  var encoder = new TextEncoder();
  var decoder = new TextDecoder("utf-8");

  // -- encoding helpers (pure) ----------------------------------------------

  function toBytes(data) {
    if (data instanceof Uint8Array) return data;
    if (data instanceof ArrayBuffer) return new Uint8Array(data);
    if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    return encoder.encode(data == null ? "" : String(data));
  }

  function b64url(data) {
    var bytes = toBytes(data);
    var binary = "";
    for (var i = 0; i < bytes.length; i++) binary += String.fromCharCode(bytes[i]);
    return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function b64urlDecode(text) {
    if (typeof text !== "string" || !B64URL.test(text) || text.length % 4 === 1) {
      throw new TypeError("not b64url: " + text);
    }
    var b64 = text.replace(/-/g, "+").replace(/_/g, "/");
    while (b64.length % 4) b64 += "=";
    var binary = atob(b64);
    var bytes = new Uint8Array(binary.length);
    for (var i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return bytes;
  }

  /** The tenant of a host name (section 1): lowercased, without one trailing dot. */
  function domainOf(hostname) {
    var host = String(hostname).toLowerCase();
    return host.charAt(host.length - 1) === "." ? host.slice(0, -1) : host;
  }

  // -- WebCrypto ------------------------------------------------------------

  function subtle() {
    var c = global.crypto;
    if (!c || !c.subtle) {
      throw failure("InsecureContext", 0,
        "Bastion needs WebCrypto (crypto.subtle), which browsers offer only in a secure context: " +
        "open this page over HTTPS or on localhost.");
    }
    return c.subtle;
  }

  function sha256b64(data) {
    return Promise.resolve().then(function () {
      return subtle().digest("SHA-256", toBytes(data));
    }).then(b64url);
  }

  function importKey(keyB64) {
    return Promise.resolve().then(function () {
      return subtle().importKey("raw", b64urlDecode(keyB64), { name: "HMAC", hash: "SHA-256" },
        false, ["sign", "verify"]);
    });
  }

  function asKey(key) {
    return typeof key === "string" ? importKey(key) : Promise.resolve(key);
  }

  function randomNonce() {
    var bytes = new Uint8Array(16);
    global.crypto.getRandomValues(bytes);
    return b64url(bytes);
  }

  // -- section 4: strings to sign (pure) ------------------------------------

  /** The request string S from its parts and the body's b64url SHA-256. */
  function requestString(ts, nonce, path, domain, bodyHash) {
    return ["bastion-hmac-v1", String(ts), nonce, "POST", path, domain, bodyHash].join("\n");
  }

  /** The response string R from the request's nonce, the status and the body's b64url SHA-256. */
  function responseString(nonce, status, bodyHash) {
    return ["bastion-hmac-v1-response", nonce, String(status), bodyHash].join("\n");
  }

  /** Sign a request: Promise of {S, mac}. `key` is b64url text or a CryptoKey; `body` a string or bytes. */
  function sign(key, ts, nonce, path, domain, body) {
    return Promise.all([asKey(key), sha256b64(body)]).then(function (parts) {
      var S = requestString(ts, nonce, path, domain, parts[1]);
      return subtle().sign("HMAC", parts[0], encoder.encode(S)).then(function (mac) {
        return { S: S, mac: b64url(mac) };
      });
    });
  }

  /** The Authorization header of a signed call. */
  function authorization(sid, ts, nonce, mac) {
    return SCHEME + ' sid="' + sid + '", ts="' + ts + '", nonce="' + nonce + '", mac="' + mac + '"';
  }

  /** The response MAC the server must send: Promise of {R, mac, header}. */
  function responseMac(key, nonce, status, body) {
    return Promise.all([asKey(key), sha256b64(body)]).then(function (parts) {
      var R = responseString(nonce, status, parts[1]);
      return subtle().sign("HMAC", parts[0], encoder.encode(R)).then(function (mac) {
        var m = b64url(mac);
        return { R: R, mac: m, header: SCHEME + ' mac="' + m + '"' };
      });
    });
  }

  // Section 4: the scheme in any case, one or more spaces, mac="<43 b64url characters>" in lower case, nothing
  // else; spaces and tabs around the whole value are HTTP's, not the value's. fetch joins a field sent several
  // times with ", ": such a value is refused, as the protocol wants exactly one.
  var SERVER_AUTHORIZATION = /^[ \t]*([A-Za-z-]+) +mac="([A-Za-z0-9_-]{43})"[ \t]*$/;

  /** The mac of a `Server-Authorization` header value, or null when it is malformed. */
  function parseServerAuthorization(value) {
    var match = SERVER_AUTHORIZATION.exec(typeof value === "string" ? value : "");
    return match && match[1].toLowerCase() === SCHEME.toLowerCase() ? match[2] : null;
  }

  /** Promise of true when `header` carries the valid MAC of the response (checked by crypto.subtle.verify). */
  function verifyResponse(key, nonce, status, body, header) {
    var mac = parseServerAuthorization(header);
    if (mac === null) return Promise.resolve(false);
    return Promise.all([asKey(key), sha256b64(body)]).then(function (parts) {
      var R = responseString(nonce, status, parts[1]);
      return subtle().verify("HMAC", parts[0], b64urlDecode(mac), encoder.encode(R));
    });
  }

  // -- section 16: the key agreement and the envelope ------------------------

  /** The HKDF info of one of the session's keys: six lines. */
  function kdfInfo(label, sid, domain, clientPublic, serverPublic) {
    return encoder.encode(["bastion-v2", label, sid, domain, clientPublic, serverPublic].join("\n"));
  }

  /** Promise of a new ECDH key pair whose private key cannot be exported, and its public key in b64url. */
  function newKeyPair() {
    return subtle().generateKey(P256, false, ["deriveKey"]).then(function (pair) {
      return subtle().exportKey("raw", pair.publicKey).then(function (raw) {
        return { privateKey: pair.privateKey, public: b64url(raw) };
      });
    });
  }

  /** Promise of the session's four keys, each a non-extractable CryptoKey: {callMac, answerMac, callEnc, answerEnc}. */
  function deriveKeys(privateKey, clientPublic, serverPublic, sid, domain) {
    return Promise.resolve().then(function () {
      return subtle().importKey("raw", b64urlDecode(serverPublic), P256, false, []);
    }).then(function (peer) {
      return subtle().deriveKey({ name: "ECDH", public: peer }, privateKey, { name: "HKDF" }, false, ["deriveKey"]);
    }).then(function (secret) {
      function derive(label, algorithm, usages) {
        return subtle().deriveKey({ name: "HKDF", hash: "SHA-256", salt: new Uint8Array(0),
          info: kdfInfo(label, sid, domain, clientPublic, serverPublic) }, secret, algorithm, false, usages);
      }
      var hmac = { name: "HMAC", hash: "SHA-256", length: 256 };
      var aes = { name: "AES-GCM", length: 256 };
      return Promise.all([derive("call-mac", hmac, ["sign"]), derive("answer-mac", hmac, ["verify"]),
        derive("call-enc", aes, ["encrypt"]), derive("answer-enc", aes, ["decrypt"])]);
    }).then(function (keys) {
      return { callMac: keys[0], answerMac: keys[1], callEnc: keys[2], answerEnc: keys[3] };
    });
  }

  /** The associated data of a sealed call, and of its answer. */
  function callAad(ts, nonce, path, domain) {
    return encoder.encode(["bastion-v2-call", String(ts), nonce, path, domain].join("\n"));
  }

  function answerAad(nonce, status) {
    return encoder.encode(["bastion-v2-answer", nonce, String(status)].join("\n"));
  }

  /** Promise of the envelope of `plaintext`: iv || ciphertext || tag (a new random IV unless one is given). */
  function seal(key, plaintext, aad, iv) {
    if (!iv) {
      iv = new Uint8Array(IV_BYTES);
      global.crypto.getRandomValues(iv);
    }
    return Promise.resolve().then(function () {
      return subtle().encrypt({ name: "AES-GCM", iv: iv, additionalData: aad, tagLength: 128 }, key, toBytes(plaintext));
    }).then(function (sealed) {
      var envelope = new Uint8Array(IV_BYTES + sealed.byteLength);
      envelope.set(iv, 0);
      envelope.set(new Uint8Array(sealed), IV_BYTES);
      return envelope;
    });
  }

  /** Promise of the plaintext bytes of an envelope; rejects when it does not open. */
  function openEnvelope(key, envelope, aad) {
    var bytes = toBytes(envelope);
    if (bytes.length < MIN_ENVELOPE) return Promise.reject(new Error("an envelope is at least 28 bytes"));
    return Promise.resolve().then(function () {
      return subtle().decrypt({ name: "AES-GCM", iv: bytes.subarray(0, IV_BYTES), additionalData: aad, tagLength: 128 },
        key, bytes.subarray(IV_BYTES));
    }).then(function (plain) { return new Uint8Array(plain); });
  }

  function isSealed(contentType) {
    return String(contentType || "").split(";")[0].trim().toLowerCase() === SEALED_TYPE;
  }

  // -- errors ---------------------------------------------------------------

  function failure(exc, status, message, extra) {
    var error = { exc: exc, err: [message], status: status };
    if (extra) for (var k in extra) if (Object.prototype.hasOwnProperty.call(extra, k)) error[k] = extra[k];
    return error;
  }

  function asFailure(e) {
    if (e && typeof e.exc === "string" && Array.isArray(e.err)) return e;
    return failure("Error", 0, (e && e.message) || String(e));
  }

  /** Call the handler for the failure's exc name, then reject with it. */
  function reject(error) {
    error = asFailure(error);
    var handlers = Bastion.exc || {};
    var handler = Object.prototype.hasOwnProperty.call(handlers, error.exc) ? handlers[error.exc] : handlers.Error;
    if (typeof handler === "function") {
      try {
        handler(error);
      } catch (e) {
        setTimeout(function () { throw e; });
      }
    }
    return Promise.reject(error);
  }

  function parseJson(bytes) {
    try {
      return JSON.parse(decoder.decode(bytes));
    } catch (e) {
      return undefined;
    }
  }

  function errorFromBody(payload, status) {
    if (payload && typeof payload.exc === "string") {
      var error = {};
      for (var k in payload) if (Object.prototype.hasOwnProperty.call(payload, k)) error[k] = payload[k];
      if (!Array.isArray(error.err)) error.err = [String(error.err || error.exc)];
      error.status = status;
      return error;
    }
    return failure("Error", status, "unexpected answer from the server (HTTP " + status + ")");
  }

  // -- session --------------------------------------------------------------
  //
  // The raw key never reaches any storage. At login it is imported as a
  // non-extractable HMAC CryptoKey and its bytes are dropped. The CryptoKey
  // object (structured-clonable, but never exportable) is kept in IndexedDB
  // under a random per-tab key id `kid`; sessionStorage keeps only what is not
  // secret on its own: {sid, expires, user, offset, idle, seen, kid}. A reload
  // restores the session from the two. Without IndexedDB (or sessionStorage)
  // the session lives only in this page's memory.

  var IDB_NAME = "bastion";
  var IDB_STORE = "keys";       // kid -> {key: CryptoKey, expires: local clock, in seconds}
  var IDB_OPEN_TIMEOUT = 5000;  // ms; a browser that never answers counts as no IndexedDB
  var NO_EXPIRY = 43200;        // s an entry is kept when the server gave no expiry

  var state = null;     // {sid, key: CryptoKey, keys (version 2) or null, kid, expires, user, offset, idle, seen, keptUntil}
  var clockOffset = 0;  // server time minus local time, in seconds
  var database = null;  // Promise of the IDBDatabase, or of null when there is none

  function noop() {}

  function store() {
    try {
      return global.sessionStorage || null;
    } catch (e) {
      return null;
    }
  }

  function randomId() {
    var bytes = new Uint8Array(16);
    global.crypto.getRandomValues(bytes);
    return b64url(bytes);
  }

  /** Promise of the origin's IndexedDB database, or of null when the browser refuses it. */
  function openDatabase() {
    if (database) return database;
    database = new Promise(function (resolve) {
      var settled = false;
      var timer = null;
      function done(db) {
        if (timer !== null) clearTimeout(timer);
        if (settled) {
          if (db) db.close();
          return;
        }
        settled = true;
        resolve(db);
      }
      var request;
      try {
        request = global.indexedDB.open(IDB_NAME, 1);
      } catch (e) {
        done(null);  // no indexedDB at all, or a SecurityError
        return;
      }
      timer = setTimeout(function () { timer = null; done(null); }, IDB_OPEN_TIMEOUT);
      request.onupgradeneeded = function () {
        request.result.createObjectStore(IDB_STORE);
      };
      request.onsuccess = function () {
        var db = request.result;
        if (!db.objectStoreNames.contains(IDB_STORE)) {
          // A database of that name made by some other script: not ours to change.
          db.close();
          done(null);
          return;
        }
        db.onversionchange = function () {
          db.close();
          database = null;
        };
        db.onclose = function () { database = null; };
        done(db);
      };
      request.onerror = function (event) {
        if (event && event.preventDefault) event.preventDefault();
        done(null);
      };
    });
    return database;
  }

  /** Run `work(objectStore)` in one transaction; Promise of its request's result once committed. */
  function transact(mode, work) {
    return openDatabase().then(function (db) {
      if (!db) throw new Error("IndexedDB is unavailable");
      return new Promise(function (resolve, reject) {
        var tx = db.transaction(IDB_STORE, mode);
        var request = work(tx.objectStore(IDB_STORE));
        tx.oncomplete = function () { resolve(request ? request.result : undefined); };
        tx.onabort = function () { reject(tx.error || new Error("IndexedDB transaction aborted")); };
      });
    });
  }

  /** A non-extractable secret CryptoKey of the algorithm, with every usage listed. */
  function isKey(key, algorithm, usages) {
    return typeof CryptoKey !== "undefined" && key instanceof CryptoKey && key.type === "secret" &&
      key.extractable === false && key.algorithm && key.algorithm.name === algorithm &&
      usages.every(function (usage) { return key.usages.indexOf(usage) >= 0; });
  }

  /** A key entry that can be a session's: version 1's one HMAC key, or version 2's four keys. */
  function isSessionEntry(entry) {
    if (!entry) return false;
    var keys = entry.keys;
    if (!keys) return isKey(entry.key, "HMAC", ["sign", "verify"]);
    return entry.key === keys.callMac && isKey(keys.callMac, "HMAC", ["sign"]) &&
      isKey(keys.answerMac, "HMAC", ["verify"]) && isKey(keys.callEnc, "AES-GCM", ["encrypt"]) &&
      isKey(keys.answerEnc, "AES-GCM", ["decrypt"]);
  }

  /** When the session ends if no call slides it, on the local clock (seconds). */
  function localExpiry(session) {
    if (session.idle > 0) return now() + session.idle;
    if (typeof session.expires === "number") return session.expires - clockOffset;
    return now() + NO_EXPIRY;
  }

  /** Store (or refresh) the session's key entry; Promise, rejected when IndexedDB refuses it. */
  function keepKey(session) {
    var expires = Math.ceil(localExpiry(session));
    session.keptUntil = expires;
    return transact("readwrite", function (keys) {
      var entry = { key: session.key, expires: expires };
      if (session.keys) entry.keys = session.keys;  // version 2: the four keys (`key` is their call-mac)
      return keys.put(entry, session.kid);
    });
  }

  /** Delete a key entry; Promise that always resolves. */
  function dropKey(kid) {
    return transact("readwrite", function (keys) { return keys.delete(kid); }).catch(noop);
  }

  /** Delete the entries that have expired (those of closed tabs) or are not session keys. */
  function purgeExpired() {
    var t = now();
    return transact("readwrite", function (keys) {
      var cursor = keys.openCursor();
      cursor.onsuccess = function () {
        var entry = cursor.result;
        if (!entry) return;
        var value = entry.value;
        if (!value || !(value.expires > t) || !isSessionEntry(value)) entry.delete();
        entry.continue();
      };
    });
  }

  function removeSaved() {
    var s = store();
    try {
      if (s) s.removeItem(STORE_KEY);
    } catch (e) {
      // nothing to do
    }
  }

  /** Save what is not secret in sessionStorage, only when the key is in IndexedDB; else remove it. */
  function save() {
    var s = store();
    if (!s) return;
    if (!state || !state.kid) {
      removeSaved();
      return;
    }
    try {
      s.setItem(STORE_KEY, JSON.stringify({
        sid: state.sid,
        expires: state.expires,
        user: state.user,
        offset: state.offset,
        idle: state.idle,
        seen: state.seen,
        kid: state.kid
      }));
    } catch (e) {
      // A full storage: a reload will ask to log in again.
    }
  }

  /** Purge expired key entries, then restore the tab's session; Promise of the session view or null. */
  function restore() {
    var s = store();
    var saved = null;
    var raw = null;
    try {
      raw = s && s.getItem(STORE_KEY);
    } catch (e) {
      raw = null;
    }
    if (raw) {
      try {
        saved = JSON.parse(raw);
      } catch (e) {
        saved = null;
      }
      if (!saved || typeof saved.sid !== "string" || typeof saved.kid !== "string") {
        // Malformed, or saved by an older client that kept the raw key here: scrub it.
        saved = null;
        removeSaved();
      }
    }
    return purgeExpired().catch(noop).then(function () {
      if (!saved) return null;
      return transact("readonly", function (keys) { return keys.get(saved.kid); });
    }).then(function (entry) {
      if (!saved) return;
      if (!isSessionEntry(entry)) throw new Error("no key entry");
      state = {
        sid: saved.sid,
        key: entry.key,
        keys: entry.keys || null,
        kid: saved.kid,
        expires: saved.expires,
        user: saved.user,
        offset: Number(saved.offset) || 0,
        idle: Number(saved.idle) || 0,
        seen: typeof saved.seen === "number" ? saved.seen : null,
        keptUntil: entry.expires
      };
      clockOffset = state.offset;
    }).catch(function () {
      // The key is gone (expired and purged, removed by another tab) or IndexedDB fails:
      // the saved session cannot sign anything.
      if (saved) removeSaved();
    }).then(sessionView);
  }

  /** Forget the session: sessionStorage at once, then its key entry. Promise. */
  function forget() {
    var session = state;
    state = null;
    save();
    return session && session.kid ? dropKey(session.kid) : Promise.resolve();
  }

  function now() {
    return Date.now() / 1000;
  }

  /** The clock offset measured from a server_time, or null. */
  function offsetFrom(serverTime, sentAt, receivedAt) {
    if (typeof serverTime !== "number" || !isFinite(serverTime)) return null;
    return serverTime - (sentAt + receivedAt) / 2;
  }

  function setOffset(serverTime, sentAt, receivedAt) {
    var offset = offsetFrom(serverTime, sentAt, receivedAt);
    if (offset === null) return;
    clockOffset = offset;
    if (state) {
      state.offset = clockOffset;
      save();
    }
  }

  function sessionView() {
    if (!state) return null;
    var view = { sid: state.sid, expires: state.expires, user: state.user, offset: state.offset,
      version: state.keys ? 2 : 1 };
    if (state.secondFactor) view.second_factor = state.secondFactor;
    return view;
  }

  // -- transport ------------------------------------------------------------

  function post(path, headers, body) {
    var sentAt = now();
    return global.fetch(path, {
      method: "POST",
      headers: headers,
      body: body,
      credentials: "omit",
      cache: "no-store",
      redirect: "error"
    }).then(function (response) {
      return response.arrayBuffer().then(function (buffer) {
        return { response: response, bytes: new Uint8Array(buffer), sentAt: sentAt, receivedAt: now() };
      });
    }, function (e) {
      throw failure("NetworkError", 0, "the server could not be reached (" + ((e && e.message) || e) + ")");
    });
  }

  /** One signed POST; Promise of the verified {status, payload}. Retries once after a signed StaleCall. */
  function signedPost(path, body, retried) {
    if (!state) {
      return Promise.reject(failure("UnknownSession", 401, "not logged in", { local: true }));
    }
    if (expiredHere(state)) {
      // Idle past its expiry (a tab left open): the server would only refuse it. Ask nothing.
      var expired = failure("ExpiredSession", 401, "session expired; log in again", { local: true });
      return forget().then(function () { throw expired; });
    }
    var session = state;
    var key = session.key;
    var keys = session.keys;
    var sealed = !!(keys && options.encrypt);
    var ts = String(Math.floor(now() + clockOffset));
    var nonce;
    var domain = domainOf(global.location.hostname);
    return Promise.resolve().then(function () {
      nonce = randomNonce();
      var wire = sealed ? seal(keys.callEnc, body, callAad(ts, nonce, path, domain)) : Promise.resolve(body);
      return wire.then(function (bytes) {
        return sign(key, ts, nonce, path, domain, bytes).then(function (signed) {
          var headers = {
            "Authorization": authorization(session.sid, ts, nonce, signed.mac),
            "Content-Type": sealed ? SEALED_TYPE : "application/json"
          };
          return post(path, headers, bytes);
        });
      }).then(function (answer) {
        var status = answer.response.status;
        var header = answer.response.headers.get("Server-Authorization");
        var payload = parseJson(answer.bytes);
        if (header === null) {
          var name = payload && payload.exc;
          if (status >= 400 && Object.prototype.hasOwnProperty.call(UNSIGNED, name) && UNSIGNED[name] === status) {
            // Unsigned by necessity: act on the status, trust nothing else.
            var error = failure(name, status, payload.err && payload.err[0] ? String(payload.err[0]) : name,
              { unsigned: true });
            if (name === "Abusive" || name === "ServiceUnavailable") {
              error.retry_after = retryAfter(answer.response, payload);
            }
            if (SESSION_ENDED[name] && state === session) {
              return forget().then(function () { throw error; });
            }
            throw error;
          }
          if (status >= 500) {
            // A 500 from before the MAC verified, or a proxy's 502/503/504: no answer of the call, which may have
            // run (section 14). Report its status and X-Request-Id; use nothing of its body.
            var requestId = answer.response.headers.get("X-Request-Id");
            throw failure("ServerFailure", status, "the server failed to answer the call (HTTP " + status +
              (requestId ? "; request id " + requestId : "") + "); it may have run", { request_id: requestId });
          }
          throw failure("InvalidResponseSignature", status, "the server's answer is not signed");
        }
        return verifyResponse(keys ? keys.answerMac : key, nonce, status, answer.bytes, header).then(function (valid) {
          if (!valid) throw failure("InvalidResponseSignature", status, "the server's answer has a wrong signature");
          var sealedAnswer = isSealed(answer.response.headers.get("Content-Type"));
          if (sealed !== sealedAnswer) {
            throw failure("Error", status, sealed ? "a signed answer to a sealed call is not sealed"
              : "a sealed answer to a plain call");
          }
          if (!sealed) return payload;
          return openEnvelope(keys.answerEnc, answer.bytes, answerAad(nonce, status)).then(parseJson, function () {
            throw failure("Error", status, "the sealed answer does not open with this session's key");
          });
        }).then(function (opened) {
          payload = opened;
          if (payload === undefined) throw failure("Error", status, "the server's answer is not JSON");
          if (status === 401 && payload && payload.exc === "StaleCall") {
            setOffset(payload.server_time, answer.sentAt, answer.receivedAt);
            if (!retried) return signedPost(path, body, true);
          }
          var exc = status >= 400 && payload ? payload.exc : null;
          if (!Object.prototype.hasOwnProperty.call(NOT_SLID, exc)) {
            slideExpiry(session, answer.response.headers.get("Session-Expires"));
          }
          if (status >= 200 && status < 300) {
            return { status: status, payload: payload };
          }
          var refused = errorFromBody(payload, status);
          if (Object.prototype.hasOwnProperty.call(SESSION_ENDED, exc) && state === session) {
            // A session that ended between steps 7 and 10: signed, and just as final.
            return forget().then(function () { throw refused; });
          }
          throw refused;
        });
      });
    });
  }

  /** Whether the session has been idle longer than its idle timeout, on this page's clock. */
  function expiredHere(session) {
    return session.idle > 0 && typeof session.seen === "number" && now() - session.seen >= session.idle + EXPIRY_MARGIN;
  }

  /** Seconds to wait (section 2): the body's retry_after; the Retry-After header only when the body has none. */
  function retryAfter(response, payload) {
    var seconds = payload && typeof payload.retry_after === "number" ? payload.retry_after : NaN;
    if (!(seconds > 0)) {
      var header = response.headers.get("Retry-After");
      seconds = /^[0-9]+$/.test(header || "") ? parseInt(header, 10) : NaN;
    }
    return seconds > 0 ? Math.ceil(seconds) : 1;
  }

  /** A call slid the session: note when, and its new expiry (`Session-Expires`, section 4, else estimated). */
  function slideExpiry(session, told) {
    if (state !== session || !session.idle) return;
    session.seen = now();
    session.expires = /^[0-9]+$/.test(told || "") ? parseInt(told, 10) : Math.floor(now() + clockOffset + session.idle);
    save();
    // Keep the key entry's expiry ahead of the session's, so no start-up purges a live tab's key.
    if (session.kid && Math.ceil(localExpiry(session)) > session.keptUntil) keepKey(session).catch(noop);
  }

  function callBody(args) {
    if (args.length === 0) return "";
    var one = args[0];
    if (args.length === 1 && one !== null && typeof one === "object" && Object.getPrototypeOf(one) === Object.prototype) {
      return JSON.stringify({ kwargs: one });
    }
    return JSON.stringify({ args: args });
  }

  // -- public API -----------------------------------------------------------

  /** The session's idle timeout from a login answer (section 3): its `limits`, else `expires − server_time`. */
  function idleTimeout(body) {
    var limits = body.limits;
    if (limits && typeof limits.idle_timeout === "number" && limits.idle_timeout > 0) return limits.idle_timeout;
    return typeof body.expires === "number" && typeof body.server_time === "number"
      ? Math.max(0, body.expires - body.server_time) : 0;
  }

  /** Log in; Promise of the user ({username, domain}). `force` ends the user's other sessions; `code` is the
   *  second factor (a TOTP code or a recovery code), which a user with two-step sign-in needs: without it the
   *  login rejects with SecondFactorRequired (section 3), and the page asks for it and logs in again. */
  function login(username, password, force, code) {
    var payload = { username: username, password: password };
    if (force) payload.force = true;
    if (typeof code === "string" && code) payload.code = code;
    return openSession("/auth/login", payload);
  }

  /**
   * The options of a passkey login (section 17): Promise of the `publicKey` request options, as JSON (b64url
   * strings where WebAuthn takes bytes). With a username, the challenge serves only that user's passkey.
   */
  function passkeyOptions(username) {
    return restoring.then(function () {
      var payload = username ? { username: username } : {};
      return post("/auth/passkey/options", { "Content-Type": "application/json" }, JSON.stringify(payload));
    }).then(function (answer) {
      var body = parseJson(answer.bytes);
      if (answer.response.status !== 200) {
        var error = errorFromBody(body, answer.response.status);
        if (error.exc === "Abusive") error.retry_after = retryAfter(answer.response, body);
        throw error;
      }
      if (!body || typeof body.publicKey !== "object") throw failure("Error", 200, "unexpected passkey options");
      return body.publicKey;
    }).catch(reject);
  }

  /** Log in with a passkey's assertion (its JSON form, section 17); Promise of the user, as `login`. */
  function passkeyLogin(credential, force) {
    var payload = { credential: credential };
    if (force) payload.force = true;
    return openSession("/auth/passkey/login", payload);
  }

  /** Send a login body to `path` and keep the session it opens (section 3's answer); Promise of the user. */
  function openSession(path, payload) {
    var answer;
    var body;
    var pair = null;
    return restoring.then(function () {
      subtle();
      if (options.version < 2) return null;
      return newKeyPair().then(function (made) {
        pair = made;
        payload.public_key = pair.public;
      });
    }).then(function () {
      return post(path, { "Content-Type": "application/json" }, JSON.stringify(payload));
    }).then(function (got) {
      answer = got;
      var status = answer.response.status;
      body = parseJson(answer.bytes);
      answer.bytes.fill(0);  // the answer's bytes hold the key
      if (status !== 200) {
        var error = errorFromBody(body, status);
        if (error.exc === "Abusive" || error.exc === "AccountLocked") {
          error.retry_after = retryAfter(answer.response, body);
        }
        throw error;
      }
      if (pair) {
        if (!body || typeof body.sid !== "string" || body.version !== 2 || typeof body.public_key !== "string" ||
            body.key !== undefined) {
          return endDowngraded(body);
        }
        return deriveKeys(pair.privateKey, pair.public, body.public_key, body.sid,
          domainOf(global.location.hostname)).then(function (keys) {
          return { key: keys.callMac, keys: keys };
        }, function () {
          throw failure("Error", status, "the login answer's public_key is not a P-256 point");
        });
      }
      if (!body || typeof body.sid !== "string" || typeof body.key !== "string") {
        throw failure("Error", status, "unexpected login answer");
      }
      var raw = b64urlDecode(body.key);
      delete body.key;
      return subtle().importKey("raw", raw, { name: "HMAC", hash: "SHA-256" }, false, ["sign", "verify"])
        .then(function (key) {
          raw.fill(0);
          return { key: key, keys: null };
        }, function (e) {
          raw.fill(0);
          throw e;
        });
    }).then(function (made) {
      var key = made.key;
      var offset = offsetFrom(body.server_time, answer.sentAt, answer.receivedAt);
      if (offset !== null) clockOffset = offset;
      var session = {
        sid: body.sid,
        key: key,
        keys: made.keys,
        kid: store() ? randomId() : null,
        expires: body.expires,
        user: body.user,
        offset: clockOffset,
        idle: idleTimeout(body),
        seen: answer.receivedAt,
        keptUntil: 0,
        // "enrol": the tenant requires two-step sign-in and the user has none yet (section 3); not saved
        secondFactor: body.second_factor === "enrol" ? "enrol" : null
      };
      var kept = session.kid ? keepKey(session).then(function () { return true; }, function () { return false; })
        : Promise.resolve(false);
      return kept.then(function (stored) {
        if (!stored) session.kid = null;  // no IndexedDB: this page's memory only
        var previous = state;
        state = session;
        save();
        return previous && previous.kid ? dropKey(previous.kid) : null;
      }).then(function () {
        return body.user;
      });
    }).catch(reject);
  }

  /**
   * A version-2 login answered the version-1 way: end the session whose key travelled, signing the logout with
   * that key (whoever else read it can then sign nothing), use nothing of it, and reject with DowngradeRefused.
   */
  function endDowngraded(body) {
    var refused = failure("DowngradeRefused", 0, "the login was downgraded to version 1 on its way: refused");
    if (!body || typeof body.sid !== "string" || typeof body.key !== "string") return Promise.reject(refused);
    var path = "/auth/logout";
    var ts = String(Math.floor(now() + clockOffset));
    var nonce = randomNonce();
    return sign(body.key, ts, nonce, path, domainOf(global.location.hostname), "").then(function (signed) {
      delete body.key;
      return post(path, { "Authorization": authorization(body.sid, ts, nonce, signed.mac) }, "");
    }).then(function () { throw refused; }, function () { throw refused; });
  }

  /** Log out; Promise of true. The session is forgotten here whatever the server answers. */
  function logout() {
    return restoring.then(function () {
      if (!state) return true;
      return signedPost("/auth/logout", "").then(function (answer) {
        return forget().then(function () { return answer.payload.result; });
      }, function (error) {
        return forget().then(function () { throw error; });
      });
    }).catch(reject);
  }

  /** Call a service: Promise of its result. One plain-object argument is sent as kwargs, others as args. */
  function safe_call(name) {
    var args = Array.prototype.slice.call(arguments, 1);
    return restoring.then(function () {
      if (typeof name !== "string" || !SERVICE_NAME.test(name)) {
        throw failure("InvalidCall", 0, "not a service name: " + name);
      }
      subtle();
      return signedPost("/api/" + name, callBody(args));
    }).then(function (answer) {
      return answer.payload.result;
    }).catch(reject);
  }

  /** Choose the protocol for the next logins: {version: 1 or 2, encrypt: true or false (version 2 only)}. */
  function configure(choice) {
    if (choice && choice.version !== undefined) {
      if (choice.version !== 1 && choice.version !== 2) throw new TypeError("version is 1 or 2");
      options.version = choice.version;
    }
    if (choice && choice.encrypt !== undefined) options.encrypt = !!choice.encrypt;
    return { version: options.version, encrypt: options.version === 2 && options.encrypt };
  }

  var Bastion = {
    version: 2,
    configure: configure,
    login: login,
    passkeyOptions: passkeyOptions,
    passkeyLogin: passkeyLogin,
    logout: logout,
    safe_call: safe_call,
    /** Handlers by exc name, called before a Promise rejects; `Error` is the fallback. */
    exc: {},
    /** The current session ({sid, expires, user, offset}), or null. */
    session: sessionView,
    /** The logged-in user ({username, domain}), or null. */
    user: function () { return state ? state.user : null; },
    /** Forget the session locally (sessionStorage and its key entry) without telling the server; Promise. */
    forget: function () { return restoring.then(forget); },
    // Pure helpers, for tests and other clients.
    _b64url: b64url,
    _b64urlDecode: b64urlDecode,
    _domain: domainOf,
    _sha256: sha256b64,
    _requestString: requestString,
    _responseString: responseString,
    _sign: sign,
    _authorization: authorization,
    _responseMac: responseMac,
    _verifyResponse: verifyResponse,
    _parseServerAuthorization: parseServerAuthorization,
    _callBody: function () { return callBody(Array.prototype.slice.call(arguments)); },
    _kdfInfo: kdfInfo,
    _deriveKeys: deriveKeys,
    _callAad: callAad,
    _answerAad: answerAad,
    _seal: seal,
    _open: openEnvelope
  };

  var restoring = restore();
  /** Promise of the session restored at start-up (as `session()` gives it), or of null. */
  Bastion.ready = restoring;
  global.Bastion = Bastion;
})(typeof window !== "undefined" ? window : this);
