"""A small reference client of ccm's cluster API, for Python.

It uses the Python standard library and Debian's python3-cryptography
alone (and python3-jsonschema to check objects), and talks to etcd through
its JSON gateway (/v3/...). What it writes is docs/REFERENCE.md's "What a
caller writes, byte for byte"; the Go package client is the full one.

    c = Client("http://127.0.0.1:2379")
    c.put_object("sites", "shop", {"user": "bob", "domains": ["shop.example"]})
    reply = c.call("web1", "site-info", {"site": "shop"})
"""
import base64
import datetime
import hashlib
import json
import os
import ssl
import struct
import time
import urllib.request

from cryptography.hazmat.primitives import poly1305
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_ssh_private_key

SEALED = "ccm-sealed:"
FINAL = {"succeeded", "failed", "timed_out", "rejected", "interrupted"}


class Error(Exception):
    """An error of etcd's or of a call."""


# --- nacl sealed boxes: XSalsa20-Poly1305, as libsodium's crypto_box_seal ---

def _rotl(v, c):
    return ((v << c) & 0xFFFFFFFF) | (v >> (32 - c))


def _rounds(x):
    def qr(a, b, c, d):
        x[b] ^= _rotl((x[a] + x[d]) & 0xFFFFFFFF, 7)
        x[c] ^= _rotl((x[b] + x[a]) & 0xFFFFFFFF, 9)
        x[d] ^= _rotl((x[c] + x[b]) & 0xFFFFFFFF, 13)
        x[a] ^= _rotl((x[d] + x[c]) & 0xFFFFFFFF, 18)
    for _ in range(10):
        qr(0, 4, 8, 12); qr(5, 9, 13, 1); qr(10, 14, 2, 6); qr(15, 3, 7, 11)
        qr(0, 1, 2, 3); qr(5, 6, 7, 4); qr(10, 11, 8, 9); qr(15, 12, 13, 14)
    return x


def _state(key, sixteen):
    k = struct.unpack("<8I", key)
    n = struct.unpack("<4I", sixteen)
    return [0x61707865, k[0], k[1], k[2], k[3], 0x3320646E, n[0], n[1], n[2], n[3],
            0x79622D32, k[4], k[5], k[6], k[7], 0x6B206574]


def _hsalsa20(key, nonce16):
    x = _rounds(_state(key, nonce16))
    return struct.pack("<8I", x[0], x[5], x[10], x[15], x[6], x[7], x[8], x[9])


def _xsalsa20_stream(key, nonce24, n):
    sub = _hsalsa20(key, nonce24[:16])
    out = bytearray()
    counter = 0
    while len(out) < n:
        s = _state(sub, nonce24[16:24] + struct.pack("<Q", counter))
        x = _rounds(list(s))
        out += struct.pack("<16I", *[(a + b) & 0xFFFFFFFF for a, b in zip(x, s)])
        counter += 1
    return bytes(out[:n])


def _box_key(private, public):
    shared = private.exchange(public)
    return _hsalsa20(shared, bytes(16))


def _raw(public):
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _nonce(eph, recipient):
    return hashlib.blake2b(eph + recipient, digest_size=24).digest()


def seal(public_b64, message):
    """Seal message (str) to an X25519 public key (base64): "ccm-sealed:" + base64 of a sealed box."""
    recipient = base64.b64decode(public_b64)
    eph = X25519PrivateKey.generate()
    key = _box_key(eph, X25519PublicKey.from_public_bytes(recipient))
    nonce = _nonce(_raw(eph.public_key()), recipient)
    data = message.encode()
    stream = _xsalsa20_stream(key, nonce, 32 + len(data))
    ct = bytes(a ^ b for a, b in zip(data, stream[32:]))
    tag = poly1305.Poly1305.generate_tag(stream[:32], ct)
    return SEALED + base64.b64encode(_raw(eph.public_key()) + tag + ct).decode()


def open_sealed(private, value):
    """Open a sealed value with an X25519PrivateKey; raises Error if it does not open."""
    if not value.startswith(SEALED):
        raise Error("not a sealed value")
    raw = base64.b64decode(value[len(SEALED):])
    eph, tag, ct = raw[:32], raw[32:48], raw[48:]
    key = _box_key(private, X25519PublicKey.from_public_bytes(eph))
    stream = _xsalsa20_stream(key, _nonce(eph, _raw(private.public_key())), 32 + len(ct))
    try:
        poly1305.Poly1305.verify_tag(stream[:32], ct, tag)
    except Exception as e:
        raise Error("the sealed value does not open with this key") from e
    return bytes(a ^ b for a, b in zip(ct, stream[32:])).decode()


# --- SSHSIG signatures of requests (REFERENCE, "Signed requests") ---

def _string(b):
    return struct.pack(">I", len(b)) + b


def sign_request(key_file, prefix, cluster_id, node, request):
    """Add the SSHSIG signature of request (a dict of strings) for node, with an OpenSSH ed25519 key."""
    with open(key_file, "rb") as f:
        key = load_ssh_private_key(f.read(), password=None)
    pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    doc = {"cluster": {"id": cluster_id, "prefix": prefix}, "node": node, "request": request}
    payload = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    ns = b"ccm-action-request"
    signed = b"SSHSIG" + _string(ns) + _string(b"") + _string(b"sha512") + _string(hashlib.sha512(payload).digest())
    blob = (b"SSHSIG" + struct.pack(">I", 1) + _string(_string(b"ssh-ed25519") + _string(pub)) + _string(ns)
            + _string(b"") + _string(b"sha512") + _string(_string(b"ssh-ed25519") + _string(key.sign(signed))))
    b64 = base64.b64encode(blob).decode()
    out = dict(request)
    out["signature"] = ("-----BEGIN SSH SIGNATURE-----\n" + "\n".join(b64[i:i + 70] for i in range(0, len(b64), 70))
                        + "\n-----END SSH SIGNATURE-----\n")
    return out


# --- etcd's JSON gateway ---

def _b64(s):
    return base64.b64encode(s.encode()).decode()


def _prefix_end(key):
    b = bytearray(key.encode())
    for i in range(len(b) - 1, -1, -1):
        if b[i] < 0xFF:
            b[i] += 1
            return base64.b64encode(bytes(b[:i + 1])).decode()
    return base64.b64encode(b"\0").decode()


class Client:
    """A caller of ccm's cluster: objects and actions, on etcd's JSON gateway."""

    def __init__(self, endpoint, prefix="/ccm", user=None, password=None, cacert=None, cert=None, key=None,
                 schemas=None, by="python"):
        self.endpoint, self.prefix, self.by = endpoint.rstrip("/"), prefix.rstrip("/"), by
        self.schemas = schemas  # a directory of <type>.json JSON Schemas, checked by put_object
        self.ctx = None
        if endpoint.startswith("https"):
            self.ctx = ssl.create_default_context(cafile=cacert)
            if cert:
                self.ctx.load_cert_chain(cert, key)
        self.token = None
        if user:
            self.token = self._post("/v3/auth/authenticate", {"name": user, "password": password})["token"]

    def _post(self, path, body):
        req = urllib.request.Request(self.endpoint + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        if self.token:
            req.add_header("Authorization", self.token)
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=10) as resp:
                out = json.load(resp)
        except urllib.error.HTTPError as e:
            raise Error("etcd %s: %s" % (path, e.read().decode(errors="replace"))) from e
        if "error" in out:
            raise Error("etcd %s: %s" % (path, out["error"]))
        return out

    def _range(self, key, prefix=False):
        body = {"key": _b64(key)}
        if prefix:
            body["range_end"] = _prefix_end(key)
        out = self._post("/v3/kv/range", body)
        return [(base64.b64decode(kv["key"]).decode(), base64.b64decode(kv.get("value", "")).decode(), int(kv["mod_revision"]))
                for kv in out.get("kvs", [])], out

    # Objects.

    def put_object(self, typ, oid, data):
        """Check data against schemas/<typ>.json (when given), then write it; return the revision."""
        if self.schemas:
            path = os.path.join(self.schemas, typ + ".json")
            if os.path.exists(path):
                import jsonschema
                with open(path) as f:
                    schema = json.load(f)
                cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
                errors = sorted(cls(schema, format_checker=cls.FORMAT_CHECKER).iter_errors(data), key=lambda e: list(e.path))
                if errors:
                    raise Error("object %s/objects/%s/%s: breaks schemas/%s.json: %s" % (
                        self.prefix, typ, oid, typ, "; ".join("at /%s: %s" % ("/".join(map(str, e.path)), e.message) for e in errors)))
        value = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        out = self._post("/v3/kv/put", {"key": _b64("%s/objects/%s/%s" % (self.prefix, typ, oid)), "value": _b64(value)})
        return int(out["header"]["revision"])

    def get_object(self, typ, oid):
        kvs, _ = self._range("%s/objects/%s/%s" % (self.prefix, typ, oid))
        return json.loads(kvs[0][1]) if kvs else None

    def list_objects(self, typ):
        kvs, _ = self._range("%s/objects/%s/" % (self.prefix, typ), prefix=True)
        return {k.rsplit("/", 1)[1]: json.loads(v) for k, v, _ in kvs}

    def delete_object(self, typ, oid):
        out = self._post("/v3/kv/deleterange", {"key": _b64("%s/objects/%s/%s" % (self.prefix, typ, oid))})
        return int(out.get("deleted", "0")) > 0

    # Actions.

    def presence(self, node):
        kvs, _ = self._range("%s/nodes/%s/alive" % (self.prefix, node))
        return json.loads(kvs[0][1]) if kvs else None

    def call(self, node, action, params=None, secrets=None, sign_key=None, pickup=10.0, wait=60.0, retention=3600):
        """Call action on node and return its final reply (a dict). Secrets are sealed to the
        node's action key; the reply is opened when the handler seals it. A request no node
        picks up within pickup seconds is withdrawn (Error)."""
        now = datetime.datetime.now(datetime.timezone.utc)
        rid = now.strftime("%Y%m%dT%H%M%S.%fZ") + "-" + os.urandom(4).hex()
        params = dict(params or {})
        if secrets:
            p = self.presence(node)
            if not p or not p.get("action_key"):
                raise Error("node %s publishes no action key: cannot seal to it" % node)
            for name, value in secrets.items():
                params[name] = seal(p["action_key"], value)
        reply_key = X25519PrivateKey.generate()
        request = {"id": rid, "action": action, "by": self.by, "created": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                   "reply_key": base64.b64encode(_raw(reply_key.public_key())).decode()}
        if params:
            request["params"] = params
        if sign_key:
            request["deadline"] = (now + datetime.timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
            _, head = self._range(self.prefix + "/release")
            cluster_id = "%016x" % int(head["header"]["cluster_id"])
            request = sign_request(sign_key, self.prefix, cluster_id, node, request)
        lease = self._post("/v3/lease/grant", {"TTL": retention})["ID"]
        record = {"action": action, "nodes": [node], "created": request["created"]}
        self._post("/v3/kv/txn", {"success": [
            {"request_put": {"key": _b64("%s/actions/%s/%s" % (self.prefix, node, rid)), "value": _b64(json.dumps(request)), "lease": lease}},
            {"request_put": {"key": _b64("%s/calls/%s" % (self.prefix, rid)), "value": _b64(json.dumps(record)), "lease": lease}},
        ]})
        reply_at = "%s/nodes/%s/replies/%s" % (self.prefix, node, rid)
        start = time.monotonic()
        while True:
            kvs, _ = self._range(reply_at)
            reply = json.loads(kvs[0][1]) if kvs else None
            if reply and reply.get("state") in FINAL:
                if reply.get("sealed"):
                    opened = json.loads(open_sealed(reply_key, reply.pop("sealed")))
                    reply.update(opened)
                return reply
            if reply is None and time.monotonic() - start > pickup and self.withdraw(node, rid):
                raise Error("%s: no reply within the pickup timeout; the request was withdrawn" % node)
            if time.monotonic() - start > wait:
                raise Error("%s: no final reply within %ss" % (node, wait))
            time.sleep(0.05)

    def withdraw(self, node, rid):
        """Delete the request unless the node claimed it (its reply exists): True if withdrawn."""
        out = self._post("/v3/kv/txn", {
            "compare": [{"target": "CREATE", "key": _b64("%s/nodes/%s/replies/%s" % (self.prefix, node, rid)),
                         "result": "EQUAL", "create_revision": "0"}],
            "success": [{"request_delete_range": {"key": _b64("%s/actions/%s/%s" % (self.prefix, node, rid))}}],
        })
        return bool(out.get("succeeded"))
