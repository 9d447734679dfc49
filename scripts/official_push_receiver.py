"""A webhook receiver built on the official Python SDK's event dispatcher
(lark-oapi 1.7.5, `lark.EventDispatcherHandler`), for the event gateway's fidelity check
(examples/official_push_check.rs starts it).

Usage: official_push_receiver.py PORT ENCRYPT_KEY VERIFICATION_TOKEN
(ENCRYPT_KEY may be "": the SDK then takes plain, unsigned bodies.)

Every POST goes to handler.do() unchanged, with the headers as Flask (the SDK's own
adapter, lark_oapi.adapter.flask) presents them. Prints one JSON line per handled event
({"handled": type, "event_id": ...}) and per answer ({"status": code, "body": ...}) on
stdout. A card.action.trigger is answered with a toast naming `action.value.order` and a
replacement card, as an app's own callback handler would.
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import lark_oapi as lark
from lark_oapi.core.model import RawRequest
from lark_oapi.event.callback.model.p2_card_action_trigger import (
    P2CardActionTrigger,
    P2CardActionTriggerResponse,
)

PORT = int(sys.argv[1])
ENCRYPT_KEY = sys.argv[2]
VERIFICATION_TOKEN = sys.argv[3]


_out_lock = threading.Lock()


def out(obj):
    # Requests are handled on several threads: one whole line at a time.
    with _out_lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def on_message(data: lark.im.v1.P2ImMessageReceiveV1) -> None:
    out(
        {
            "handled": "im.message.receive_v1",
            "event_id": data.header.event_id,
            "message_id": data.event.message.message_id,
        }
    )


def on_approval(data: lark.CustomizedEvent) -> None:
    out({"handled": data.header.event_type, "event_id": data.header.event_id})


def on_card_action(data: P2CardActionTrigger) -> P2CardActionTriggerResponse:
    value = data.event.action.value or {}
    out(
        {
            "handled": "card.action.trigger",
            "event_id": data.header.event_id,
            "operator": data.event.operator.open_id,
            "value": value,
        }
    )
    return P2CardActionTriggerResponse(
        {
            "toast": {"type": "success", "content": f"order {value.get('order')} approved"},
            "card": {
                "type": "raw",
                "data": {
                    "schema": "2.0",
                    "body": {"elements": [{"tag": "markdown", "content": "Approved"}]},
                },
            },
        }
    )


handler = (
    lark.EventDispatcherHandler.builder(ENCRYPT_KEY, VERIFICATION_TOKEN, lark.LogLevel.ERROR)
    .register_p2_im_message_receive_v1(on_message)
    .register_p2_customized_event("approval.approval.updated_v4", on_approval)
    .register_p2_card_action_trigger(on_card_action)
    .build()
)


class Webhook(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        req = RawRequest()
        req.uri = self.path
        req.body = body
        # Werkzeug (Flask) title-cases header names; the SDK looks them up that way.
        req.headers = {k.title(): v for k, v in self.headers.items()}
        resp = handler.do(req)
        content = resp.content or b""
        self.send_response(resp.status_code)
        for k, v in resp.headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)
        out({"status": resp.status_code, "body": content.decode("utf-8", "replace")})

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", PORT), Webhook)
out({"listening": PORT})
server.serve_forever()
