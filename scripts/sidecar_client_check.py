#!/usr/bin/env python3
"""An independent client of the lark-cli auth-proxy ("sidecar") protocol v1.

Written from shared/docs/lark-cli-sidecar.md only, with the standard library (hmac,
hashlib, urllib): if this client and lark-auth's agree, the canonical string is right.
Run by examples/sidecar_client_check.rs (scripts/check-official-client.sh, .ci/run):

    sidecar_client_check.py PROXY_URL KEY USER_OPEN_ID

Sends, to lark-auth's sidecar listener at PROXY_URL, signed with KEY (its text as bytes):
  - user_info as the user (must answer 200 with USER_OPEN_ID);
  - an upload as the user (a body: its SHA-256 is signed);
  - the tenant query as the bot;
  - the same user_info tampered after signing: query, identity flipped, body changed,
    61 s old, signed with another key (each must be refused: 401 / 400).
Prints one JSON line per call ({"name", "status", "ok"}) and exits 0 only when every
call was answered as expected.
"""

import hashlib
import hmac
import json
import sys
import time
import urllib.error
import urllib.request

TARGET = "https://open.feishu.cn"


def body_sha256(body):
    return hashlib.sha256(body).hexdigest()


def sign(key, version, method, host, path_and_query, body_hash, timestamp, identity, auth_header):
    canonical = "\n".join(
        [version, method, host, path_and_query, body_hash, timestamp, identity, auth_header]
    )
    return hmac.new(key.encode(), canonical.encode(), hashlib.sha256).hexdigest()


def call(proxy, key, method, path_and_query, identity, body=b"", tamper=None):
    """Signs the request, lets `tamper(request dict)` change it, sends it."""
    host = TARGET.split("://", 1)[1]
    timestamp = str(int(time.time()))
    body_hash = body_sha256(body)
    request = {
        "method": method,
        "path": path_and_query,
        "body": body,
        "headers": {
            "X-Lark-Proxy-Version": "v1",
            "X-Lark-Proxy-Target": TARGET,
            "X-Lark-Proxy-Identity": identity,
            "X-Lark-Proxy-Auth-Header": "Authorization",
            "X-Lark-Proxy-Timestamp": timestamp,
            "X-Lark-Body-SHA256": body_hash,
            "X-Lark-Proxy-Signature": sign(
                key, "v1", method, host, path_and_query, body_hash, timestamp, identity,
                "Authorization",
            ),
            # What the CLI's transport would carry: a placeholder token, never forwarded.
            "Authorization": "Bearer sentinel",
        },
    }
    if body:
        request["headers"]["Content-Type"] = "application/octet-stream"
    if tamper:
        tamper(request, key, host)
    req = urllib.request.Request(
        proxy.rstrip("/") + request["path"],
        data=request["body"] if request["body"] or method != "GET" else None,
        method=request["method"],
        headers=request["headers"],
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as res:
            return res.status, json.loads(res.read() or b"null")
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, raw.decode(errors="replace")


def main():
    proxy, key, open_id = sys.argv[1], sys.argv[2], sys.argv[3]
    if "://" not in proxy:
        proxy = "http://" + proxy
    user_info = "/open-apis/authen/v1/user_info"
    results = []

    def expect(name, answer, status, check=lambda body: True):
        got, body = answer
        ok = got == status and check(body)
        results.append(ok)
        print(json.dumps({"name": name, "status": got, "ok": ok, "body": body if not ok else None}))

    expect(
        "user_info as the user",
        call(proxy, key, "GET", user_info, "user"),
        200,
        lambda b: b["data"]["open_id"] == open_id,
    )
    payload = bytes(range(256)) * 40
    expect(
        "upload as the user",
        call(proxy, key, "POST", "/open-apis/drive/v1/medias/upload_all", "user", payload),
        200,
        lambda b: b["data"]["size"] == len(payload),
    )
    expect(
        "tenant query as the bot",
        call(proxy, key, "GET", "/open-apis/tenant/v2/tenant/query", "bot"),
        200,
    )

    def set_path(r, *_):
        r["path"] = user_info + "?user_id_type=union_id"

    def flip_identity(r, *_):
        r["headers"]["X-Lark-Proxy-Identity"] = "bot"

    def change_body(r, *_):
        r["body"] = b"changed"
        r["method"] = "POST"

    def old(r, k, host):
        ts = str(int(time.time()) - 61)
        h = r["headers"]
        h["X-Lark-Proxy-Timestamp"] = ts
        h["X-Lark-Proxy-Signature"] = sign(
            k, "v1", r["method"], host, r["path"], h["X-Lark-Body-SHA256"], ts, "user",
            "Authorization",
        )

    def other_key(r, _k, host):
        h = r["headers"]
        h["X-Lark-Proxy-Signature"] = sign(
            "f" * 64, "v1", r["method"], host, r["path"], h["X-Lark-Body-SHA256"],
            h["X-Lark-Proxy-Timestamp"], "user", "Authorization",
        )

    refused = lambda code: (lambda b: isinstance(b, dict) and b.get("error") == code)
    for name, tamper, status, code in [
        ("tampered query", set_path, 401, "invalid_signature"),
        ("identity flipped", flip_identity, 401, "invalid_signature"),
        ("body changed", change_body, 400, "body_sha256_mismatch"),
        ("61 s old", old, 401, "invalid_timestamp"),
        ("another key", other_key, 401, "invalid_signature"),
    ]:
        expect(name, call(proxy, key, "GET", user_info, "user", tamper=tamper), status, refused(code))

    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
