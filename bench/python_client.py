#!/usr/bin/env python3
"""The official Python SDK's long-connection client (lark-oapi), used the way a user
would: a no-op im.message.receive_v1 handler, log level WARNING. Run by
bench/compare-ws-clients; arguments: <base_url> <app_id> <app_secret>.
"""
import sys

import lark_oapi as lark


def on_message(data: lark.im.v1.P2ImMessageReceiveV1) -> None:
    pass


def main() -> int:
    base_url, app_id, app_secret = sys.argv[1:4]
    handler = (
        lark.EventDispatcherHandler.builder("", "")
        .register_p2_im_message_receive_v1(on_message)
        .build()
    )
    client = lark.ws.Client(
        app_id,
        app_secret,
        event_handler=handler,
        domain=base_url,
        log_level=lark.LogLevel.WARNING,
    )
    client.start()  # blocks; the benchmark kills the process
    return 0


if __name__ == "__main__":
    sys.exit(main())
