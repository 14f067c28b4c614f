/*
 * passkeys.js — passkeys in the todo app (docs/todo.md, "Passkeys"; docs/protocol.md section 17).
 *
 * The sign-in form's "Sign in with a passkey" (with the username typed, only that user's passkey serves;
 * without, the browser offers the passkeys it holds for this domain), and the account panel's list of the
 * user's passkeys: add, rename, remove. WebAuthn's options and credentials travel as JSON, b64url where
 * WebAuthn takes bytes; this file converts them. It uses `Bastion` (bastion.js) and `TodoApp` (app.js).
 */
(function () {
  "use strict";

  var $ = function (selector, root) { return (root || document).querySelector(selector); };
  var app = window.TodoApp;
  var el = {
    form: $("#login"),
    loginButton: $(".passkey-login"),
    section: $("#account .passkeys"),
    list: $(".passkey-list"),
    add: $(".passkey-add"),
    accountOpen: $(".account-open"),
    panel: $("#account")
  };
  var supported = !!(window.PublicKeyCredential && navigator.credentials);

  // -- WebAuthn's bytes and JSON ---------------------------------------------

  function bytes(text) {
    return Bastion._b64urlDecode(text).buffer;
  }

  function text(buffer) {
    return Bastion._b64url(new Uint8Array(buffer));
  }

  function creationOptions(json) {
    var options = Object.assign({}, json);
    options.challenge = bytes(json.challenge);
    options.user = Object.assign({}, json.user, { id: bytes(json.user.id) });
    options.excludeCredentials = (json.excludeCredentials || []).map(function (c) {
      return Object.assign({}, c, { id: bytes(c.id) });
    });
    return options;
  }

  function requestOptions(json) {
    var options = Object.assign({}, json);
    options.challenge = bytes(json.challenge);
    if (json.allowCredentials) {
      options.allowCredentials = json.allowCredentials.map(function (c) {
        return Object.assign({}, c, { id: bytes(c.id) });
      });
    }
    return options;
  }

  function credentialJSON(credential) {
    var response = credential.response;
    var json = {
      id: credential.id,
      rawId: text(credential.rawId),
      type: credential.type,
      authenticatorAttachment: credential.authenticatorAttachment || undefined,
      clientExtensionResults: credential.getClientExtensionResults ? credential.getClientExtensionResults() : {},
      response: { clientDataJSON: text(response.clientDataJSON) }
    };
    if (response.attestationObject) {
      json.response.attestationObject = text(response.attestationObject);
      if (response.getTransports) json.response.transports = response.getTransports();
    } else {
      json.response.authenticatorData = text(response.authenticatorData);
      json.response.signature = text(response.signature);
      if (response.userHandle) json.response.userHandle = text(response.userHandle);
    }
    return json;
  }

  /** A failure in plain words: the browser's own (the user cancelled), the server's, or app.js's words. */
  function describe(error, adding) {
    if (error && error.name === "NotAllowedError") {
      return adding ? "No passkey was added." : "No passkey was used. Try again, or sign in with your password.";
    }
    if (error && error.name === "InvalidStateError") return "This device already holds a passkey of yours.";
    switch (error && error.exc) {
      case "InvalidCredential":
        return adding ? "The passkey could not be added. Please try again." : "This passkey was refused. Please try again.";
      case "NotFound":
        return "Passkeys are off on this site.";
      case "PasskeyRequired":
        return "This account signs in with a passkey.";
      case "ValidationError":
        if (error.fields && error.fields.passkeys) return "You have as many passkeys as you may.";
        return "A passkey's name has 1 to 64 characters.";
      case "RecordNotFound":
        return "That passkey was removed meanwhile.";
      default:
        return app.describe(error);
    }
  }

  // -- signing in ------------------------------------------------------------

  function signIn() {
    var username = el.form.elements.username.value.trim();
    var force = el.form.elements.force.checked;
    app.say("");
    el.loginButton.disabled = true;
    Bastion.passkeyOptions(username || null).then(function (options) {
      return navigator.credentials.get({ publicKey: requestOptions(options) });
    }).then(function (credential) {
      if (!credential) throw { name: "NotAllowedError" };
      return Bastion.passkeyLogin(credentialJSON(credential), force);
    }).then(function (user) {
      return app.signedIn(user);
    }).catch(function (error) {
      if (error && error.exc === "MaxActiveSessions") $(".force", el.form).hidden = false;
      if (error && error.exc === "NotFound") el.loginButton.hidden = true;
      app.say(describe(error, false));
    }).then(function () {
      el.loginButton.disabled = false;
    });
  }

  // -- the account panel -----------------------------------------------------

  function load() {
    if (el.panel.hidden) return Promise.resolve();
    return Bastion.safe_call("passkeys").then(function (answer) {
      if (answer.mode === "off") {
        el.section.hidden = true;  // off in this domain: nothing to offer
        return;
      }
      render(answer.passkeys);
    }, function (error) {
      var exc = error && error.exc;
      el.section.hidden = true;  // off in this domain, or not for this user
      if (exc !== "NotFound" && exc !== "Forbidden" && exc !== "UnknownSession" && exc !== "ExpiredSession") {
        app.say(describe(error, false));
      }
    });
  }

  function render(passkeys) {
    el.section.hidden = !supported;
    el.list.replaceChildren();
    passkeys.forEach(function (passkey) {
      var li = document.createElement("li");
      li.className = "passkey";
      li.dataset.id = passkey.id;
      var name = document.createElement("strong");
      name.className = "passkey-name";
      name.textContent = passkey.name;
      var times = document.createElement("span");
      times.className = "times";
      times.textContent = "added " + app.when(passkey.created) + " · " +
        (passkey.last_used ? "last used " + app.when(passkey.last_used) : "never used");
      var rename = document.createElement("button");
      rename.type = "button";
      rename.className = "passkey-rename";
      rename.textContent = "Rename";
      rename.setAttribute("aria-label", "Rename the passkey " + passkey.name);
      var remove = document.createElement("button");
      remove.type = "button";
      remove.className = "passkey-remove";
      remove.textContent = "Remove";
      remove.setAttribute("aria-label", "Remove the passkey " + passkey.name);
      li.append(name, " ", times, rename, remove);
      el.list.append(li);
    });
    if (!passkeys.length) {
      var none = document.createElement("li");
      none.className = "passkey-none";
      none.textContent = "No passkey yet.";
      el.list.append(none);
    }
  }

  function add(event) {
    event.preventDefault();
    var name = el.add.elements.name.value.trim() || "Passkey";
    var button = $("button", el.add);
    button.disabled = true;
    app.say("");
    Bastion.safe_call("passkey_options").then(function (options) {
      return navigator.credentials.create({ publicKey: creationOptions(options.publicKey) });
    }).then(function (credential) {
      if (!credential) throw { name: "NotAllowedError" };
      return Bastion.safe_call("add_passkey", credentialJSON(credential), name);
    }).then(function (passkey) {
      app.tell("Added the passkey \u201c" + passkey.name + "\u201d.");
      return load();
    }).catch(function (error) {
      app.say(describe(error, true));
    }).then(function () {
      button.disabled = false;
    });
  }

  function startRenaming(li) {
    var name = $(".passkey-name", li);
    var input = document.createElement("input");
    input.type = "text";
    input.className = "passkey-new-name";
    input.maxLength = 64;
    input.value = name.textContent;
    input.setAttribute("aria-label", "New name of the passkey " + name.textContent);
    var save = document.createElement("button");
    save.type = "button";
    save.className = "passkey-save";
    save.textContent = "Save";
    name.replaceWith(input);
    $(".passkey-rename", li).replaceWith(save);
    input.focus();
    input.select();
  }

  function saveName(li) {
    var input = $(".passkey-new-name", li);
    app.say("");
    Bastion.safe_call("rename_passkey", li.dataset.id, input.value.trim()).then(function (passkey) {
      app.tell("Renamed the passkey \u201c" + passkey.name + "\u201d.");
    }, function (error) {
      app.say(describe(error, false));
    }).then(load);
  }

  function remove(li) {
    app.say("");
    var name = $(".passkey-name", li);
    Bastion.safe_call("remove_passkey", li.dataset.id).then(function () {
      app.tell("Removed the passkey \u201c" + (name ? name.textContent : "") + "\u201d.");
    }, function (error) {
      app.say(describe(error, false));
    }).then(load);
  }

  // -- wiring ----------------------------------------------------------------

  if (supported) {
    el.loginButton.hidden = false;
    el.loginButton.addEventListener("click", signIn);
  }
  el.add.addEventListener("submit", add);
  el.list.addEventListener("click", function (event) {
    var li = event.target.closest("li.passkey");
    if (!li) return;
    if (event.target.classList.contains("passkey-rename")) startRenaming(li);
    else if (event.target.classList.contains("passkey-save")) saveName(li);
    else if (event.target.classList.contains("passkey-remove")) remove(li);
  });
  el.list.addEventListener("keydown", function (event) {
    var li = event.target.closest("li.passkey");
    if (li && event.target.classList.contains("passkey-new-name")) {
      if (event.key === "Enter") saveName(li);
      else if (event.key === "Escape") load();
    }
  });
  // app.js opens the panel on the same click (its listener runs first): then the list is loaded.
  el.accountOpen.addEventListener("click", function () { load(); });
})();
