"""Bastion's authentication plugin (docs/protocol.md sections 1 to 8).

Users per domain with argon2id passwords, login and logout, HMAC-signed calls
and responses, replay protection, abuse bans per origin and lock-outs per
account. Every piece of state lives in the storage driver, so every worker and
node sharing the storage shares it.
"""
