"""``python -m daemon.fakex``: run the fake exchange standalone (local demos, manual testing)."""

from __future__ import annotations

import argparse
import sys

import trio

from daemon.fakex.market import Market
from daemon.fakex.server import FakeExchange, exchange_clock


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m daemon.fakex", description="a fake Binance on loopback")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--rest-port", type=int, default=0)
    parser.add_argument("--ws-port", type=int, default=0)
    parser.add_argument("--symbols", default="BTCUSDT,ETHUSDT", help="spot symbols, comma-separated")
    parser.add_argument("--futures-symbols", default="BTCUSDT,ETHUSDT")
    parser.add_argument("--speed", type=float, default=1.0, help="exchange clock speed (60 = a minute per second)")
    parser.add_argument("--offset-ms", type=int, default=0, help="exchange clock offset from this host's clock")
    parser.add_argument("--generate", type=int, default=0, help="add N generated spot symbols S0000USDT...")
    parser.add_argument(
        "--print-closes", action="store_true", help="print 'close STREAM OPEN_MS E_MS' for every closed kline sent"
    )
    args = parser.parse_args()
    spot = args.symbols.split(",") + [f"S{i:04d}USDT" for i in range(args.generate)]
    market = Market.default(spot, args.futures_symbols.split(","))
    fake = FakeExchange(market, exchange_clock(offset_ms=args.offset_ms, speed=args.speed))

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            urls = await nursery.start(fake.serve, args.host, args.rest_port, args.ws_port)
            print(f"rest {urls.rest_url}\nws   {urls.spot_ws} (spot)  {urls.futures_ws} (futures)", flush=True)
            if args.print_closes:  # a benchmark's send instants, written after the burst, not during it
                fake.streams.sent_closes = []
                while True:
                    await trio.sleep(0.5)
                    sent, fake.streams.sent_closes = fake.streams.sent_closes, []
                    for name, open_ms, sent_ms in sent:
                        print(f"close {name} {open_ms} {sent_ms}", flush=False)
                    sys.stdout.flush()

    trio.run(run)


if __name__ == "__main__":
    main()
