/*
 * The account panel's "Two-step sign-in" section (docs/todo.md): turn it on (a QR code and the key for an
 * authenticator app, confirmed by a first code), show the ten recovery codes once, renew them, turn it off
 * (with the password or a code). The services are the auth plugin's totp_* (docs/protocol.md section 5).
 * app.js calls TodoTwoStep.open() when the account panel opens and TodoTwoStep.close() when it closes.
 */
(function () {
  "use strict";

  var root = document.querySelector("#account .two-step");
  if (!root) return;
  var $ = function (selector) { return root.querySelector(selector); };
  var el = {
    state: $(".two-step-state"),
    begin: $(".two-step-begin"),
    enrol: $(".two-step-enrol"),
    qr: $(".two-step-qr"),
    secret: $(".two-step-secret"),
    codes: $(".two-step-codes"),
    codeList: $(".two-step-code-list"),
    disable: $(".two-step-disable")
  };
  var alert = document.querySelector(".alert");
  var open = false;

  function say(message) {
    alert.textContent = message || "";
  }

  function describe(error, what) {
    switch (error && error.exc) {
      case "ValidationError":
        return what === "confirm" ? "That code is wrong: type the code the app shows now." : "The server refused this.";
      case "InvalidCredential":
        return "That password or code is wrong.";
      case "AccountLocked":
        return "Too many failed attempts: your account is locked for a while.";
      case "Forbidden":
        return "Two-step sign-in is turned off on this server.";
      case "UnknownSession":
      case "ExpiredSession":
        return "";  // app.js shows the sign-in form
      default:
        return "Something went wrong" + (error && error.exc ? " (" + error.exc + ")" : "") + ". Please try again.";
    }
  }

  function failed(what) {
    return function (error) {
      var message = describe(error, what);
      if (message) say(message);
    };
  }

  function hideAll() {
    el.begin.hidden = true;
    el.enrol.hidden = true;
    el.disable.hidden = true;
    el.enrol.reset();
    el.disable.reset();
  }

  function render(status) {
    if (!open) return;
    hideAll();
    if (status.enabled) {
      el.state.textContent = "On: signing in asks for a code from your app. " + status.recovery_codes +
        " recovery code" + (status.recovery_codes === 1 ? "" : "s") + " left.";
      el.disable.hidden = false;
    } else {
      el.state.textContent = status.policy === "required"
        ? "Off. This server requires it: turn it on to use your todos."
        : "Off: signing in asks for your password only.";
      el.begin.hidden = status.policy === "off";
    }
  }

  function load() {
    return Bastion.safe_call("totp_status").then(render, failed("status"));
  }

  function showCodes(codes) {
    el.codeList.replaceChildren();
    codes.forEach(function (code) {
      var item = document.createElement("li");
      var text = document.createElement("code");
      text.textContent = code;
      item.appendChild(text);
      el.codeList.appendChild(item);
    });
    el.codes.hidden = false;
  }

  el.begin.addEventListener("click", function () {
    say("");
    el.codes.hidden = true;
    Bastion.safe_call("totp_begin").then(function (begun) {
      hideAll();
      el.qr.src = begun.qr;
      el.secret.textContent = begun.secret;
      el.state.textContent = "Not on yet: confirm with a code from the app.";
      el.enrol.hidden = false;
      el.enrol.elements.code.focus();
    }, failed("begin"));
  });

  el.enrol.addEventListener("submit", function (event) {
    event.preventDefault();
    say("");
    var code = el.enrol.elements.code.value.trim();
    if (!code) return;
    Bastion.safe_call("totp_confirm", code).then(function (codes) {
      el.qr.removeAttribute("src");
      el.secret.textContent = "";
      showCodes(codes);
      return load();
    }, failed("confirm"));
  });

  el.disable.addEventListener("submit", function (event) {
    event.preventDefault();
    say("");
    var proof = el.disable.elements.proof.value;
    if (!proof) return;
    var action = event.submitter && event.submitter.value === "renew" ? "totp_recovery_codes" : "totp_disable";
    // Six digits are a code from the app, a recovery code has dashes; anything else is the password.
    var compact = proof.replace(/[\s-]/g, "");
    var kwargs = /^[0-9]{6}$/.test(compact) || (/^[A-Za-z0-9]{16}$/.test(compact) && proof.indexOf("-") >= 0)
      ? { code: proof } : { password: proof };
    Bastion.safe_call(action, kwargs).then(function (result) {
      el.codes.hidden = true;
      if (action === "totp_recovery_codes") showCodes(result);
      return load();
    }, failed(action));
  });

  window.TodoTwoStep = {
    open: function () {
      open = true;
      var user = Bastion.user();
      el.disable.elements.username.value = user && user.username ? user.username : "";
      el.codes.hidden = true;
      load();
    },
    close: function () {
      open = false;
      hideAll();
      el.codes.hidden = true;
      el.codeList.replaceChildren();
      el.qr.removeAttribute("src");
      el.secret.textContent = "";
      el.state.textContent = "";
    }
  };
})();
