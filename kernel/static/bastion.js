/*
 * bastion.js — the Bastion browser client (PROTOCOL.md, version 1).
 *
 * No build step, no dependency: load it with
 *   <script src="/bastion/bastion.js"></script>
 * and use the global `Bastion`:
 *
 *   Bastion.login("alice", "s3cret")            // Promise of the session's user
 *   Bastion.safe_call("add", "Play with Fanery")  // positional args
 *   Bastion.safe_call("update", {id, vsn, done: true})  // one plain object: kwargs
 *   Bastion.logout()
 *
 * Every call returns a Promise of the result. A failure rejects with the
 * server's error object {exc, err, status, ...} after calling the handler
 * `Bastion.exc[exc]` (or `Bastion.exc.Error` when there is none for that
 * name). Failures the client itself detects use these `exc` names:
 * InsecureContext (no WebCrypto), NetworkError, InvalidResponseSignature,
 * and UnknownSession (with `local: true`) for a call made while logged out.
 *
 * Calls are signed with HMAC-SHA256 (WebCrypto) exactly as section 4 says,
 * and every answer to a signed call is verified (`Server-Authorization`)
 * unless its status is one the server cannot sign (steps 1-8), in which case
 * only the status is acted upon. The session {sid, key, expires, user,
 * offset} is kept in sessionStorage, so a reload of the tab stays logged in.
 */
(function (global) {
  "use strict";

  var SCHEME = "Bastion-HMAC";
  var STORE_KEY = "bastion.session";
  var SERVICE_NAME = /^[A-Za-z_][A-Za-z0-9_.-]{0,127}$/;
  var B64URL = /^[A-Za-z0-9_-]*$/;

  // Answers of steps 1-8 of section 4, which the server cannot sign: name -> status.
  // (InvalidCall answers a query string at step 5; ServiceUnavailable a session
  // store that cannot be reached at step 7.) Only their status is acted upon.
  var UNSIGNED = {
    InvalidHost: 400,
    RequireSSL: 403,
    Abusive: 429,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    InvalidCall: 400,
    Unauthorized: 401,
    UnknownSession: 401,
    ExpiredSession: 401,
    InvalidSignature: 401,
    ServiceUnavailable: 503
  };
  // After these the session is gone for good: forget it.
  var SESSION_ENDED = { UnknownSession: true, ExpiredSession: true };

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

  /** The mac of a `Server-Authorization` header value, or null when it is malformed. */
  function parseServerAuthorization(value) {
    var match = /^\s*bastion-hmac\s+mac="([A-Za-z0-9_-]{43})"\s*$/i.exec(value || "");
    return match ? match[1] : null;
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

  var state = null;      // {sid, key, expires, user, offset, idle}
  var cryptoKey = null;  // Promise of the CryptoKey of state.key
  var clockOffset = 0;   // server time minus local time, in seconds

  function store() {
    try {
      return global.sessionStorage;
    } catch (e) {
      return null;
    }
  }

  function save() {
    var s = store();
    if (!s) return;
    if (state) s.setItem(STORE_KEY, JSON.stringify(state));
    else s.removeItem(STORE_KEY);
  }

  function restore() {
    var s = store();
    var raw = s && s.getItem(STORE_KEY);
    if (!raw) return;
    try {
      var saved = JSON.parse(raw);
      if (saved && typeof saved.sid === "string" && typeof saved.key === "string") {
        state = saved;
        clockOffset = Number(saved.offset) || 0;
      }
    } catch (e) {
      s.removeItem(STORE_KEY);
    }
  }

  function forget() {
    state = null;
    cryptoKey = null;
    save();
  }

  function now() {
    return Date.now() / 1000;
  }

  function setOffset(serverTime, sentAt, receivedAt) {
    if (typeof serverTime !== "number" || !isFinite(serverTime)) return;
    clockOffset = serverTime - (sentAt + receivedAt) / 2;
    if (state) {
      state.offset = clockOffset;
      save();
    }
  }

  function currentKey() {
    if (!cryptoKey) cryptoKey = importKey(state.key);
    return cryptoKey;
  }

  function sessionView() {
    if (!state) return null;
    return { sid: state.sid, expires: state.expires, user: state.user, offset: state.offset };
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
    var session = state;
    var ts = String(Math.floor(now() + clockOffset));
    var nonce;
    var domain = domainOf(global.location.hostname);
    return Promise.resolve().then(function () {
      nonce = randomNonce();
      return currentKey();
    }).then(function (key) {
      return sign(key, ts, nonce, path, domain, body).then(function (signed) {
        var headers = {
          "Authorization": authorization(session.sid, ts, nonce, signed.mac),
          "Content-Type": "application/json"
        };
        return post(path, headers, body);
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
            if (SESSION_ENDED[name] && state === session) forget();
            throw error;
          }
          throw failure("InvalidResponseSignature", status, "the server's answer is not signed");
        }
        return verifyResponse(key, nonce, status, answer.bytes, header).then(function (valid) {
          if (!valid) throw failure("InvalidResponseSignature", status, "the server's answer has a wrong signature");
          if (payload === undefined) throw failure("Error", status, "the server's answer is not JSON");
          if (status === 401 && payload && payload.exc === "StaleCall") {
            setOffset(payload.server_time, answer.sentAt, answer.receivedAt);
            if (!retried) return signedPost(path, body, true);
          }
          if (status >= 200 && status < 300) {
            slideExpiry(session);
            return { status: status, payload: payload };
          }
          throw errorFromBody(payload, status);
        });
      });
    });
  }

  function retryAfter(response, payload) {
    var seconds = parseInt(response.headers.get("Retry-After"), 10);
    if (!(seconds > 0) && payload && typeof payload.retry_after === "number") seconds = payload.retry_after;
    return seconds > 0 ? seconds : 1;
  }

  function slideExpiry(session) {
    if (state !== session || !session.idle) return;
    session.expires = Math.floor(now() + clockOffset + session.idle);
    save();
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

  /** Log in; Promise of the user ({username, domain}). `force` ends the user's other sessions. */
  function login(username, password, force) {
    var payload = { username: username, password: password };
    if (force) payload.force = true;
    return Promise.resolve().then(function () {
      subtle();
      return post("/auth/login", { "Content-Type": "application/json" }, JSON.stringify(payload));
    }).then(function (answer) {
      var status = answer.response.status;
      var body = parseJson(answer.bytes);
      if (status !== 200) {
        var error = errorFromBody(body, status);
        if (error.exc === "Abusive" || error.exc === "AccountLocked") {
          error.retry_after = retryAfter(answer.response, body);
        }
        throw error;
      }
      if (!body || typeof body.sid !== "string" || typeof body.key !== "string") {
        throw failure("Error", status, "unexpected login answer");
      }
      b64urlDecode(body.key);
      cryptoKey = null;
      state = {
        sid: body.sid,
        key: body.key,
        expires: body.expires,
        user: body.user,
        offset: 0,
        idle: typeof body.expires === "number" && typeof body.server_time === "number"
          ? Math.max(0, body.expires - body.server_time) : 0
      };
      setOffset(body.server_time, answer.sentAt, answer.receivedAt);
      save();
      return body.user;
    }).catch(reject);
  }

  /** Log out; Promise of true. The session is forgotten here whatever the server answers. */
  function logout() {
    if (!state) return Promise.resolve(true);
    return signedPost("/auth/logout", "").then(function (answer) {
      forget();
      return answer.payload.result;
    }, function (error) {
      forget();
      throw error;
    }).catch(reject);
  }

  /** Call a service: Promise of its result. One plain-object argument is sent as kwargs, others as args. */
  function safe_call(name) {
    var args = Array.prototype.slice.call(arguments, 1);
    return Promise.resolve().then(function () {
      if (typeof name !== "string" || !SERVICE_NAME.test(name)) {
        throw failure("InvalidCall", 0, "not a service name: " + name);
      }
      subtle();
      return signedPost("/api/" + name, callBody(args));
    }).then(function (answer) {
      return answer.payload.result;
    }).catch(reject);
  }

  var Bastion = {
    version: 1,
    login: login,
    logout: logout,
    safe_call: safe_call,
    /** Handlers by exc name, called before a Promise rejects; `Error` is the fallback. */
    exc: {},
    /** The current session ({sid, expires, user, offset}), or null. */
    session: sessionView,
    /** The logged-in user ({username, domain}), or null. */
    user: function () { return state ? state.user : null; },
    /** Forget the session locally without telling the server. */
    forget: forget,
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
    _callBody: function () { return callBody(Array.prototype.slice.call(arguments)); }
  };

  restore();
  global.Bastion = Bastion;
})(typeof window !== "undefined" ? window : this);
