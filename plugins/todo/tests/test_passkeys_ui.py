"""Passkeys in the todo UI, in a real Chromium with a virtual authenticator, against real gunicorn.

Chromium's DevTools protocol gives each page a virtual platform authenticator (CTAP2, resident keys, user
verification that always succeeds): the page's ``navigator.credentials`` then creates and uses passkeys as a
person's device would, and the server verifies them as it verifies any.
"""

from __future__ import annotations

import pytest
from ui_helpers import expect, login

pytestmark = pytest.mark.slow

AUTHENTICATOR = {"protocol": "ctap2", "transport": "internal", "hasResidentKey": True, "hasUserVerification": True,
                 "isUserVerified": True, "automaticPresenceSimulation": True}


@pytest.fixture
def server(todo_server):
    """gunicorn with storage_mem, auth and todo, passkeys allowed in every tenant."""
    return todo_server(passkeys="allowed")


@pytest.fixture
def device(context, page):
    """The page's virtual authenticator; ``device.credentials()`` lists what it holds."""
    cdp = context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    authenticator = cdp.send("WebAuthn.addVirtualAuthenticator", {"options": AUTHENTICATOR})["authenticatorId"]

    class Device:
        @staticmethod
        def credentials() -> list:
            return cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})["credentials"]

    return Device


def open_account(page):
    page.click("button.account-open")
    expect(page.locator("#account .passkeys")).to_be_visible()


def add_passkey(page, name: str):
    page.fill(".passkey-add input[name=name]", name)
    page.click(".passkey-add button[type=submit]")
    expect(page.locator(".notice")).to_have_text(f"Added the passkey \u201c{name}\u201d.")


def log_out(page):
    page.click("button.logout")
    expect(page.locator("form#login")).to_be_visible()


def signed_in_as(page, username: str):
    expect(page.locator(".account .username")).to_have_text(username)
    expect(page.locator("input.new-todo")).to_be_visible()


def test_register_then_sign_in_without_a_username_rename_and_remove(server, page, device, page_errors):
    page_errors.expect_statuses(401)
    page.goto(f"http://localhost:{server}/")
    login(page)
    signed_in_as(page, "alice")
    open_account(page)
    expect(page.locator(".passkey-list")).to_have_text("No passkey yet.")
    add_passkey(page, "Laptop")
    expect(page.locator(".passkey .passkey-name")).to_have_text(["Laptop"])
    expect(page.locator(".passkey .times")).to_contain_text("never used")
    [held] = device.credentials()
    assert held["isResidentCredential"] is True and held["rpId"] == "localhost"
    log_out(page)

    page.fill("form#login input[name=username]", "")
    page.click("form#login button.passkey-login")
    signed_in_as(page, "alice")
    open_account(page)
    expect(page.locator(".passkey .times")).to_contain_text("last used")
    page.click(".passkey button.passkey-rename")
    page.fill(".passkey input.passkey-new-name", "Work laptop")
    page.click(".passkey button.passkey-save")
    expect(page.locator(".passkey .passkey-name")).to_have_text(["Work laptop"])
    page.click(".passkey button.passkey-remove")
    expect(page.locator(".passkey-list")).to_have_text("No passkey yet.")
    log_out(page)

    # The device still holds the credential; the server has no passkey of it any more.
    page.click("form#login button.passkey-login")
    expect(page.locator(".alert")).to_have_text("This passkey was refused. Please try again.")
    expect(page.locator("form#login")).to_be_visible()


def test_sign_in_username_first(server, page, device, page_errors):
    page.goto(f"http://localhost:{server}/")
    login(page)
    open_account(page)
    add_passkey(page, "Phone")
    log_out(page)
    page.fill("form#login input[name=username]", "alice")
    page.fill("form#login input[name=password]", "")
    page.click("form#login button.passkey-login")
    signed_in_as(page, "alice")


RECORD_ASSERTION = """async () => {
    const options = await Bastion.passkeyOptions(null);
    const b = (t) => Bastion._b64urlDecode(t).buffer;
    const s = (buf) => Bastion._b64url(new Uint8Array(buf));
    const credential = await navigator.credentials.get({publicKey: {...options, challenge: b(options.challenge)}});
    const r = credential.response;
    return {id: credential.id, rawId: s(credential.rawId), type: credential.type, clientExtensionResults: {},
            response: {clientDataJSON: s(r.clientDataJSON), authenticatorData: s(r.authenticatorData),
                       signature: s(r.signature), userHandle: s(r.userHandle)}};
}"""


def test_a_passkey_of_one_tenant_is_refused_on_another(server, page, device, page_errors):
    page_errors.expect_statuses(401)
    page.goto(f"http://alpha.localhost:{server}/")
    login(page)
    open_account(page)
    add_passkey(page, "Alpha key")
    log_out(page)
    assertion = page.evaluate(RECORD_ASSERTION)  # made on alpha, for alpha's challenge, never sent there

    page.goto(f"http://beta.localhost:{server}/")
    expect(page.locator("form#login")).to_be_visible()
    # The browser offers no passkey of alpha's on beta: the sign-in ends without one.
    page.click("form#login button.passkey-login")
    expect(page.locator(".alert")).to_have_text("No passkey was used. Try again, or sign in with your password.")
    # alpha's assertion sent to beta by hand: refused by the server.
    refused = page.evaluate("""async (assertion) => {
        try { await Bastion.passkeyLogin(assertion); return null; } catch (e) { return [e.exc, e.status]; }
    }""", assertion)
    assert refused == ["InvalidCredential", 401]
    assert page.evaluate("() => Bastion.session()") is None

    # on alpha, the passkey still signs alice in
    page.goto(f"http://alpha.localhost:{server}/")
    page.click("form#login button.passkey-login")
    signed_in_as(page, "alice")


def test_passkeys_js_writes_no_markup_and_no_inline_style():
    from pathlib import Path

    source = (Path(__file__).parents[1] / "bastion_todo" / "static" / "passkeys.js").read_text("utf-8")
    assert "innerHTML" not in source and "insertAdjacentHTML" not in source
    assert ".style" not in source and "eval(" not in source
