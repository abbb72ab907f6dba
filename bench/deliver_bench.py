"""Pushes per second from one worker through the real firebase-admin SDK to the local fake
FCM, against a baseline in the same run: plain async HTTP (httpx, same payloads, same
concurrency) to the same fake, i.e. what the SDK's per-message request costs on top.

    python bench/deliver_bench.py [--messages 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import httpx

from notify.fake_fcm import FakeFcm
from notify.fcm import MAX_BATCH, FcmSender, Push, build


async def raw_httpx(endpoint: str, pushes: list[Push]) -> None:
    from firebase_admin import messaging

    url = f"{endpoint}/v1/projects/bench/messages:send"
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=100)) as client:
        for start in range(0, len(pushes), MAX_BATCH):
            chunk = pushes[start : start + MAX_BATCH]
            bodies = [
                {"message": messaging._MessagingService.encode_message(build(p))} for p in chunk
            ]
            await asyncio.gather(*(client.post(url, json=b) for b in bodies))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=20_000)
    args = ap.parse_args()
    pushes = [Push(str(i), f"tok-{i}", ("android", "ios", "web")[i % 3], "Hello", "World")
              for i in range(args.messages)]  # fmt: skip
    with FakeFcm() as fake:
        t = time.perf_counter()
        asyncio.run(raw_httpx(fake.endpoint, pushes))
        raw = args.messages / (time.perf_counter() - t)
        sender = FcmSender("bench", endpoint=fake.endpoint, name="bench")
        t = time.perf_counter()
        results = sender.send(pushes)
        sdk = args.messages / (time.perf_counter() - t)
        sender.close()
    assert all(r.outcome == "sent" for r in results)
    print(f"plain httpx to the fake: {raw:,.0f}/s; firebase-admin SDK: {sdk:,.0f}/s "
          f"= {sdk / raw:.2f} of plain HTTP (target 2,000/s)")  # fmt: skip


if __name__ == "__main__":
    main()
