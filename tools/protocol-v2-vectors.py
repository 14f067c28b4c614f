"""Write docs/protocol-v2-vectors.json: protocol version 2 (docs/protocol.md section 16) on fixed keys and IVs.

    python tools/protocol-v2-vectors.py > docs/protocol-v2-vectors.json

Every value is computed by kernel.core.sealing and kernel.core.signing from the fixed inputs below; the tests
(tests/test_protocol_v2_vectors.py, and plugins/todo/tests/test_version2_ui.py in Chromium) check both clients and
the server against the file, never against this script.
"""

from __future__ import annotations

import hashlib
import json

from kernel.core import sealing, signing

#: The order of the P-256 group.
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def scalar(seed: str) -> int:
    """A fixed private key: SHA-256 of the seed, reduced into [1, n - 1]."""
    return int.from_bytes(hashlib.sha256(seed.encode()).digest(), "big") % (N - 1) + 1


def party(seed: str) -> tuple[sealing.KeyPair, dict]:
    pair = sealing.KeyPair.from_private_value(scalar(seed))
    point = signing.b64url_decode(pair.public)
    d = scalar(seed).to_bytes(32, "big")
    jwk = {"kty": "EC", "crv": "P-256", "d": signing.b64url(d), "x": signing.b64url(point[1:33]),
           "y": signing.b64url(point[33:])}
    return pair, {"private_key": signing.b64url(d), "jwk": jwk, "public_key": pair.public}


def main() -> dict:
    client, client_json = party("bastion-v2 vector client")
    server, server_json = party("bastion-v2 vector server")
    sid, domain = "c2Vzc2lvbi12Mi12ZWN0b3I", "alpha.example.com"
    secret = client.agree(server.public)
    assert secret == server.agree(client.public)
    keys = sealing.derive_keys(secret, sid, domain, client.public, server.public)
    infos = {label: sealing.kdf_info(label, sid, domain, client.public, server.public).decode()
             for label in sealing.LABELS}
    calls = []
    for ts, nonce, path, plain, call_iv, status, answer, answer_iv in (
        ("1767222000", "AAECAwQFBgcICQoLDA0ODw", "/api/add", '{"args":["Play with Fanery"]}',
         bytes(range(12)), 200, '{"result":{"id":"3f2c9a","vsn":1,"text":"Play with Fanery","done":false}}',
         bytes(range(100, 112))),
        ("1767222001", "EBESExQVFhcYGRobHB0eHw", "/api/get_all", "", bytes(range(12, 24)), 200,
         '{"result":[]}', bytes(range(112, 124))),
        ("1767222002", "ICEiIyQlJicoKSorLC0uLw", "/api/update",
         '{"kwargs":{"id":"3f2c9a","vsn":1,"done":true}}', bytes(range(24, 36)), 409,
         '{"exc":"VersionConflict","err":["record changed"]}', bytes(range(124, 136))),
    ):
        aad = sealing.call_aad(ts, nonce, path, domain)
        envelope = sealing.seal(keys.call_enc, plain.encode(), aad, call_iv)
        mac = signing.request_mac(keys.call_mac, ts, nonce, path, domain, envelope)
        answer_aad = sealing.answer_aad(nonce, status)
        answer_envelope = sealing.seal(keys.answer_enc, answer.encode(), answer_aad, answer_iv)
        answer_mac = signing.response_mac(keys.answer_mac, nonce, status, answer_envelope)
        calls.append({
            "path": path, "ts": ts, "nonce": nonce, "plaintext": plain, "iv": signing.b64url(call_iv),
            "aad": aad.decode(), "envelope": signing.b64url(envelope),
            "S": signing.string_to_sign(ts, nonce, path, domain, envelope).decode(), "mac": mac,
            "authorization": signing.authorization(sid, ts, nonce, mac),
            "status": status, "answer_plaintext": answer, "answer_iv": signing.b64url(answer_iv),
            "answer_aad": answer_aad.decode(), "answer_envelope": signing.b64url(answer_envelope),
            "R": signing.response_string(nonce, status, answer_envelope).decode(), "answer_mac": answer_mac,
            "server_authorization": signing.server_authorization(answer_mac),
        })
    return {
        "about": "Protocol version 2 (docs/protocol.md section 16) on fixed keys and IVs. Byte strings are b64url "
                 "without padding; texts are UTF-8. A real client and server make new key pairs for every login "
                 "and a new random IV for every envelope.",
        "curve": "P-256",
        "client": client_json,
        "server": server_json,
        "sid": sid,
        "domain": domain,
        "shared_secret": signing.b64url(secret),
        "info": infos,
        "keys": {"call-mac": signing.b64url(keys.call_mac), "answer-mac": signing.b64url(keys.answer_mac),
                 "call-enc": signing.b64url(keys.call_enc), "answer-enc": signing.b64url(keys.answer_enc)},
        "calls": calls,
    }


if __name__ == "__main__":
    print(json.dumps(main(), indent=2, ensure_ascii=False))
