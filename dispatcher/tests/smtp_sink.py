#!/usr/bin/env python3
"""A real SMTP server on loopback for the dispatcher tests (Debian's aiosmtpd).

Every accepted message is stored as DIR/NNNN.eml. Recipients choose how the
server behaves: a local part starting with "flaky" gets one 451 (transient)
and is accepted on the next try; "nobody" gets 550 (permanent). With
--announce, each message's arrival (the wall clock, in nanoseconds, when the
whole message was in) is printed as "accepted NANOS" (for bench/)."""

import argparse
import itertools
import os
import signal
import threading
import time

from aiosmtpd.controller import Controller


class Handler:
    def __init__(self, directory, announce):
        self.directory = directory
        self.announce = announce
        self.numbers = itertools.count(1)
        self.refused_once = set()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@")[0].lower()
        if local == "nobody":
            return "550 5.1.1 no such user"
        if local.startswith("flaky") and address not in self.refused_once:
            self.refused_once.add(address)
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.announce:
            print(f"accepted {time.time_ns()}", flush=True)
        number = next(self.numbers)
        path = os.path.join(self.directory, f"{number:04d}.eml")
        with open(path + ".tmp", "wb") as out:
            out.write(envelope.original_content or envelope.content)
        os.rename(path + ".tmp", path)  # readers never see half a message
        return f"250 2.0.0 queued as {number}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--announce", action="store_true")
    args = parser.parse_args()
    controller = Controller(Handler(args.dir, args.announce), hostname="127.0.0.1", port=args.port)
    controller.start()
    print("ready", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    controller.stop()


if __name__ == "__main__":
    main()
