/*
 * The Bastion todo UI: TodoMVC's behaviour and markup over signed calls (bastion.js).
 *
 * Every change goes to the server through one queue, so that each call reads
 * the version the previous one returned and the tab never conflicts with
 * itself; a VersionConflict therefore means another tab or user changed the
 * todo, and the list is reloaded.
 *
 * The account panel changes the password (with the current one) and lists
 * where the user is signed in, with a button that signs out the others.
 *
 * The history panel shows who changed a todo, what and when, newest first,
 * a page at a time; it is offered only to users who may call `history`
 * (the `permitted` service says which todo services the user may call).
 *
 * A new todo or an edit the server refuses keeps its text in its input, with
 * the reason beside it.
 */
(function () {
  "use strict";

  var ENTER = "Enter";
  var ESCAPE = "Escape";
  var FILTERS = { "#/": "all", "#/active": "active", "#/completed": "completed" };

  var $ = function (selector, root) { return (root || document).querySelector(selector); };
  var $$ = function (selector, root) { return Array.prototype.slice.call((root || document).querySelectorAll(selector)); };

  var el = {
    domains: $$(".domain"),
    account: $(".account"),
    username: $(".username"),
    logout: $(".logout"),
    accountOpen: $(".account-open"),
    accountPanel: $("#account"),
    accountTitle: $("#account-title"),
    accountClose: $(".account-close"),
    password: $("#password"),
    passwordUsername: $("#password .password-username"),
    sessionList: $(".session-list"),
    endSessions: $(".end-sessions"),
    newTodo: $(".new-todo"),
    newTodoError: $("#new-todo-error"),
    historyPanel: $("#history"),
    historyTitle: $("#history-title"),
    historyText: $("#history .history-text"),
    historyList: $(".history-list"),
    historyPages: $(".history-pages"),
    historyRange: $(".history-range"),
    historyNewer: $(".history-newer"),
    historyOlder: $(".history-older"),
    historyClose: $(".history-close"),
    alert: $(".alert"),
    notice: $(".notice"),
    login: $("#login"),
    force: $("#login .force"),
    loginCode: $("#login .login-code"),
    main: $(".main"),
    toggleAll: $(".toggle-all"),
    list: $(".todo-list"),
    footer: $(".footer"),
    count: $(".todo-count"),
    filters: $$(".filters a"),
    clearCompleted: $(".clear-completed"),
    hint: $(".info .hint")
  };

  var todos = [];          // as the server last returned them, oldest first
  var items = new Map();   // id -> <li>
  var editing = null;      // id of the todo being edited
  var queue = Promise.resolve();
  var signedIn = false;
  var view = "todos";      // or "account" or "history": a panel instead of the list
  var permitted = new Set();  // the todo services this user may call (the `permitted` service)
  // The history panel: its todo's id, its versions newest first, each with what it changed, and the page shown.
  var shownHistory = { id: null, entries: [], page: 0 };
  var HISTORY_PAGE = 10;

  // -- words ----------------------------------------------------------------

  function plural(n, one, many) {
    return n === 1 ? one : many;
  }

  function minutes(seconds) {
    var n = Math.max(1, Math.ceil((Number(seconds) || 60) / 60));
    return number(n) + " " + plural(n, "minute", "minutes");
  }

  function number(n) {
    return Number(n).toLocaleString("en-US");
  }

  function when(seconds, timeStyle) {
    return new Date(seconds * 1000).toLocaleString(undefined, { dateStyle: "medium", timeStyle: timeStyle || "short" });
  }

  function quoted(text) {
    return "\u201c" + text + "\u201d";
  }

  /** A failure in plain words. */
  function describe(error) {
    var fields = (error && error.fields) || {};
    switch (error && error.exc) {
      case "InvalidCredential":
        return el.loginCode.hidden ? "Wrong username or password." : "Wrong username, password or code.";
      case "SecondFactorRequired":
        return "Enter the code your authenticator app shows (or a recovery code).";
      case "AccountLocked":
        return "Too many failed sign-ins for this account: it is locked for " + minutes(error.retry_after) + ".";
      case "Abusive":
        return "Too many bad requests from this address: banned for " + minutes(error.retry_after) + ".";
      case "MaxActiveSessions":
        return "You are already signed in on too many devices. Tick “Sign out my other sessions” to sign in here.";
      case "UnknownSession":
      case "ExpiredSession":
        return "Your session has ended. Please sign in again.";
      case "VersionConflict":
        return "This todo was changed elsewhere — reloaded.";
      case "RecordNotFound":
        return "This todo was removed elsewhere — reloaded.";
      case "ValidationError":
        if (fields.text && fields.text.too_long) {
          return "A todo can be at most " + number(1000) + " characters long; this one has " +
            number(fields.text.too_long) + ".";
        }
        if (fields.text && "invalid" in fields.text) return "A todo cannot be blank.";
        return "The server refused this change.";
      case "Forbidden":
        return "You are not allowed to do that.";
      case "StaleCall":
        return "This device's clock is too far from the server's. Please correct it and try again.";
      case "ServiceUnavailable":
        return "The server's storage is unavailable. Please try again shortly.";
      case "NetworkError":
        return "The server cannot be reached. Check your connection and try again.";
      case "InvalidResponseSignature":
        return "The server's answer could not be verified, so it was ignored.";
      case "InsecureContext":
        return "This page must be opened over HTTPS (or on localhost) to sign in securely.";
      default:
        return "Something went wrong" + (error && error.exc ? " (" + error.exc + ")" : "") + ". Please try again.";
    }
  }

  /** A failure of a password change, in plain words; the rest as everywhere else. */
  function describePasswordChange(error) {
    var rules = (error && error.fields && error.fields["new"]) || {};
    switch (error && error.exc) {
      case "InvalidCredential":
        return "Your current password is wrong.";
      case "ValidationError":
        if (rules.min_length) return "A password has at least " + number(rules.min_length) + " characters.";
        if (rules.max_length) return "A password has at most " + number(rules.max_length) + " characters.";
        return "The server refused this password.";
      case "VersionConflict":
        return "Your password was changed elsewhere meanwhile. Please try again.";
      default:
        return describe(error);
    }
  }

  /** An error, in the alert (and no good news beside it). */
  function say(message) {
    el.alert.textContent = message || "";
    if (message) el.notice.textContent = "";
  }

  /** Good news, in the status line (and no error beside it). */
  function tell(message) {
    el.notice.textContent = message || "";
    if (message) el.alert.textContent = "";
  }

  // -- screens --------------------------------------------------------------

  function showLogin() {
    signedIn = false;
    todos = [];
    editing = null;
    permitted = new Set();
    closeAccount(false);
    closeHistory(false);
    fieldError(el.newTodo, el.newTodoError, "");
    el.newTodo.value = "";
    tell("");
    el.login.hidden = false;
    el.account.hidden = true;
    el.newTodo.hidden = true;
    render();
    var username = el.login.elements.username;
    (username.value ? el.login.elements.password : username).focus();
  }

  function showApp(user) {
    signedIn = true;
    el.login.hidden = true;
    el.force.hidden = true;
    el.login.elements.force.checked = false;
    el.loginCode.hidden = true;
    el.login.elements.code.value = "";
    el.account.hidden = false;
    el.username.textContent = user && user.username ? user.username : "";
    el.passwordUsername.value = user && user.username ? user.username : "";
    el.newTodo.hidden = false;
    el.newTodo.focus();
  }

  /** What a signed-in tab loads: which todo services the user may call, then the list. Through the queue like every
   * change, so that a todo added meanwhile is sent after the list was read, never overwritten by an older list. */
  function load() {
    return enqueue(function () { return loadPermitted().then(reload); });
  }

  function loadPermitted() {
    return Bastion.safe_call("permitted").then(function (names) {
      permitted = new Set(names);
    }, function (error) {
      var exc = error && error.exc;
      if (exc !== "Forbidden" && exc !== "NotFound") throw error;
      permitted = new Set();  // a server that does not say: offer nothing beyond the list
    });
  }

  function may(service) {
    return permitted.has(service);
  }

  /** Show a field's error beside it (or none, with an empty message). */
  function fieldError(input, error, message) {
    error.textContent = message || "";
    error.hidden = !message;
    if (message) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
  }

  function sessionEnded(error) {
    say(describe(error));
    showLogin();
  }

  // -- the account panel ----------------------------------------------------

  function openAccount() {
    closeHistory(false);
    view = "account";
    say("");
    tell("");
    el.accountPanel.hidden = false;
    el.newTodo.hidden = true;
    el.accountOpen.setAttribute("aria-expanded", "true");
    render();
    el.accountTitle.focus();
    loadSessions();
    if (window.TodoTwoStep) window.TodoTwoStep.open();
  }

  function closeAccount(focus) {
    var wasOpen = view === "account";
    view = "todos";
    el.accountPanel.hidden = true;
    el.accountOpen.setAttribute("aria-expanded", "false");
    el.password.reset();
    if (window.TodoTwoStep) window.TodoTwoStep.close();
    el.sessionList.replaceChildren();
    el.endSessions.hidden = true;
    if (!wasOpen || !signedIn) return;
    el.newTodo.hidden = false;
    render();
    if (focus) el.accountOpen.focus();
    enqueue(reload);  // what others changed meanwhile
  }

  /** Report an account call's failure; a session that ended has shown the sign-in form already. */
  function accountFailed(error, words) {
    var exc = error && error.exc;
    if (exc === "UnknownSession" || exc === "ExpiredSession") return;
    say((words || describe)(error));
  }

  function loadSessions() {
    return Bastion.safe_call("sessions").then(renderSessions, accountFailed);
  }

  function renderSessions(sessions) {
    if (view !== "account") return;
    el.sessionList.replaceChildren();
    sessions.forEach(function (session) {
      var li = document.createElement("li");
      li.className = "session" + (session.current ? " current" : "");
      li.dataset.id = session.id;
      var where = document.createElement("strong");
      where.textContent = session.current ? "This device" : "Another device";
      var origin = document.createElement("span");
      origin.className = "origin";
      origin.textContent = "from " + (session.origin || "an unknown address");
      var times = document.createElement("span");
      times.className = "times";
      times.textContent = "signed in " + when(session.created) + " · last active " + when(session.last_seen);
      li.append(where, " ", origin, times);
      el.sessionList.append(li);
    });
    var others = sessions.filter(function (s) { return !s.current; }).length;
    el.endSessions.hidden = others === 0;
  }

  function changePassword(event) {
    event.preventDefault();
    var form = el.password.elements;
    if (!form.old.value || !form["new"].value) {
      say("Please enter your current password and a new one.");
      (form.old.value ? form["new"] : form.old).focus();
      return;
    }
    if (form["new"].value !== form.again.value) {
      say("The two new passwords do not match.");
      form.again.select();
      return;
    }
    say("");
    tell("");
    var button = $("button[type=submit]", el.password);
    button.disabled = true;
    Bastion.safe_call("change_password", form.old.value, form["new"].value).then(function () {
      el.password.reset();
      tell("Your password was changed. Your other sessions were signed out.");
      return loadSessions();
    }, function (error) {
      accountFailed(error, describePasswordChange);
      var exc = error && error.exc;
      if (exc === "InvalidCredential") form.old.select();
      else if (exc === "ValidationError") form["new"].select();
    }).then(function () {
      button.disabled = false;
    });
  }

  function endOtherSessions() {
    say("");
    tell("");
    el.endSessions.disabled = true;
    Bastion.safe_call("end_sessions").then(function (ended) {
      tell(ended === 0 ? "There was no other session to sign out."
        : "Signed out " + number(ended) + " other " + plural(ended, "session", "sessions") + ".");
      return loadSessions();
    }, accountFailed).then(function () {
      el.endSessions.disabled = false;
    });
  }

  // -- the history panel ----------------------------------------------------

  function openHistory(id) {
    var todo = find(id);
    if (!todo || !may("history")) return;
    view = "history";
    say("");
    tell("");
    shownHistory = { id: id, entries: [], page: 0 };
    el.historyText.textContent = quoted(todo.text);
    el.historyList.replaceChildren();
    el.historyList.setAttribute("aria-busy", "true");
    el.historyPages.hidden = true;
    el.historyPanel.hidden = false;
    el.newTodo.hidden = true;
    render();
    el.historyTitle.focus();
    // After the changes already queued, so that the history holds them.
    enqueue(function () {
      return Bastion.safe_call("history", id).then(function (versions) {
        if (view !== "history" || shownHistory.id !== id) return;
        shownHistory.entries = changes(versions).reverse();
        renderHistory();
      }, function (error) {
        if (error && error.exc === "Forbidden") permitted["delete"]("history");  // the user's roles changed
        if (view === "history" && shownHistory.id === id) closeHistory(false);
        throw error;
      });
    });
  }

  function closeHistory(focus) {
    var wasOpen = view === "history";
    var id = shownHistory.id;
    el.historyPanel.hidden = true;
    el.historyList.replaceChildren();
    shownHistory = { id: null, entries: [], page: 0 };
    if (!wasOpen) return;
    view = "todos";
    if (!signedIn) return;
    el.newTodo.hidden = false;
    render();
    var li = items.get(id);
    var button = li && li.isConnected ? $(".history-open", li) : null;
    if (focus) (button && !button.hidden ? button : el.newTodo).focus();
    enqueue(reload);  // what others changed meanwhile
  }

  /** The versions of a todo, oldest first, each with who made it, when, and what it changed in words. */
  function changes(versions) {
    return versions.map(function (version, i) {
      var before = i ? versions[i - 1].data : null;
      return { vsn: version.vsn, at: version.at, by: version.by, what: whatChanged(version.data, before, version.vsn) };
    });
  }

  /** What a version did, in words, from its data and the data of the version before it (null: none kept). */
  function whatChanged(data, before, vsn) {
    if (!data) return "removed it";
    var state = data.done ? "completed" : "active";
    if (!before) {
      return vsn === 1 ? "added " + quoted(data.text) + (data.done ? ", completed" : "")
        : "left it as " + quoted(data.text) + ", " + state;  // its earlier versions are no longer kept
    }
    var what = [];
    if (data.text !== before.text) what.push("changed " + quoted(before.text) + " to " + quoted(data.text));
    if (data.done !== before.done) what.push("marked it " + state);
    return what.length ? what.join(" and ") : "saved it unchanged";
  }

  function renderHistory() {
    var entries = shownHistory.entries;
    var pages = Math.max(1, Math.ceil(entries.length / HISTORY_PAGE));
    var page = Math.min(Math.max(shownHistory.page, 0), pages - 1);
    shownHistory.page = page;
    var first = page * HISTORY_PAGE;
    var shown = entries.slice(first, first + HISTORY_PAGE);
    el.historyList.replaceChildren.apply(el.historyList, shown.map(historyItem));
    el.historyList.removeAttribute("aria-busy");
    el.historyPages.hidden = pages < 2;
    el.historyRange.textContent = "Changes " + number(first + 1) + "\u2013" + number(first + shown.length) +
      " of " + number(entries.length);
    el.historyNewer.disabled = page === 0;
    el.historyOlder.disabled = page === pages - 1;
  }

  function historyItem(entry) {
    var li = document.createElement("li");
    li.className = "version";
    li.dataset.vsn = entry.vsn;
    var by = document.createElement("strong");
    by.className = "by";
    by.textContent = entry.by || "The server";
    var what = document.createElement("span");
    what.className = "what";
    what.textContent = entry.what;
    var at = document.createElement("time");
    at.dateTime = new Date(entry.at * 1000).toISOString();
    at.textContent = when(entry.at, "medium");
    li.append(by, " ", what, at);
    return li;
  }

  function historyPage(step) {
    shownHistory.page += step;
    renderHistory();
    var button = step > 0 ? el.historyOlder : el.historyNewer;
    (button.disabled ? el.historyTitle : button).focus();  // a disabled button would drop the focus
  }

  // -- server ---------------------------------------------------------------

  /** Run `task` after every earlier change; report its failure. */
  function enqueue(task) {
    queue = queue.then(task).catch(fail);
    return queue;
  }

  function fail(error) {
    var exc = error && error.exc;
    if (exc === "UnknownSession" || exc === "ExpiredSession") return; // the exc handler showed the login
    if (exc === "VersionConflict" || exc === "RecordNotFound") {
      return reload().then(function () { say(describe(error)); }, fail);
    }
    say(describe(error));
    if (exc === "ValidationError") render();
  }

  // get_all answers a page of at most PAGE todos; the next one starts after the last todo of this one.
  var PAGE = 1000;

  function reload() {
    return readAll(3).then(function (result) {
      todos = result;
      render();
    });
  }

  // Every todo, page after page. A todo removed (in another tab) while the pages are read is the
  // RecordNotFound of the page after it: the list is read again from the start, a few times at most.
  function readAll(attempts) {
    var all = [];
    function next(after) {
      return Bastion.safe_call("get_all", after, PAGE).then(function (page) {
        Array.prototype.push.apply(all, page);
        return page.length < PAGE ? all : next(page[page.length - 1].id);
      });
    }
    return next(null).catch(function (error) {
      if (error && error.exc === "RecordNotFound" && attempts > 1) return readAll(attempts - 1);
      throw error;
    });
  }

  function find(id) {
    for (var i = 0; i < todos.length; i++) if (todos[i].id === id) return todos[i];
    return null;
  }

  function replace(todo) {
    for (var i = 0; i < todos.length; i++) if (todos[i].id === todo.id) todos[i] = todo;
    render();
  }

  function drop(id) {
    todos = todos.filter(function (t) { return t.id !== id; });
    render();
  }

  // Failures that `fail` handles for the whole list: the session ended (the sign-in form), or the todo changed or
  // went elsewhere (the list is read again). Any other refusal of a text is the text's own, said beside it.
  var LIST_FAILURES = new Set(["UnknownSession", "ExpiredSession", "VersionConflict", "RecordNotFound"]);

  /** Hand a refusal of a text to `rejected` (when given), so that the text is kept; the rest goes on to `fail`. */
  function refusedWith(rejected) {
    return function (error) {
      if (rejected && !LIST_FAILURES.has(error && error.exc)) return rejected(error);
      throw error;
    };
  }

  function add(text) {
    enqueue(function () {
      return Bastion.safe_call("add", text).then(function (todo) {
        todos.push(todo);
        render();
      }, refusedWith(function (error) { rejectedNew(text, error); }));
    });
  }

  /** A new todo the server refused: its text back in the input (unless another was typed since), the reason beside. */
  function rejectedNew(text, error) {
    if (!signedIn) return;
    if (!el.newTodo.value.trim()) el.newTodo.value = text;
    fieldError(el.newTodo, el.newTodoError, describe(error));
    if (view === "todos" && !editing) {
      el.newTodo.focus();
      el.newTodo.setSelectionRange(el.newTodo.value.length, el.newTodo.value.length);
    }
  }

  function change(id, fields, rejected) {
    enqueue(function () {
      var todo = find(id);
      if (!todo) return;
      var kwargs = { id: todo.id, vsn: todo.vsn };
      for (var k in fields) kwargs[k] = fields[k];
      return Bastion.safe_call("update", kwargs).then(replace, refusedWith(rejected));
    });
  }

  /** An edit the server refused: the todo is edited again with the refused text, the reason beside it. */
  function rejectedEdit(id, text, error) {
    render();
    var li = items.get(id);
    if (!signedIn || view !== "todos" || editing || !li || !li.isConnected || !find(id)) {
      say(describe(error));  // nowhere to edit it again: say it in the alert
      return;
    }
    startEditing(li, text, describe(error));
  }

  function remove(id) {
    enqueue(function () {
      var todo = find(id);
      if (!todo) return;
      return Bastion.safe_call("remove", { id: todo.id, vsn: todo.vsn }).then(function () { drop(id); });
    });
  }

  function toggleAll(done) {
    todos.filter(function (t) { return t.done !== done; }).forEach(function (t) {
      change(t.id, { done: done });
    });
  }

  function clearCompleted() {
    enqueue(function () {
      return Bastion.safe_call("clear_completed").then(reload);
    });
  }

  // -- rendering ------------------------------------------------------------

  function filter() {
    return FILTERS[location.hash] || "all";
  }

  function visible(todo) {
    var f = filter();
    return f === "all" || (f === "completed") === todo.done;
  }

  function itemFor(todo) {
    var li = items.get(todo.id);
    if (!li) {
      li = document.createElement("li");
      li.dataset.id = todo.id;
      var view = document.createElement("div");
      view.className = "view";
      var toggle = document.createElement("input");
      toggle.className = "toggle";
      toggle.type = "checkbox";
      var label = document.createElement("label");
      label.tabIndex = 0;
      view.append(toggle, label, button("edit-todo"), button("history-open"), button("destroy"));
      li.append(view);
      items.set(todo.id, li);
    }
    li.classList.toggle("completed", todo.done);
    $(".toggle", li).checked = todo.done;
    $(".toggle", li).setAttribute("aria-label", (todo.done ? "Mark as active: " : "Mark as completed: ") + todo.text);
    $("label", li).textContent = todo.text;
    $("label", li).title = "Double-click (or press Enter) to edit";
    $(".edit-todo", li).setAttribute("aria-label", "Edit: " + todo.text);
    $(".history-open", li).setAttribute("aria-label", "History: " + todo.text);
    $(".history-open", li).title = "Who changed it, and when";
    $(".history-open", li).hidden = !may("history");
    $(".destroy", li).setAttribute("aria-label", "Delete: " + todo.text);
    return li;
  }

  function button(className) {
    var b = document.createElement("button");
    b.className = className;
    b.type = "button";
    return b;
  }

  function render() {
    var listing = signedIn && view === "todos";
    var shown = listing ? todos.filter(visible) : [];
    var keep = new Set();
    shown.forEach(function (todo, i) {
      var li = itemFor(todo);
      keep.add(todo.id);
      // Move only what is out of place: moving a focused element would lose its focus.
      if (el.list.children[i] !== li) el.list.insertBefore(li, el.list.children[i] || null);
    });
    items.forEach(function (li, id) {
      if (!keep.has(id) && id !== editing) {
        li.remove();
        items.delete(id);
      }
    });

    var any = listing && todos.length > 0;
    var left = todos.filter(function (t) { return !t.done; }).length;
    var completed = todos.length - left;
    el.main.hidden = !any;
    el.footer.hidden = !any;
    el.hint.hidden = !any;
    el.toggleAll.checked = any && left === 0;
    el.count.replaceChildren();
    var strong = document.createElement("strong");
    strong.textContent = number(left);
    el.count.append(strong, " " + plural(left, "item", "items") + " left");
    el.clearCompleted.hidden = completed === 0;
    var current = "#/" + (filter() === "all" ? "" : filter());
    el.filters.forEach(function (a) {
      var selected = a.getAttribute("href") === current;
      a.classList.toggle("selected", selected);
      if (selected) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    });
  }

  // -- editing --------------------------------------------------------------

  /** Edit a todo: its text (or `text`, one the server refused), and `message` beside it when there is one. */
  function startEditing(li, text, message) {
    var todo = find(li.dataset.id);
    if (!todo || editing) return;
    editing = todo.id;
    li.classList.add("editing");
    var input = document.createElement("input");
    input.className = "edit";
    input.value = text === undefined ? todo.text : text;
    input.setAttribute("aria-label", "Edit todo");
    li.append(input);
    if (message) {
      var error = document.createElement("p");
      error.className = "field-error edit-error";
      error.id = "edit-error";
      input.setAttribute("aria-describedby", error.id);
      li.append(error);
      fieldError(input, error, message);
    }
    input.focus();
    input.setSelectionRange(input.value.length, input.value.length);
  }

  function stopEditing(li, save) {
    var input = $(".edit", li);
    if (!input || editing !== li.dataset.id) return;
    var id = editing;
    editing = null;
    var text = input.value.trim();
    li.classList.remove("editing");
    input.remove();
    $$(".edit-error", li).forEach(function (error) { error.remove(); });
    var todo = find(id);
    if (save && todo) {
      if (!text) remove(id);
      else if (text !== todo.text) change(id, { text: text }, function (error) { rejectedEdit(id, text, error); });
    }
    render();
    var label = $("label", li);
    if (label && li.isConnected && !save) label.focus();
  }

  // -- events ---------------------------------------------------------------

  el.newTodo.addEventListener("keydown", function (event) {
    if (event.key !== ENTER || event.isComposing) return;
    var text = el.newTodo.value.trim();
    if (!text) return;
    el.newTodo.value = "";
    say("");
    fieldError(el.newTodo, el.newTodoError, "");
    add(text);
  });

  el.list.addEventListener("change", function (event) {
    if (!event.target.classList.contains("toggle")) return;
    say("");
    change(event.target.closest("li").dataset.id, { done: event.target.checked });
  });

  el.list.addEventListener("click", function (event) {
    var target = event.target;
    var li = target.closest("li");
    if (target.classList.contains("destroy")) {
      say("");
      remove(li.dataset.id);
    } else if (target.classList.contains("edit-todo")) {
      startEditing(li);  // the touch screen's way to edit: a tap, where a mouse double-clicks
    } else if (target.classList.contains("history-open")) {
      openHistory(li.dataset.id);
    }
  });

  el.list.addEventListener("dblclick", function (event) {
    if (event.target.tagName === "LABEL") startEditing(event.target.closest("li"));
  });

  el.list.addEventListener("keydown", function (event) {
    var target = event.target;
    if (target.tagName === "LABEL" && (event.key === ENTER || event.key === "F2")) {
      event.preventDefault();
      startEditing(target.closest("li"));
    } else if (target.classList.contains("edit")) {
      if (event.key === ENTER && !event.isComposing) stopEditing(target.closest("li"), true);
      else if (event.key === ESCAPE) stopEditing(target.closest("li"), false);
    }
  });

  el.list.addEventListener("focusout", function (event) {
    if (event.target.classList.contains("edit")) stopEditing(event.target.closest("li"), true);
  });

  el.toggleAll.addEventListener("change", function () {
    say("");
    toggleAll(el.toggleAll.checked);
  });

  el.clearCompleted.addEventListener("click", function () {
    say("");
    clearCompleted();
  });

  window.addEventListener("hashchange", render);

  el.login.addEventListener("submit", function (event) {
    event.preventDefault();
    var form = el.login.elements;
    var username = form.username.value.trim();
    if (!username || !form.password.value) {
      say("Please enter your username and password.");
      (username ? form.password : form.username).focus();
      return;
    }
    say("");
    var button = $("button[type=submit]", el.login);
    button.disabled = true;
    var code = el.loginCode.hidden ? "" : form.code.value.trim();
    Bastion.login(username, form.password.value, form.force.checked, code).then(function (user) {
      form.password.value = "";
      showApp(user);
      var session = Bastion.session();
      if (session && session.second_factor === "enrol") {
        // [auth] second_factor = required, and this user has none yet: the session may only enrol.
        openAccount();
        say("This site asks you to turn on two-step sign-in before anything else.");
        return null;
      }
      return load();
    }).catch(function (error) {
      if (error && error.exc === "MaxActiveSessions") el.force.hidden = false;
      say(describe(error));
      if (error && error.exc === "SecondFactorRequired") {
        el.loginCode.hidden = false;  // the password was right: ask for the code, and sign in again with both
        form.code.focus();
      } else if (error && error.exc === "MaxActiveSessions") {
        form.force.focus();  // the password and a code (the server did not use it up) stay: tick, sign in again
      } else if (!signedIn) {
        if (!el.loginCode.hidden) form.code.value = "";
        form.password.select();
      }
    }).then(function () {
      button.disabled = false;
    });
  });

  el.accountOpen.addEventListener("click", function () {
    if (view === "account") closeAccount(true);
    else openAccount();
  });

  el.accountClose.addEventListener("click", function () {
    say("");
    tell("");
    closeAccount(true);
  });

  el.historyClose.addEventListener("click", function () {
    say("");
    closeHistory(true);
  });
  el.historyNewer.addEventListener("click", function () { historyPage(-1); });
  el.historyOlder.addEventListener("click", function () { historyPage(1); });

  el.password.addEventListener("submit", changePassword);
  el.endSessions.addEventListener("click", endOtherSessions);

  el.logout.addEventListener("click", function () {
    say("");
    Bastion.logout().catch(function () {
      // The session is forgotten locally whatever the server said.
    }).then(showLogin);
  });

  // What passkeys.js (its own file) needs of this page: sign a user in as the form does, and speak.
  window.TodoApp = {
    signedIn: function (user) {
      el.login.elements.password.value = "";
      showApp(user);
      return load();
    },
    isSignedIn: function () { return signedIn; },
    say: say,
    tell: tell,
    describe: describe,
    when: when
  };
  // The passkeys' part of the page, in a file of its own (same origin: the CSP's script-src 'self' allows it).
  var passkeysScript = document.createElement("script");
  passkeysScript.src = "/passkeys.js";
  document.head.append(passkeysScript);

  // -- start ----------------------------------------------------------------

  Bastion.exc.UnknownSession = sessionEnded;
  Bastion.exc.ExpiredSession = sessionEnded;

  var domain = Bastion._domain(location.hostname);
  el.domains.forEach(function (node) { node.textContent = domain; });
  document.title = "todos · " + domain;

  // The session of a reloaded tab is restored from sessionStorage and IndexedDB, asynchronously:
  // neither the sign-in form nor the list is shown until then.
  Bastion.ready.then(function () {
    if (Bastion.session()) {
      showApp(Bastion.user());
      return load();
    }
    showLogin();
  }).catch(fail);
})();
