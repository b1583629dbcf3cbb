"""A centrifuge-python client (JSON over WebSocket) on one channel,
reporting every publication with its parsed data as a JSON line.

Usage: python framing_sdk.py <ws-url> <channel> <token>
Stdin: `cut` disconnects; `resume` connects again, and the subscription
recovers from its position; `done` prints a summary and exits.
"""

import asyncio
import json
import sys

from centrifuge import (
    Client,
    ClientEventHandler,
    PublicationContext,
    SubscribedContext,
    SubscriptionEventHandler,
)

received = []
subscribed = []


def report(fact):
    sys.stdout.write(json.dumps(fact) + "\n")
    sys.stdout.flush()


class Events(ClientEventHandler):
    async def on_disconnected(self, ctx):
        report({"event": "disconnected", "code": ctx.code, "reason": ctx.reason})

    async def on_error(self, ctx):
        report({"event": "error", "error": str(ctx.error)})


class SubEvents(SubscriptionEventHandler):
    async def on_subscribed(self, ctx: SubscribedContext):
        s = {"recovered": ctx.recovered, "wasRecovering": ctx.was_recovering}
        subscribed.append(s)
        report({"event": "subscribed", **s})

    async def on_publication(self, ctx: PublicationContext):
        received.append({"offset": ctx.pub.offset, "data": ctx.pub.data})
        report({"event": "pub", "offset": ctx.pub.offset})

    async def on_error(self, ctx):
        report({"event": "suberror", "error": str(ctx.error)})


async def main():
    url, channel, token = sys.argv[1:4]
    client = Client(url, events=Events(), token=token, max_reconnect_delay=1.0)
    sub = client.new_subscription(channel, events=SubEvents())
    await sub.subscribe()
    await client.connect()
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if line == "cut":
            await client.disconnect()
            report({"event": "cut"})
        elif line == "resume":
            await client.connect()
            report({"event": "resumed"})
        elif line in ("done", ""):
            report({"event": "summary", "received": received, "subscribed": subscribed})
            await client.disconnect()
            return


asyncio.run(main())
