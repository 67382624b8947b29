#!/usr/bin/env python3
"""What slows an app's SQLite commits while another process works beside it.

An ad-hoc experiment behind BENCHMARKS.md ("The writer's commit latency with the
daemon"), in plain Python so that each of the daemon's habits can be switched
on alone: a writer commits 1,000 single-row transactions per second (WAL,
synchronous=NORMAL, a trigger-like second insert) for 40 s in 5 s phases, and
a second process is quiet in the even phases and, in the odd ones, every
`--every` seconds does what MODE says:

  writes   a one-row claim, then a delete of the log up to it (two short write
           transactions, as the daemon's claim and acknowledgement)
  read     writes + reads the claimed rows by key in between
  fsync    writes + an fdatasync of the WAL in between
  all      writes + read + fsync, and checkpoints itself at 300 pages
  other    fdatasync of an unrelated file every 10 ms (no SQLite at all)
  cpu      10 ms of busy CPU in each of two processes every 50 ms

Usage: python3 benches/interference.py MODE [--every 0.05] [--dir DIR]
Prints the writer's p50 / p99 / p99.9 (µs) and commits over 1 ms, quiet
against busy. The machine's noise is of the same order as most effects: run
each mode more than once.
"""

import argparse
import multiprocessing as mp
import os
import sqlite3
import tempfile
import time

SECS, PHASE = 40, 5


def busy(t0):
    return int((time.time() - t0) / PHASE) % 2 == 1


def writer(path, t0, out):
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("pragma busy_timeout=5000")
    c.execute("pragma synchronous=normal")
    lat = {False: [], True: []}
    i, start = 0, time.perf_counter()
    while time.time() - t0 < SECS:
        wait = start + i * 0.001 - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        b = busy(t0)
        s = time.perf_counter()
        c.execute("begin immediate")
        c.execute("insert into t values (?, ?)", (f"k{i}", "x" * 200))
        c.execute("insert into log (k) values (?)", (f"k{i}",))
        c.execute("commit")
        lat[b].append((time.perf_counter() - s) * 1e6)
        i += 1
    out.put(lat)


def neighbour(path, mode, every, t0):
    if mode == "other":
        fd = os.open(path + ".other", os.O_WRONLY | os.O_CREAT)
        while time.time() - t0 < SECS:
            time.sleep(0.01)
            if busy(t0):
                os.write(fd, b"x" * 8192)
                os.fdatasync(fd)
        return
    if mode == "cpu":
        while time.time() - t0 < SECS:
            time.sleep(0.05)
            if busy(t0):
                end = time.perf_counter() + 0.01
                while time.perf_counter() < end:
                    pass
        return
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("pragma busy_timeout=5000")
    c.execute("pragma synchronous=normal")
    if mode == "all":
        c.execute("pragma wal_autocheckpoint=300")
    while time.time() - t0 < SECS:
        time.sleep(every)
        if not busy(t0):
            continue
        c.execute("begin immediate")
        hi = c.execute("select max(seq) from log").fetchone()[0]
        c.execute("delete from claim")
        c.execute("insert into claim values (?)", (hi,))
        c.execute("commit")
        if mode in ("read", "all"):
            keys = [k for (k,) in c.execute("select k from log where seq <= ?", (hi,))]
            for j in range(0, len(keys), 500):
                chunk = keys[j : j + 500]
                marks = ",".join("?" * len(chunk))
                c.execute(f"select * from t where id in ({marks})", chunk).fetchall()
        if mode in ("fsync", "all"):
            fd = os.open(path + "-wal", os.O_RDONLY)
            os.fdatasync(fd)
            os.close(fd)
        c.execute("begin immediate")
        c.execute("delete from log where seq <= ?", (hi,))
        c.execute("commit")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["writes", "read", "fsync", "all", "other", "cpu"])
    ap.add_argument("--every", type=float, default=0.05)
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        path = os.path.join(d, "app.sqlite3")
        c = sqlite3.connect(path, isolation_level=None)
        c.execute("pragma journal_mode=wal")
        c.execute("create table t (id text primary key, v text)")
        c.execute("create table log (seq integer primary key, k text)")
        c.execute("create table claim (hi integer)")
        c.close()
        t0 = time.time() + 0.5
        out = mp.Queue()
        procs = [mp.Process(target=writer, args=(path, t0, out))]
        procs += [
            mp.Process(target=neighbour, args=(path, a.mode, a.every, t0))
            for _ in range(2 if a.mode == "cpu" else 1)
        ]
        for p in procs:
            p.start()
        lat = out.get()
        for p in procs:
            p.join()
    for b in (False, True):
        v = sorted(lat[b][200:])
        n = len(v)
        print(
            f"{a.mode} every={a.every} {'busy ' if b else 'quiet'} {n} commits: "
            f"p50 {v[n // 2]:.0f} p99 {v[int(n * 0.99)]:.0f} p99.9 {v[int(n * 0.999)]:.0f} µs, "
            f"over 1 ms {sum(1 for x in v if x > 1000)}"
        )


if __name__ == "__main__":
    main()
