#!/usr/bin/python3
"""Sign a ccm action request with Debian's python3-cryptography alone.

The signed payload and the signature format are docs/REFERENCE.md's
"Signed requests": the RFC 8785 (JCS) form of {"cluster", "node",
"request"}, signed as OpenSSH's SSHSIG in the namespace ccm-action-request.
For a request of strings only, JCS is json.dumps with sorted keys and no
spaces.

usage: sign_request.py KEY PREFIX CLUSTER_ID NODE ID ACTION NAME=VALUE|'' DEADLINE
"""
import base64
import datetime
import hashlib
import json
import struct
import sys

from cryptography.hazmat.primitives.serialization import (Encoding, PublicFormat,
                                                          load_ssh_private_key)


def string(b):
    return struct.pack(">I", len(b)) + b


key_file, prefix, cluster_id, node, rid, action, param, deadline = sys.argv[1:9]
with open(key_file, "rb") as f:
    key = load_ssh_private_key(f.read(), password=None)
pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
request = {"id": rid, "action": action, "by": "python", "created": now, "deadline": deadline}
if param:
    name, value = param.split("=", 1)
    request["params"] = {name: value}
doc = {"cluster": {"id": cluster_id, "prefix": prefix}, "node": node, "request": request}
payload = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

namespace = b"ccm-action-request"
signed = b"SSHSIG" + string(namespace) + string(b"") + string(b"sha512") + string(hashlib.sha512(payload).digest())
blob = (b"SSHSIG" + struct.pack(">I", 1) + string(string(b"ssh-ed25519") + string(pub)) + string(namespace)
        + string(b"") + string(b"sha512") + string(string(b"ssh-ed25519") + string(key.sign(signed))))
b64 = base64.b64encode(blob).decode()
request["signature"] = ("-----BEGIN SSH SIGNATURE-----\n" + "\n".join(b64[i:i + 70] for i in range(0, len(b64), 70))
                        + "\n-----END SSH SIGNATURE-----\n")
print(json.dumps(request))
