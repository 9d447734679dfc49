#!/usr/bin/env python3
"""Runs the official Feishu/Lark Python SDK's long-connection client (lark-oapi 1.7.5)
against a given open-platform base URL, e.g. the lark-auth sandbox.

Used by examples/official_client_check.rs (through scripts/check-official-client.sh) to
check that the sandbox speaks the protocol the way the official client expects. Handlers:
- card.action.trigger  -> answers a toast (the ack then carries base64 `data`);
- im.message.receive_v1 -> no return value (the ack is a plain {"code": 200}).
"""
import argparse
import sys

import lark_oapi as lark
from lark_oapi.event.callback.model.p2_card_action_trigger import (
    P2CardActionTrigger,
    P2CardActionTriggerResponse,
)


def on_card_action(data: P2CardActionTrigger) -> P2CardActionTriggerResponse:
    print("official_client: card.action.trigger received", flush=True)
    return P2CardActionTriggerResponse(
        {"toast": {"type": "info", "content": "sandbox check ok"}}
    )


def on_message(data: lark.im.v1.P2ImMessageReceiveV1) -> None:
    print("official_client: im.message.receive_v1 received", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--domain", required=True, help="open platform base URL")
    parser.add_argument("--app-id", required=True)
    parser.add_argument("--app-secret", required=True)
    args = parser.parse_args()

    handler = (
        lark.EventDispatcherHandler.builder("", "")
        .register_p2_card_action_trigger(on_card_action)
        .register_p2_im_message_receive_v1(on_message)
        .build()
    )
    client = lark.ws.Client(
        args.app_id,
        args.app_secret,
        event_handler=handler,
        domain=args.domain,
        log_level=lark.LogLevel.DEBUG,
    )
    client.start()  # blocks forever; the check kills this process
    return 0


if __name__ == "__main__":
    sys.exit(main())
